// Headless Chromium as the browser tests and the README's screenshot run
// it: Debian's chromium, a fresh profile, no network beyond the page.
import { chromium } from 'playwright-core'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-quic'
]

// A browser context in a fresh --user-data-dir (removed by close()).
export async function launch () {
  const profile = mkdtempSync(join(tmpdir(), 'repred-board-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 760 },
    timeout: 60000
  })
  return {
    context,
    async close () {
      await context.close().catch(() => {})
      rmSync(profile, { recursive: true, force: true })
    }
  }
}
