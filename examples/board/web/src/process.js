// `process` for the browser (scuttlebutt's streams call process.nextTick):
// the npm package browserify has always used, injected by esbuild.
import process from 'process/browser.js'
export { process }
