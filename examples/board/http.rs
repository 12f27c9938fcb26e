//! The HTTP side: the page's files, the browsers' WebSocket (scuttlebutt's
//! stream protocol, through `repred_scuttlebutt::Peer`) and the cluster
//! view's server-sent events.

use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State as With};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use repred_scuttlebutt::{Peer, StreamOpts};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Longest line a browser may send: a list's item is a few hundred bytes.
const MAX_LINE: usize = 1 << 20;

/// The browsers' WebSocket connections, counted for the cluster view.
#[derive(Debug, Default)]
pub struct WireCounters {
    /// Bytes received (WebSocket frames included).
    pub rx: AtomicU64,
    /// Bytes sent.
    pub tx: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections ever.
    pub sessions: AtomicU64,
}

/// What every handler shares.
#[derive(Clone)]
pub struct State {
    /// The browsers' replica and its streams.
    pub browsers: Peer,
    /// The latest cluster view, as JSON.
    pub view: watch::Receiver<String>,
    pub wire: Arc<WireCounters>,
    /// Where the page's files are.
    pub assets: Arc<Path>,
}

pub fn router(state: State) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ws", get(websocket))
        .route("/cluster", get(cluster_events))
        .route("/{file}", get(asset))
        .with_state(state)
}

async fn index(With(state): With<State>) -> Response {
    serve(&state.assets, "index.html")
}

async fn asset(With(state): With<State>, UrlPath(file): UrlPath<String>) -> Response {
    serve(&state.assets, &file)
}

/// One file of the assets directory, by a plain name (no directories, no
/// dot files).
fn serve(assets: &Path, name: &str) -> Response {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let kind = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("map" | "json") => "application/json",
        _ => "application/octet-stream",
    };
    match std::fs::read(assets.join(name)) {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], bytes)
            .into_response(),
        Err(_) if name == "index.html" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "The page is not built in {}: run\n\n  cd examples/board/web && npm install \
                 --no-package-lock && npm run build\n",
                assets.display()
            ),
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The cluster view, pushed as server-sent events (one JSON object each,
/// twice a second).
async fn cluster_events(
    With(state): With<State>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let views = tokio_stream::wrappers::WatchStream::new(state.view.clone());
    Sse::new(views.map(|json| Ok(Event::default().data(json)))).keep_alive(KeepAlive::default())
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The WebSocket: upgrades the connection (RFC 6455's handshake, answered
/// here) and runs one scuttlebutt stream of the browsers' replica over it.
async fn websocket(With(state): With<State>, mut request: Request) -> Response {
    let headers = request.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let upgrade = header_is(headers, header::UPGRADE, "websocket")
        && header_is(headers, header::CONNECTION, "upgrade")
        && header_is(headers, header::SEC_WEBSOCKET_VERSION, "13");
    let Some(accept) = key.filter(|_| upgrade) else {
        return (StatusCode::BAD_REQUEST, "a WebSocket upgrade (version 13) is expected")
            .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                eprintln!("websocket upgrade failed: {e}");
                return;
            }
        };
        let wire = Arc::clone(&state.wire);
        wire.sessions.fetch_add(1, Ordering::Relaxed);
        wire.open.fetch_add(1, Ordering::Relaxed);
        let io = Counted { io: TokioIo::new(upgraded), wire: Arc::clone(&wire) };
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let opts = StreamOpts::default().max_line(MAX_LINE);
        // A browser that breaks the protocol, or goes away, ends its own
        // stream only.
        let _ = state.browsers.run_websocket(ws, opts).await;
        wire.open.fetch_sub(1, Ordering::Relaxed);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A connection whose bytes are counted.
struct Counted<T> {
    io: T,
    wire: Arc<WireCounters>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.wire.rx.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.wire.tx.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
