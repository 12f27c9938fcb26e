// The board example in headless Chromium, driven by playwright-core: two
// nodes, one page on each. Run by tests/board_browser.rs, which starts the
// nodes and passes:
//
//   BOARD_A, BOARD_B    the pages' URLs (node A's and node B's HTTP ports)
//   BOARD_B_PORT        node B's cluster port, as the cluster view lists it
//   BOARD_B_PID         node B's process, killed (SIGKILL) near the end
//   SHOT_DIR            where the screenshots go (a.png, b.png, cluster-up.png)
//   CHROMIUM            the browser (default /usr/bin/chromium)
//
// Prints `OK <what>` for each check that held and exits 0; on the first
// that does not, prints `FAIL <what>` with both pages' state and exits 1.
// Every wait is bounded.
import { writeFileSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { launch } from './chromium.mjs'

const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set`)
  return value
}
const A = env('BOARD_A')
const B = env('BOARD_B')
const bPort = Number(env('BOARD_B_PORT'))
const bPid = Number(env('BOARD_B_PID'))
const shots = env('SHOT_DIR')
const WAIT = 15000

const started = Date.now()
const log = (line) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}`)

let browser
let context
let pages = {}

async function describe () {
  const out = {}
  for (const [name, page] of Object.entries(pages)) {
    try {
      out[name] = await page.evaluate(() => ({
        link: document.body.dataset.link,
        items: window.board ? window.board.items() : null,
        shown: [...document.querySelectorAll('#items li')].map((li) => li.querySelector('.text').value),
        members: [...document.querySelectorAll('#members tbody tr')].map((tr) => `${tr.dataset.port}:${tr.dataset.state}`)
      }))
    } catch (e) {
      out[name] = String(e)
    }
  }
  return JSON.stringify(out, null, 1)
}

async function check (what, fn) {
  try {
    await fn()
    log(`OK ${what}`)
  } catch (e) {
    log(`FAIL ${what}: ${e.message.split('\n')[0]}`)
    console.log(await describe())
    throw e
  }
}

// The list as page shows it: [text, done] per row, in order.
const shown = (page) => page.evaluate(() =>
  [...document.querySelectorAll('#items li')].map((li) =>
    [li.querySelector('.text').value, li.querySelector('.done').checked]))

const waitShown = (page, expected) => page.waitForFunction(
  (want) => JSON.stringify([...document.querySelectorAll('#items li')].map((li) =>
    [li.querySelector('.text').value, li.querySelector('.done').checked])) === want,
  JSON.stringify(expected), { timeout: WAIT, polling: 50 })

const waitLink = (page, state) => page.waitForFunction(
  (s) => document.body.dataset.link === s, state, { timeout: WAIT, polling: 50 })

const waitMember = (page, port, states, timeout = WAIT) => page.waitForFunction(
  ([p, s]) => [...document.querySelectorAll('#members tbody tr')]
    .some((tr) => tr.dataset.port === String(p) && s.includes(tr.dataset.state)),
  [port, states], { timeout, polling: 100 })

const row = (page, text) => page.locator(`#items li[data-text="${text}"]`)

async function add (page, text) {
  await page.fill('#add-text', text)
  await page.press('#add-text', 'Enter')
}

async function editText (page, from, to) {
  const input = row(page, from).locator('input.text')
  await input.fill(to)
  await input.press('Enter')
}

// Decodes a PNG in the browser and says how far from blank it is.
async function notBlank (page, png, name) {
  const stats = await page.evaluate(async (b64) => {
    const img = new Image()
    img.src = 'data:image/png;base64,' + b64
    await img.decode()
    const canvas = document.createElement('canvas')
    canvas.width = img.width; canvas.height = img.height
    const ctx = canvas.getContext('2d')
    ctx.drawImage(img, 0, 0)
    const data = ctx.getImageData(0, 0, img.width, img.height).data
    const colors = new Set()
    const [r0, g0, b0] = data
    let differ = 0
    for (let i = 0; i < data.length; i += 4) {
      colors.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2])
      if (data[i] !== r0 || data[i + 1] !== g0 || data[i + 2] !== b0) differ++
    }
    return { width: img.width, height: img.height, colors: colors.size, differ: differ / (data.length / 4) }
  }, png.toString('base64'))
  log(`${name}: ${stats.width}x${stats.height}, ${stats.colors} colours, ${(stats.differ * 100).toFixed(1)}% unlike the corner`)
  if (stats.colors < 16 || stats.differ < 0.05) throw new Error(`${name} looks blank: ${JSON.stringify(stats)}`)
}

