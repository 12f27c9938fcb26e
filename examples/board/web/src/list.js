// The shared list over a scuttlebutt/model: one key per field of an item,
// so that concurrent edits of different fields (text here, a move there)
// both survive; the newest write of a key wins.
//
//   <id>.text  the item's text
//   <id>.done  checked off (true / false)
//   <id>.pos   its fractional position: a string that sorts between its
//              neighbours' (npm `between`, as crdt's Seq), ties by id
//   <id>.gone  deleted (true): deletion is final
import between from 'between'

export function newId () {
  // Time first (ids of one page sort by creation), then 40 random bits.
  const rand = Math.floor(Math.random() * 2 ** 40).toString(36).padStart(8, '0')
  return Date.now().toString(36) + rand
}

// Every item of the model, in list order.
export function items (model) {
  const byId = new Map()
  for (const key of model.keys()) {
    const dot = key.lastIndexOf('.')
    if (dot < 1) continue
    const id = key.slice(0, dot)
    let item = byId.get(id)
    if (!item) byId.set(id, (item = { id }))
    item[key.slice(dot + 1)] = model.get(key)
  }
  const list = []
  for (const item of byId.values()) {
    if (typeof item.pos !== 'string' || item.gone === true) continue
    list.push({ id: item.id, pos: item.pos, text: item.text == null ? '' : String(item.text), done: item.done === true })
  }
  return list.sort(compare)
}

function compare (a, b) {
  if (a.pos !== b.pos) return a.pos < b.pos ? -1 : 1
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0
}

// A position for an item put at index `at` of `list` (which holds not the
// item itself): between its neighbours'. Two pages that inserted at the
// same place at once may have made equal positions; an insert next to such
// a tie goes past it (the tie itself is ordered by id).
export function positionAt (list, at) {
  const lo = at > 0 ? list[at - 1].pos : between.lo
  let hi = at < list.length ? list[at].pos : between.hi
  if (!(lo < hi)) {
    const next = list.slice(at).find((item) => item.pos > lo)
    hi = next ? next.pos : between.hi
  }
  return between(lo, hi)
}

export function add (model, text) {
  const list = items(model)
  const id = newId()
  model.set(id + '.text', text)
  model.set(id + '.done', false)
  model.set(id + '.pos', positionAt(list, list.length))
  return id
}

export function edit (model, id, text) { model.set(id + '.text', text) }
export function check (model, id, done) { model.set(id + '.done', !!done) }
export function remove (model, id) { model.set(id + '.gone', true) }

// Moves an item by `delta` places (-1 up, +1 down).
export function move (model, id, delta) {
  const list = items(model)
  const from = list.findIndex((item) => item.id === id)
  if (from < 0) return false
  const to = Math.max(0, Math.min(list.length - 1, from + delta))
  if (to === from) return false
  list.splice(from, 1)
  model.set(id + '.pos', positionAt(list, to))
  return true
}
