// The page's WebSocket to its node, carrying one scuttlebutt stream of the
// page's model: model.createStream() piped to the socket and back, as a
// JavaScript app pipes a net socket. A new stream for every connection:
// the two sides exchange clocks and send each other what the other lacks,
// so what was edited offline merges.
//
// States: connecting, online (socket open), synced (both sides sent their
// history), reconnecting (after a drop, with backoff), offline (closed by
// the user).
export function link (model, url, onState) {
  let socket = null
  let wanted = true
  let retries = 0
  let timer = null

  function open () {
    onState(retries ? 'reconnecting' : 'connecting')
    const ws = new WebSocket(url)
    let stream = null
    socket = ws
    ws.onopen = () => {
      retries = 0
      stream = model.createStream()
      stream.on('data', (line) => { if (ws.readyState === WebSocket.OPEN) ws.send(line) })
      stream.on('sync', () => { if (socket === ws) onState('synced') })
      stream.on('error', () => ws.close())
      onState('online')
    }
    ws.onmessage = (event) => { if (stream) stream.write(event.data) }
    ws.onclose = () => {
      if (stream) stream.destroy()
      stream = null
      if (socket !== ws) return
      socket = null
      if (wanted) {
        retries++
        onState('reconnecting')
        timer = setTimeout(open, Math.min(5000, 250 * 2 ** Math.min(retries, 5)))
      } else {
        onState('offline')
      }
    }
  }

  open()
  return {
    get online () { return wanted },
    goOffline () {
      wanted = false
      clearTimeout(timer)
      if (socket) socket.close()
      else onState('offline')
    },
    goOnline () {
      if (wanted && socket) return
      wanted = true
      retries = 0
      clearTimeout(timer)
      if (!socket) open()
    }
  }
}
