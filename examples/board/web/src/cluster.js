// The cluster view: the node pushes what it knows (server-sent events on
// /cluster, twice a second) and this draws it; nothing is reloaded.
const HISTORY = 120 // points of the chart: a minute

function fmtBytes (n) {
  if (n == null) return '–'
  if (n < 1024) return Math.round(n) + ' B'
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' kB'
  return (n / 1024 / 1024).toFixed(1) + ' MB'
}

function cell (text, cls) {
  const td = document.createElement('td')
  td.textContent = text
  if (cls) td.className = cls
  return td
}

export function clusterView (url, elements, onView) {
  const points = []
  let lastState = 'waiting…'

  function setState (text) {
    if (text !== lastState) elements.state.textContent = lastState = text
  }

  function draw () {
    const canvas = elements.chart
    // Drawn at the screen's resolution, in CSS pixels.
    const dpr = window.devicePixelRatio || 1
    const w = canvas.clientWidth || canvas.width; const h = canvas.clientHeight || canvas.height
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr)
    }
    const ctx = canvas.getContext('2d')
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0)
    ctx.clearRect(0, 0, w, h)
    const max = Math.max(1024, ...points.map((p) => Math.max(p.in, p.out))) * 1.15
    ctx.strokeStyle = '#dde3ea'; ctx.fillStyle = '#6b7686'; ctx.lineWidth = 1
    ctx.font = '11px system-ui, sans-serif'
    for (let i = 1; i <= 3; i++) {
      const y = h - (h * i) / 4
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke()
      ctx.fillText(fmtBytes((max * i) / 4) + '/s', 4, y - 3)
    }
    for (const [key, color] of [['in', '#2463eb'], ['out', '#e8590c']]) {
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath()
      points.forEach((p, i) => {
        const x = w - (points.length - 1 - i) * (w / (HISTORY - 1))
        const y = h - (p[key] / max) * h
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y)
      })
      ctx.stroke()
    }
  }

  function render (view) {
    elements.node.textContent = `node ${view.node.addr} · id ${view.node.id.slice(0, 8)}`
    const members = elements.members
    members.replaceChildren(...view.members.map((m) => {
      const tr = document.createElement('tr')
      tr.dataset.port = m.port
      tr.dataset.state = m.state
      if (m.self) tr.className = 'self'
      tr.append(cell(m.addr), cell(m.id.slice(0, 8)), cell(m.state, 'state ' + m.state))
      return tr
    }))
    elements.objects.replaceChildren(...view.objects.map((o) => {
      const tr = document.createElement('tr')
      const name = cell(o.name)
      const over = document.createElement('small')
      over.textContent = 'over ' + o.over
      name.append(over)
      tr.append(
        name,
        cell(String(o.sources), 'num'),
        cell(`${o.items} / ${o.keys}`, 'num'),
        cell(`${o.open} / ${o.sessions}`, 'num'),
        cell(`${o.updates_in} / ${o.updates_out}`, 'num'),
        cell(`${fmtBytes(o.bytes_in)} / ${fmtBytes(o.bytes_out)}`, 'num')
      )
      return tr
    }))
    points.push({ in: view.udp.rx_rate, out: view.udp.tx_rate })
    while (points.length > HISTORY) points.shift()
    elements.rateIn.textContent = fmtBytes(view.udp.rx_rate) + '/s'
    elements.rateOut.textContent = fmtBytes(view.udp.tx_rate) + '/s'
    const b = view.bridge
    elements.bridge.textContent =
      `bridge: ${b.to_cluster} writes to the cluster, ${b.to_browsers} to browsers, ` +
      `${b.repairs} repaired, ${b.resyncs} resyncs · QUIC connections: ${view.udp.connections}`
    const up = view.members.filter((m) => m.state !== 'down').length
    setState(`${up} of ${view.members.length} up · live`)
    draw()
    if (onView) onView(view)
  }

  const source = new EventSource(url)
  source.onmessage = (event) => {
    try { render(JSON.parse(event.data)) } catch (e) { console.error('cluster view', e) }
  }
  // EventSource reconnects by itself.
  source.onerror = () => {
    elements.panel.classList.add('stale')
    setState('node unreachable, retrying…')
  }
  source.onopen = () => elements.panel.classList.remove('stale')
  draw()
  return source
}
