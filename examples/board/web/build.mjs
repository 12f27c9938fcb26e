// Builds the page into dist/: src/app.js and what it requires (the npm
// scuttlebutt, between, and the browser builds of node's events, util,
// stream, buffer and process) bundled by esbuild; index.html and style.css
// copied. `npm run build`.
import * as esbuild from 'esbuild'
import { copyFileSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = process.env.BOARD_DIST || join(here, 'dist')
mkdirSync(out, { recursive: true })

await esbuild.build({
  entryPoints: [join(here, 'src', 'app.js')],
  outfile: join(out, 'app.js'),
  bundle: true,
  platform: 'browser',
  format: 'iife',
  target: ['es2020'],
  minify: true,
  sourcemap: true,
  // node's core modules, as browserify provides them.
  alias: { stream: 'stream-browserify' },
  inject: [join(here, 'src', 'process.js')],
  define: { global: 'globalThis' },
  logLevel: 'warning',
})
for (const file of ['index.html', 'style.css']) {
  copyFileSync(join(here, 'src', file), join(out, file))
}
console.log(`built ${out}`)
