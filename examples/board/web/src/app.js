// The board page: a real scuttlebutt/model replica in the browser, synced
// with this page's node over a WebSocket, rendered as an editable list;
// and the node's live view of its cluster.
import Model from 'scuttlebutt/model'
import * as list from './list.js'
import { link } from './link.js'
import { clusterView } from './cluster.js'

const $ = (id) => document.getElementById(id)
const model = new Model()

// --- the list ---------------------------------------------------------

const rows = new Map() // item id -> <li>
let scheduled = false

function row (id) {
  const li = document.createElement('li')
  li.dataset.id = id
  const done = document.createElement('input')
  done.type = 'checkbox'
  done.className = 'done'
  done.title = 'Check off'
  done.onchange = () => list.check(model, id, done.checked)
  const text = document.createElement('input')
  text.type = 'text'
  text.className = 'text'
  text.maxLength = 500
  text.onchange = () => list.edit(model, id, text.value)
  text.onkeydown = (e) => { if (e.key === 'Enter') text.blur() }
  const button = (cls, label, title, action) => {
    const b = document.createElement('button')
    b.type = 'button'; b.className = cls; b.textContent = label; b.title = title; b.onclick = action
    return b
  }
  li.append(
    done, text,
    button('up', '↑', 'Move up', () => list.move(model, id, -1)),
    button('down', '↓', 'Move down', () => list.move(model, id, +1)),
    button('delete', '✕', 'Delete', () => list.remove(model, id))
  )
  return li
}

function render () {
  scheduled = false
  const shown = list.items(model)
  const ul = $('items')
  const keep = new Set()
  shown.forEach((item, i) => {
    keep.add(item.id)
    let li = rows.get(item.id)
    if (!li) rows.set(item.id, (li = row(item.id)))
    const [done, text] = li.children
    done.checked = item.done
    li.classList.toggle('done', item.done)
    li.dataset.text = item.text
    // Not under the user's cursor.
    if (document.activeElement !== text && text.value !== item.text) text.value = item.text
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null)
  })
  for (const [id, li] of rows) {
    if (!keep.has(id)) { li.remove(); rows.delete(id) }
  }
  $('count').textContent = `(${shown.length})`
}

function schedule () {
  if (scheduled) return
  scheduled = true
  // A microtask, not an animation frame: pages in the background render too.
  queueMicrotask(render)
}

model.on('update', schedule)

$('add-form').onsubmit = (e) => {
  e.preventDefault()
  const input = $('add-text')
  const text = input.value.trim()
  if (text) list.add(model, text)
  input.value = ''
}

// --- the connection ---------------------------------------------------

const state = $('link-state')
const toggle = $('link-toggle')
const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws'
const connection = link(model, wsUrl, (s) => {
  state.textContent = s
  state.className = 'badge ' + s
  document.body.dataset.link = s
  toggle.textContent = s === 'offline' ? 'Go online' : 'Go offline'
})
toggle.onclick = () => (connection.online ? connection.goOffline() : connection.goOnline())

// --- the cluster --------------------------------------------------------

clusterView('/cluster', {
  panel: $('cluster-panel'),
  node: $('node'),
  state: $('cluster-state'),
  members: document.querySelector('#members tbody'),
  objects: document.querySelector('#objects tbody'),
  chart: $('chart'),
  rateIn: $('rate-in'),
  rateOut: $('rate-out'),
  bridge: $('bridge')
}, (view) => { document.body.dataset.clusterAt = String(view.t) })

// For the browser tests and the curious: the list as shown, and the model.
window.board = {
  model,
  items: () => list.items(model).map(({ text, done }) => ({ text, done })),
  connection
}
render()
