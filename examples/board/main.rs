//! A shared list in the browser, replicated by a repred cluster, and a live
//! view of that cluster.
//!
//!     (cd examples/board/web && npm install --no-package-lock && npm run build)
//!     cargo run --example board -- 9000 --http 8000
//!     cargo run --example board -- 9001 9000 --http 8001
//!
//! then open http://127.0.0.1:8000/ and http://127.0.0.1:8001/.
//!
//! Each process is a repred-transport node (QUIC on 127.0.0.1:PORT,
//! bootstrapping from the other ports, as the `peer` example) replicating
//! the list as a `repred_scuttlebutt::Model` named `board`, plus an HTTP
//! server on 127.0.0.1:HTTP_PORT that serves:
//!
//! - `/` and the page's files, built from `examples/board/web/src` by
//!   esbuild into `examples/board/web/dist` (`--assets DIR` to serve
//!   another directory); nothing is loaded from anywhere else;
//! - `/ws`: a WebSocket speaking scuttlebutt's stream protocol: the page
//!   runs a real `scuttlebutt/model` replica and syncs it here;
//! - `/cluster`: server-sent events, twice a second: members and what this
//!   node believes of each (alive, suspect, down), the objects' clocks and
//!   traffic, and the node's UDP bytes per second in and out.
//!
//! The list lives in two replicas of one `Model` in this process: the one
//! replicated over QUIC, and the one browsers sync with over WebSocket
//! (`repred_scuttlebutt::Node`). The bridge (`bridge.rs`) copies every
//! write from one to the other with its own JavaScript stamp, so a write
//! reaches every page, on every node, unchanged.
//!
//! It prints `HTTP http://127.0.0.1:HTTP_PORT/` once it serves, and `UP
//! [ports]` whenever the live set changes. Credentials and the list's
//! store live in `./.repred/` (or `--data-dir DIR`, or `REPRED_DATA_DIR`),
//! shared with the `peer` example's cluster.

mod bridge;
mod cluster;
mod http;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use repred_scuttlebutt::{Model, Node as BrowserNode, Peer};
use repred_transport::Node;

const USAGE: &str =
    "usage: board PORT [BOOTSTRAP_PORT...] --http HTTP_PORT [--data-dir DIR] [--assets DIR]";

/// The replicated object's name on the cluster.
pub const OBJECT: &str = "board";

struct Args {
    port: u16,
    bootstrap: Vec<u16>,
    http: u16,
    data_dir: PathBuf,
    assets: PathBuf,
}

fn parse_port(arg: &str) -> anyhow::Result<u16> {
    match arg.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => bail!("`{arg}` is not a port number (1-65535)"),
    }
}

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
    let mut ports = Vec::new();
    let mut http = None;
    let mut data_dir: Option<PathBuf> = None;
    let mut assets: Option<PathBuf> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--http" => http = Some(parse_port(&args.next().context("--http needs a port")?)?),
            "--data-dir" | "--assets" => {
                let dir = args.next().with_context(|| format!("{arg} needs a directory"))?;
                if dir.is_empty() {
                    bail!("{arg} needs a directory, not an empty string");
                }
                if arg == "--assets" {
                    assets = Some(dir.into());
                } else {
                    data_dir = Some(dir.into());
                }
            }
            "-h" | "--help" => bail!("{USAGE}"),
            flag if flag.starts_with('-') => bail!("unknown option `{flag}`"),
            port => ports.push(parse_port(port)?),
        }
    }
    let Some((&port, bootstrap)) = ports.split_first() else { bail!("missing PORT") };
    let Some(http) = http else { bail!("missing --http HTTP_PORT") };
    let data_dir = match (data_dir, std::env::var_os("REPRED_DATA_DIR")) {
        (Some(dir), _) => dir,
        (None, Some(dir)) if dir.is_empty() => {
            bail!("REPRED_DATA_DIR is set but empty: unset it or name a directory")
        }
        (None, Some(dir)) => PathBuf::from(dir),
        (None, None) => PathBuf::from(".repred"),
    };
    let assets = assets.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/board/web/dist")
    });
    Ok(Args { port, bootstrap: bootstrap.to_vec(), http, data_dir, assets })
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.assets.join("index.html").is_file() {
        eprintln!(
            "warning: {} has no index.html: build the page first \
             (cd examples/board/web && npm install --no-package-lock && npm run build)",
            args.assets.display()
        );
    }
    let node = Node::builder()
        .listen(local(args.port))
        .bootstrap(args.bootstrap.iter().map(|&p| local(p)))
        .data_dir(&args.data_dir)
        // The list survives restarts: it lives in node-<port>.redb.
        .durable(true)
        // The library's defaults (a probe every 500 ms, 2 s to refute a
        // suspicion), named here because the page shows what they do: a
        // killed node turns suspect within a second and down about two
        // seconds later.
        .heartbeat(Duration::from_millis(500))
        .down_after(Duration::from_secs(2))
        .spawn()
        .await
        .with_context(|| format!("cannot start a node on port {}", args.port))?;
    let handle = node.replicate(OBJECT, Model::default())?;
    let browsers = Peer::new(
        BrowserNode::new(&format!("node-{}", args.port)).context("the browser replica's id")?,
    );
    let bridge = bridge::Bridge::start(handle.clone(), browsers.clone()).await;
    let node = Arc::new(node);
    let wire = Arc::new(http::WireCounters::default());
    let (view, view_task) = cluster::spawn(cluster::Sources {
        node: Arc::clone(&node),
        cluster: handle,
        browsers: browsers.clone(),
        bridge: Arc::clone(&bridge),
        wire: Arc::clone(&wire),
        http_port: args.http,
    });
    let listener = tokio::net::TcpListener::bind(local(args.http))
        .await
        .with_context(|| format!("cannot listen for HTTP on 127.0.0.1:{}", args.http))?;
    let app = http::router(http::State { browsers, view, wire, assets: args.assets.into() });
    println!("HTTP http://127.0.0.1:{}/", args.http);
    let server = std::future::IntoFuture::into_future(axum::serve(listener, app));
    let mut members = node.members();
    members.mark_changed();
    let mut last_up = Vec::new();
    tokio::pin!(server);
    loop {
        tokio::select! {
            served = &mut server => {
                served.context("the HTTP server failed")?;
                break;
            }
            changed = members.changed() => {
                if changed.is_err() {
                    break;
                }
                let mut up: Vec<u16> =
                    members.borrow_and_update().values().map(|a| a.port()).collect();
                up.sort();
                if up != last_up {
                    println!("UP {up:?}");
                    last_up = up;
                }
            }
            signal = tokio::signal::ctrl_c() => {
                signal.context("cannot listen for Ctrl-C")?;
                break;
            }
        }
    }
    println!("leaving the cluster");
    view_task.abort();
    let _ = view_task.await;
    bridge.stop().await;
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
