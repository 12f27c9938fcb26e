//! What an operator sees of a running node (issue 19): its log lines
//! (tracing, captured from a subscriber) and its metrics (the `metrics`
//! facade, rendered as Prometheus text by the exporter's recorder).
//!
//! One subscriber and one recorder serve every test of this binary; each
//! test reads only the lines and series of its own nodes (the node's id is
//! in every line's span and every series' labels).

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Counters, eventually, fast, spawn};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use repred_transport::Node;

/// Every line logged so far by any node of this test binary.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The lines that belong to `node` (its id is a field of its span).
    fn of(&self, node: &Node) -> Vec<String> {
        let id = format!("id={}", node.id());
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(&id)).map(str::to_string).collect()
    }
}

struct Observed {
    logs: Logs,
    metrics: PrometheusHandle,
}

/// Installs the subscriber and the recorder once, before any node starts
/// (a node takes its metric handles when it starts).
fn observed() -> &'static Observed {
    static OBSERVED: OnceLock<Observed> = OnceLock::new();
    OBSERVED.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("repred_transport=debug,repred_store=debug")
            .with_writer(move || writer.clone())
            .init();
        let metrics = PrometheusBuilder::new().install_recorder().expect("the only recorder");
        Observed { logs, metrics }
    })
}

/// The value of the series `name` whose labels include `labels`, from
/// Prometheus text.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let all = labels.iter().all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        all.then(|| value.trim().parse().ok()).flatten()
    })
}

fn has_line(lines: &[String], all: &[&str]) -> bool {
    lines.iter().any(|l| all.iter().all(|part| l.contains(part)))
}

/// Two nodes, one durable: each side logs the connection with the peer's
/// id, the session synced with what it moved, the member coming up; the
/// durable one its commits. The counters follow the writes on both sides,
/// the gauges the connection and the members; and a node dropped without a
/// word is logged down and counted down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_syncs_members_and_commits_are_logged_and_counted() {
    let observed = observed();
    let dir = tempfile::tempdir().unwrap();
    let a = fast(dir.path()).durable(true).spawn().await.expect("node a starts");
    let b = spawn(dir.path(), &[a.addr()]).await;
    let (ida, idb) = (a.id().to_string(), b.id().to_string());
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    for i in 0..5 {
        on_a.update(Counters::set(&format!("k{i}"), 1)).await.unwrap();
    }
    eventually("b holds a's writes", Duration::from_secs(20), || {
        let n = on_b.read(|s| s.0.len());
        (n == 5, n)
    })
    .await;

    let peer_b = format!("peer={idb}");
    eventually("a's log shows b connected, synced and up", Duration::from_secs(20), || {
        let lines = observed.logs.of(&a);
        let connected =
            has_line(&lines, &[&peer_b, "connected"]) || has_line(&lines, &[&peer_b, "admitted"]);
        let synced = has_line(&lines, &[&peer_b, "object=counters", "synced", "updates_sent="]);
        let up = has_line(&lines, &["member up", &format!("member={idb}")]);
        let commit = has_line(&lines, &["store commit", "entries=", "ms="]);
        // b's lines too: what a waits for may be b's doing.
        let seen = (connected, synced, up, commit, lines, observed.logs.of(&b));
        (connected && synced && up && commit, seen)
    })
    .await;

    let (node_a, node_b) = (("node", ida.as_str()), ("node", idb.as_str()));
    let object = ("object", "counters");
    eventually("the counters and gauges", Duration::from_secs(20), || {
        let text = observed.metrics.render();
        let seen = (
            series(&text, "repred_updates_local_total", &[node_a, object]),
            series(&text, "repred_updates_applied_total", &[node_b, object]),
            // At least: when both ends dial at once, the twin connection's
            // stream may deliver a write before it is closed as the
            // duplicate, and the kept one, whose Hello left before, again.
            series(&text, "repred_stream_updates_received_total", &[node_b, object])
                .is_some_and(|n| n >= 5.0),
            series(&text, "repred_bytes_sent_total", &[node_a, object]).unwrap_or(0.0) > 0.0,
            series(&text, "repred_connections_open", &[node_a]),
            series(&text, "repred_streams_open", &[node_b, object]),
            series(&text, "repred_members", &[node_a, ("state", "alive")]),
            series(&text, "repred_store_commit_seconds_count", &[node_a]).unwrap_or(0.0) > 0.0,
            series(&text, "repred_udp_bytes_sent_total", &[node_b]).unwrap_or(0.0) > 0.0,
            // Registered with the object, and nothing to count between
            // two honest peers.
            series(&text, "repred_relay_demotions_total", &[node_b, object]),
        );
        let want = (
            Some(5.0),
            Some(5.0),
            true,
            true,
            Some(1.0),
            Some(1.0),
            Some(2.0),
            true,
            true,
            Some(0.0),
        );
        (seen == want, seen)
    })
    .await;

    // Dropped without a goodbye: a's probes go unanswered.
    drop((on_b, b));
    eventually("b logged down and counted down", Duration::from_secs(20), || {
        let lines = observed.logs.of(&a);
        let down = has_line(&lines, &["member down", &format!("member={idb}")]);
        let text = observed.metrics.render();
        let gauge = series(&text, "repred_members", &[node_a, ("state", "down")]);
        (down && gauge == Some(1.0), (down, gauge))
    })
    .await;
    a.shutdown().await;
}

/// A node told to bootstrap from a node of another cluster, and from
/// nothing else, says so once every one of them refused its handshake,
/// instead of running alone in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_every_bootstrap_peer_refuses_warns() {
    let observed = observed();
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn(ours.path(), &[]).await;
    let x = spawn(theirs.path(), &[a.addr()]).await;
    let lines = eventually("x's warning", Duration::from_secs(20), || {
        let lines = observed.logs.of(&x);
        (has_line(&lines, &["WARN", "every bootstrap peer refused"]), lines)
    })
    .await;
    let warning = lines.iter().find(|l| l.contains("every bootstrap peer refused")).unwrap();
    assert!(warning.contains(&a.addr().to_string()), "names the address: {warning}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("every bootstrap peer refused")).count(),
        1,
        "said once, not at every retry"
    );
    // And a saw the other side of it (counted once a's end of the failed
    // handshake is done, which may be after x heard of it).
    let node_a = a.id().to_string();
    eventually("a counted the refusal", Duration::from_secs(20), || {
        let text = observed.metrics.render();
        let labels = [("node", node_a.as_str()), ("reason", "handshake")];
        let refused = series(&text, "repred_connections_refused_total", &labels);
        (refused.unwrap_or(0.0) >= 1.0, refused)
    })
    .await;
    x.shutdown().await;
    a.shutdown().await;
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Port 0 is another port each run: nodes started on it, one after the
/// other, leave the cluster's files and nothing per run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_port_zero_leave_no_file_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let node = spawn(dir.path(), &[]).await;
        ids.push(node.id());
        node.shutdown().await;
    }
    assert_eq!(files_in(dir.path()), ["cluster-ca.pem", "cluster.pem"]);
    ids.dedup();
    assert_eq!(ids.len(), 3, "a node id for each run");
}
