// The README's screenshot (docs/board.png), taken with the browser tests'
// Chromium setup: two nodes already running, a page on each; a few items
// added from both pages, one checked off, then page A after the chart has
// filled for a while.
//
//   node test/screenshot.mjs http://127.0.0.1:8000/ http://127.0.0.1:8001/ ../../../docs/board.png [SECONDS]
import { writeFileSync } from 'node:fs'
import { launch } from './chromium.mjs'

const [a, b, out, seconds = '40'] = process.argv.slice(2)
if (!a || !b || !out) {
  console.error('usage: node test/screenshot.mjs URL_A URL_B OUT.png [SECONDS]')
  process.exit(2)
}
const browser = await launch()
try {
  const pa = await browser.context.newPage()
  const pb = await browser.context.newPage()
  await pa.goto(a)
  await pb.goto(b)
  for (const page of [pa, pb]) {
    await page.waitForFunction(() => document.body.dataset.link === 'synced', null, { timeout: 15000 })
  }
  const add = async (page, text) => {
    await page.fill('#add-text', text)
    await page.press('#add-text', 'Enter')
    await page.waitForTimeout(400)
  }
  await add(pa, 'Book the train to Lyon')
  await add(pb, 'Water the plants')
  await add(pa, 'Write the release notes')
  await add(pb, 'Buy oat milk')
  await pb.locator('#items li[data-text="Water the plants"] input.done').check()
  const end = Date.now() + Number(seconds) * 1000
  let n = 0
  while (Date.now() < end) {
    // Some traffic for the chart: an edit every few seconds, from B.
    await pb.waitForTimeout(3000)
    const input = pb.locator('#items li[data-text^="Buy oat milk"] input.text')
    await input.fill(`Buy oat milk (${++n % 3 + 2} cartons)`)
    await input.press('Enter')
  }
  await pa.waitForTimeout(1000)
  writeFileSync(out, await pa.screenshot())
  console.log(`wrote ${out}`)
} finally {
  await browser.close()
}