async function main () {
  mkdirSync(shots, { recursive: true })
  browser = await launch()
  context = browser.context
  context.setDefaultTimeout(WAIT)
  const a = await context.newPage()
  const b = await context.newPage()
  pages = { a, b }
  for (const [name, page] of Object.entries(pages)) {
    page.on('pageerror', (e) => log(`page ${name} error: ${e.message}`))
    page.on('console', (m) => { if (m.type() === 'error') log(`page ${name} console: ${m.text()}`) })
  }
  // Every request a page makes goes to its own node: nothing else is loaded.
  const foreign = []
  context.on('request', (r) => {
    const url = new URL(r.url())
    if (!['data:', 'blob:'].includes(url.protocol) && url.hostname !== '127.0.0.1') foreign.push(r.url())
  })

  await check('both pages load and sync with their nodes', async () => {
    await Promise.all([a.goto(A, { timeout: WAIT }), b.goto(B, { timeout: WAIT })])
    await Promise.all([waitLink(a, 'synced'), waitLink(b, 'synced')])
  })

  await check('an item added in page A appears in page B', async () => {
    await add(a, 'milk')
    await waitShown(b, [['milk', false]])
  })

  await check('more items arrive in order', async () => {
    await add(a, 'eggs')
    await add(b, 'bread')
    const want = [['milk', false], ['eggs', false], ['bread', false]]
    await Promise.all([waitShown(a, want), waitShown(b, want)])
  })

  await check('a reorder in page B converges', async () => {
    await row(b, 'bread').locator('button.up').click()
    const want = [['milk', false], ['bread', false], ['eggs', false]]
    await Promise.all([waitShown(a, want), waitShown(b, want)])
  })

  await check('a delete in page A converges', async () => {
    await row(a, 'milk').locator('button.delete').click()
    const want = [['bread', false], ['eggs', false]]
    await Promise.all([waitShown(a, want), waitShown(b, want)])
  })

  await check('a check-off and an edit converge', async () => {
    await row(b, 'eggs').locator('input.done').check()
    await editText(a, 'bread', 'rye bread')
    const want = [['rye bread', false], ['eggs', true]]
    await Promise.all([waitShown(a, want), waitShown(b, want)])
  })

  await check('page B goes offline and says so', async () => {
    await b.click('#link-toggle')
    await waitLink(b, 'offline')
  })

  await check('both pages edit while B is offline; A does not see B\'s edits', async () => {
    await add(a, 'coffee')
    await row(a, 'rye bread').locator('input.done').check()
    await add(b, 'tea')
    await row(b, 'eggs').locator('button.up').click()
    await editText(b, 'eggs', 'brown eggs')
    await waitShown(a, [['rye bread', true], ['eggs', true], ['coffee', false]])
    await waitShown(b, [['brown eggs', true], ['rye bread', false], ['tea', false]])
    await a.waitForTimeout(700)
    const seen = await shown(a)
    if (seen.some(([text]) => text === 'tea')) throw new Error('A saw an edit of offline B')
  })

  await check('B reconnects and both pages show the same list', async () => {
    await b.click('#link-toggle')
    await waitLink(b, 'synced')
    // Concurrent appends (coffee on A, tea on B) took the same position:
    // ordered by item id, the same on both pages.
    await b.waitForFunction(() => {
      const texts = [...document.querySelectorAll('#items li')].map((li) => li.querySelector('.text').value)
      return ['coffee', 'tea', 'brown eggs', 'rye bread'].every((t) => texts.includes(t))
    }, null, { timeout: WAIT, polling: 50 })
    const want = await shown(b)
    await waitShown(a, want)
    const edited = new Map(want)
    if (want.length !== 4 || want[0][0] !== 'brown eggs' || edited.get('rye bread') !== true ||
        edited.get('brown eggs') !== true) {
      throw new Error(`merged list is not the expected one: ${JSON.stringify(want)}`)
    }
    log(`merged list: ${JSON.stringify(want)}`)
  })

  await check('the cluster view shows node B up', async () => {
    await waitMember(a, bPort, ['alive'])
    await waitMember(b, bPort, ['alive'])
    // The page is pushed to, not reloaded: the view's time moves on.
    const t0 = await a.evaluate(() => document.body.dataset.clusterAt)
    await a.waitForFunction((t) => document.body.dataset.clusterAt !== t, t0, { timeout: WAIT, polling: 50 })
    writeFileSync(join(shots, 'cluster-up.png'), await a.screenshot())
  })

  await check('the cluster view shows node B down after it is killed', async () => {
    process.kill(bPid, 'SIGKILL')
    await waitMember(a, bPort, ['down'], 30000)
    await waitLink(b, 'reconnecting')
  })

  await check('screenshots of both pages are not blank', async () => {
    for (const [name, page] of Object.entries(pages)) {
      const png = await page.screenshot()
      writeFileSync(join(shots, `${name}.png`), png)
      await notBlank(a, png, `${name}.png`)
    }
  })

  await check('no page loaded anything from elsewhere', async () => {
    if (foreign.length) throw new Error(`requests beyond the nodes: ${foreign.join(', ')}`)
  })
}

let failed = false
const deadline = setTimeout(() => {
  log('FAIL the whole run took over 150 s')
  process.exit(1)
}, 150000)
try {
  await main()
  log('PASS')
} catch (e) {
  failed = true
  console.log(e.stack || String(e))
} finally {
  clearTimeout(deadline)
  if (browser) await browser.close()
}
process.exit(failed ? 1 : 0)
