//! The function's own HTTP server, as an http-mode template runs it behind of-watchdog.

use super::Netns;
use crate::server::reply;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// One request the function's own server received, and when.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Header names lowercased, every value.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct FunctionState {
    ready_path: String,
    /// How long the ready path takes to answer (ms).
    ready_delay_ms: AtomicU64,
    /// Ready-path requests that arrived (answered or not yet).
    ready_requests: AtomicU64,
    /// When the ready path first answered 200.
    first_ready: Mutex<Option<Instant>>,
    calls: Mutex<Vec<Seen>>,
}

/// The function's own HTTP server, as an http-mode template runs it behind of-watchdog
/// (`upstream_url`): answers its `ready_path` with 200 and echoes every other request as JSON
/// (`method`, `path`, `headers`, `body`), with the status `<code>` for `/status/<code>`; other
/// `/_/` paths are 404, as in a custom container that serves only its own. Dropping
/// it kills it and every connection at once, as
/// when the function's process dies.
pub struct FunctionServer {
    state: Arc<FunctionState>,
    task: JoinHandle<()>,
}

impl FunctionServer {
    /// Starts listening on `127.0.0.1:port` inside `ns`.
    pub fn start(ns: &Netns, port: u16, ready_path: &str) -> io::Result<FunctionServer> {
        Self::start_with(ns, port, ready_path, 0)
    }

    /// As [`FunctionServer::start`], with a ready path that takes `ready_delay_ms` to answer.
    pub fn start_with(
        ns: &Netns,
        port: u16,
        ready_path: &str,
        ready_delay_ms: u64,
    ) -> io::Result<FunctionServer> {
        let listener = ns.listen(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let state = Arc::new(FunctionState {
            ready_path: ready_path.to_string(),
            ..FunctionState::default()
        });
        state.ready_delay_ms.store(ready_delay_ms, Ordering::SeqCst);
        let task = tokio::spawn(crate::server::serve(listener, state.clone(), handle));
        Ok(FunctionServer { state, task })
    }

    /// Every call (not the ready path) received so far.
    pub fn calls(&self) -> Vec<Seen> {
        self.state
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// When the ready path first answered 200.
    pub fn first_ready(&self) -> Option<Instant> {
        self.state.first_ready.lock().ok().and_then(|f| *f)
    }

    /// Ready-path requests received so far.
    pub fn ready_requests(&self) -> u64 {
        self.state.ready_requests.load(Ordering::SeqCst)
    }
}

impl Drop for FunctionServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    state: Arc<FunctionState>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    if path == state.ready_path {
        state.ready_requests.fetch_add(1, Ordering::SeqCst);
        let delay = state.ready_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if let Ok(mut first) = state.first_ready.lock() {
            first.get_or_insert_with(Instant::now);
        }
        return Ok(reply(200, "text/plain", b"ready".to_vec()));
    }
    // Like a custom container that serves only its own paths: no other `/_/` endpoint.
    if path.starts_with("/_/") {
        return Ok(reply(404, "text/plain", b"404 page not found".to_vec()));
    }
    let at = Instant::now();
    let method = req.method().to_string();
    let headers = crate::http::header_pairs(req.headers());
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(_) => return Ok(reply(400, "text/plain", b"incomplete request".to_vec())),
    };
    let mut map = Map::new();
    for (name, value) in &headers {
        if let Value::Array(list) = map
            .entry(name.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            list.push(Value::String(value.clone()));
        }
    }
    let echo = json!({
        "method": method,
        "path": path,
        "headers": map,
        "body": String::from_utf8_lossy(&body),
    });
    if let Ok(mut calls) = state.calls.lock() {
        calls.push(Seen {
            at,
            method,
            path,
            headers,
            body,
        });
    }
    // `/status/<code>`: the function answers with that status (its own error).
    let status = echo["path"]
        .as_str()
        .and_then(|p| p.strip_prefix("/status/"))
        .and_then(|code| code.parse().ok())
        .unwrap_or(200);
    Ok(reply(
        status,
        "application/json",
        echo.to_string().into_bytes(),
    ))
}
