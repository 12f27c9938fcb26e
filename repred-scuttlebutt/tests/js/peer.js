// A JavaScript scuttlebutt peer driven by the Rust interop tests.
//
//   node peer.js [ID]
//
// It keeps one scuttlebutt/model (npm scuttlebutt, as package.json pins it)
// and reads commands from stdin, one JSON object a line:
//
//   {"cmd":"listen","transport":"tcp"|"ws"}       -> LISTENING <port>
//   {"cmd":"connect","transport":"tcp"|"ws","port":N}
//   {"cmd":"set","key":K,"value":V}               model.set(K, V)
//   {"cmd":"update","update":[[K,V],TS,SOURCE]}   model._update(...): chosen stamps
//   {"cmd":"dump"}                                 -> DUMP {"state","history","sources","old"}
//   {"cmd":"close"}                                ends every stream
//   {"cmd":"garbage","transport":..,"port":N,"text":T}
//        connects, sends a valid header then T, and prints GARBAGE_CLOSED when
//        the other side hangs up
//   {"cmd":"exit"}
//
// and prints what happens, one line each:
//
//   STATE {json}            after every change (keys sorted, as toJSON)
//   SYNC {"stream":i,"history":n,"received":m}
//                           a stream synced; n updates came before the
//                           peer's SYNC, m in all so far
//   CLOSED {"stream":i,"received":m}
//   ERROR <message>
//
// The wire is exactly what a JavaScript app does: a net socket (or a ws
// WebSocket whose messages are written into the stream) piped to
// model.createStream() and back.

var net = require('net')
var Model = require('scuttlebutt/model')
var WebSocket = require('ws')
var readline = require('readline')

var id = process.argv[2]
var model = id ? new Model(id) : new Model()
var streams = 0
var old = 0

function out (line) {
  process.stdout.write(line + '\n')
}

function sortedState () {
  var json = model.toJSON()
  var sorted = {}
  Object.keys(json).sort().forEach(function (k) { sorted[k] = json[k] })
  return JSON.stringify(sorted)
}

model.on('old_data', function () { old++ })
model.on('update', function () { out('STATE ' + sortedState()) })

// Counts the update lines the peer sends on one connection, before its SYNC
// and in all: what the tests check "nothing resent" with.
function counter () {
  var partial = ''
  var c = { history: 0, received: 0, synced: false }
  c.feed = function (chunk) {
    var lines = (partial + chunk).split('\n')
    partial = lines.pop()
    lines.forEach(function (line) {
      if (line[0] === '[') {
        c.received++
        if (!c.synced) c.history++
      } else if (line === '"SYNC"') c.synced = true
    })
  }
  return c
}

var open = []

function attach (stream, n, c, close) {
  stream.on('sync', function () {
    out('SYNC ' + JSON.stringify({ stream: n, history: c.history, received: c.received }))
  })
  stream.on('error', function (err) { out('ERROR ' + (err && err.message)) })
  open.push({ stream: stream, close: close })
}

function overTcp (socket) {
  var n = streams++
  var c = counter()
  var stream = model.createStream()
  socket.on('data', function (d) { c.feed(d.toString()) })
  socket.on('error', function (err) { out('ERROR ' + err.message) })
  socket.on('close', function () {
    out('CLOSED ' + JSON.stringify({ stream: n, received: c.received }))
  })
  attach(stream, n, c, function () { socket.destroy() })
  socket.pipe(stream).pipe(socket)
}

function overWs (ws) {
  var n = streams++
  var c = counter()
  var stream = model.createStream()
  ws.on('message', function (data) {
    var text = data.toString()
    c.feed(text)
    stream.write(text)
  })
  stream.on('data', function (line) {
    if (ws.readyState === WebSocket.OPEN) ws.send(line)
  })
  ws.on('error', function (err) { out('ERROR ' + err.message) })
  ws.on('close', function () {
    stream.end()
    out('CLOSED ' + JSON.stringify({ stream: n, received: c.received }))
  })
  attach(stream, n, c, function () { ws.terminate() })
}

var commands = {
  listen: function (cmd) {
    if (cmd.transport === 'ws') {
      var wss = new WebSocket.WebSocketServer({ host: '127.0.0.1', port: 0 }, function () {
        out('LISTENING ' + wss.address().port)
      })
      wss.on('connection', overWs)
    } else {
      var server = net.createServer(overTcp)
      server.listen(0, '127.0.0.1', function () {
        out('LISTENING ' + server.address().port)
      })
    }
  },
  connect: function (cmd) {
    if (cmd.transport === 'ws') {
      var ws = new WebSocket('ws://127.0.0.1:' + cmd.port + '/')
      ws.on('open', function () { overWs(ws) })
      ws.on('error', function (err) { out('ERROR ' + err.message) })
    } else {
      var socket = net.connect(cmd.port, '127.0.0.1')
      overTcp(socket)
    }
  },
  set: function (cmd) { model.set(cmd.key, cmd.value) },
  update: function (cmd) { model._update(cmd.update) },
  dump: function () {
    out('DUMP ' + JSON.stringify({
      state: JSON.parse(sortedState()),
      history: model.history({}),
      sources: model.sources,
      old: old
    }))
  },
  close: function () {
    open.forEach(function (o) { o.close() })
    open = []
  },
  garbage: function (cmd) {
    var header = JSON.stringify({ id: 'GARBAGE', clock: {} }) + '\n'
    function closed () { out('GARBAGE_CLOSED') }
    if (cmd.transport === 'ws') {
      var ws = new WebSocket('ws://127.0.0.1:' + cmd.port + '/')
      ws.on('open', function () { ws.send(header); ws.send(cmd.text) })
      ws.on('close', closed)
      ws.on('error', function () {})
    } else {
      var socket = net.connect(cmd.port, '127.0.0.1', function () {
        socket.write(header)
        socket.write(cmd.text)
      })
      // Read (and drop) what comes, so that the other side's end is seen.
      socket.resume()
      socket.on('close', closed)
      socket.on('error', function () {})
    }
  },
  exit: function () { process.exit(0) }
}

readline.createInterface({ input: process.stdin }).on('line', function (line) {
  if (!line.trim()) return
  var cmd
  try { cmd = JSON.parse(line) } catch (e) { return out('ERROR bad command ' + line) }
  var f = commands[cmd.cmd]
  if (!f) return out('ERROR unknown command ' + cmd.cmd)
  f(cmd)
})
process.stdin.on('end', function () { process.exit(0) })
out('READY ' + model.id)
