//! The cluster view: what this node knows of the cluster, as one JSON
//! object, made twice a second and pushed to every page.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use repred_scuttlebutt::serde_json::{Value, json};
use repred_scuttlebutt::{Model, Peer, now_millis};
use repred_transport::repred_node::MemberState;
use repred_transport::{Handle, Node};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::OBJECT;
use crate::bridge::Bridge;
use crate::http::WireCounters;

/// How often the view is made.
const EVERY: Duration = Duration::from_millis(500);

/// What the view is made of.
pub struct Sources {
    pub node: Arc<Node>,
    pub cluster: Handle<Model>,
    pub browsers: Peer,
    pub bridge: Arc<Bridge>,
    pub wire: Arc<WireCounters>,
    pub http_port: u16,
}

/// Starts making the view; the receiver always holds the latest one.
pub fn spawn(sources: Sources) -> (watch::Receiver<String>, JoinHandle<()>) {
    let mut last = (Instant::now(), sources.node.stats());
    let (tx, rx) = watch::channel(view(&sources, 0.0, 0.0).to_string());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (now, stats) = (Instant::now(), sources.node.stats());
            let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
            let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
            let rx_rate = rate(stats.udp_rx_bytes, last.1.udp_rx_bytes);
            let tx_rate = rate(stats.udp_tx_bytes, last.1.udp_tx_bytes);
            last = (now, stats);
            if tx.send(view(&sources, rx_rate, tx_rate).to_string()).is_err() {
                // Nobody can subscribe any more: the server is gone.
                return;
            }
        }
    });
    (rx, task)
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
    }
}

fn view(s: &Sources, rx_rate: f64, tx_rate: f64) -> Value {
    let me = s.node.id();
    let mut members = s.node.membership();
    members.sort_by_key(|m| (m.addr.port(), m.addr.ip()));
    let members: Vec<Value> = members
        .iter()
        .map(|m| {
            json!({
                "addr": m.addr.to_string(),
                "port": m.addr.port(),
                "id": repred_transport::identity::format_node_id(m.id),
                "state": state_name(m.state),
                "self": m.id == me,
            })
        })
        .collect();
    let stats = s.node.stats();
    let traffic = s.cluster.traffic();
    let clock = s.cluster.clock();
    let (keys, shown) = s.cluster.read(|m| (m.len(), items(m)));
    let (b_sources, b_keys, b_items, b_streams) = s.browsers.read(|node| {
        (node.replica().clock().len(), node.model().len(), items(node.model()), node.stream_count())
    });
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let bridge = &s.bridge.stats;
    json!({
        "t": now_millis(),
        "node": {
            "addr": s.node.addr().to_string(),
            "port": s.node.addr().port(),
            "id": repred_transport::identity::format_node_id(me),
            "http": s.http_port,
        },
        "members": members,
        "connected": s.node.connected().iter().map(|a| a.port()).collect::<Vec<_>>(),
        "objects": [
            {
                "name": OBJECT,
                "over": "QUIC, to the cluster",
                "sources": clock.len(),
                "keys": keys,
                "items": shown,
                "open": traffic.open,
                "sessions": traffic.sessions,
                "updates_in": traffic.updates_received,
                "updates_out": traffic.updates_sent,
                "bytes_in": traffic.bytes_received,
                "bytes_out": traffic.bytes_sent,
            },
            {
                "name": OBJECT,
                "over": "WebSocket, to browsers",
                "sources": b_sources,
                "keys": b_keys,
                "items": b_items,
                "open": b_streams,
                "sessions": load(&s.wire.sessions),
                "updates_in": load(&bridge.to_cluster),
                "updates_out": load(&bridge.to_browsers),
                "bytes_in": load(&s.wire.rx),
                "bytes_out": load(&s.wire.tx),
            },
        ],
        "bridge": {
            "to_cluster": load(&bridge.to_cluster),
            "to_browsers": load(&bridge.to_browsers),
            "repairs": load(&bridge.repairs),
            "resyncs": load(&bridge.resyncs),
        },
        "udp": {
            "rx": stats.udp_rx_bytes,
            "tx": stats.udp_tx_bytes,
            "rx_rate": rx_rate.round(),
            "tx_rate": tx_rate.round(),
            "membership_rx": stats.membership_rx_bytes,
            "membership_tx": stats.membership_tx_bytes,
            "connections": stats.connections,
        },
    })
}

/// How many items the list shows: ids with a position that are not
/// deleted (the page's keys are `<id>.pos`, `<id>.gone`, ...).
fn items(model: &Model) -> usize {
    model
        .iter()
        .filter(|e| {
            e.key.strip_suffix(".pos").is_some_and(|id| {
                model.get_json(&format!("{id}.gone")).is_none_or(|g| g.as_str() != "true")
            })
        })
        .count()
}
