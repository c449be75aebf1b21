//! A stand-in OpenFaaS function: what the watchdog serves, and an echo of what it received.
//!
//! - `GET /_/health`: 200 when healthy, 503 when not (both watchdogs have it);
//! - `GET /_/ready`: 200 when healthy, 429 when saturated (of-watchdog at `max_inflight`), 503
//!   when not healthy;
//! - anything else: 200 with JSON `{"method", "path", "headers": {name: [values]}, "body"}`, where
//!   `path` is the request target exactly as it arrived.
//!
//! Request headers steer a reply, so tests can make the function behave like a real one:
//! `x-stand-in-status: <code>`, `x-stand-in-sleep-ms: <ms>`, and `x-stand-in-duration: <s>`
//! (the function sets `X-Duration-Seconds` itself, as the watchdog does).

use crate::server::{reply, serve};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    unhealthy: AtomicBool,
    saturated: AtomicBool,
    /// When not 0: the status every health/readiness request answers.
    probe_status: std::sync::atomic::AtomicU16,
    /// Health/readiness requests never answer (a hung watchdog).
    probe_hangs: AtomicBool,
    /// Requests to the function itself (not the watchdog endpoints).
    calls: AtomicU64,
    /// Requests to `/_/health` and `/_/ready`.
    probes: AtomicU64,
    /// What the function received, in order: the echo of each call.
    received: Mutex<Vec<Value>>,
    /// Calls being answered now, and the most there ever were at once.
    active: AtomicU64,
    max_active: AtomicU64,
}

/// A running stand-in function; stops when dropped.
pub struct StandInFunction {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl StandInFunction {
    /// Starts on a free loopback port.
    pub async fn start() -> io::Result<Self> {
        Self::start_on(0).await
    }

    /// Starts on the given loopback port (0: any free port), which may be a
    /// [`ReservedPort`](crate::ports::ReservedPort) the test holds.
    pub async fn start_on(port: u16) -> io::Result<Self> {
        let listener = crate::ports::listen_on(port)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, state.clone(), handle));
        Ok(StandInFunction { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Healthy (the default): `/_/health` 200. Unhealthy: `/_/health` and `/_/ready` 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// Saturated: `/_/ready` answers 429, as of-watchdog does at `max_inflight`.
    pub fn set_saturated(&self, saturated: bool) {
        self.state.saturated.store(saturated, Ordering::SeqCst);
    }

    /// Makes `/_/health` and `/_/ready` answer this status (0: back to normal).
    pub fn set_probe_status(&self, status: u16) {
        self.state.probe_status.store(status, Ordering::SeqCst);
    }

    /// Makes `/_/health` and `/_/ready` hang without answering.
    pub fn set_probe_hangs(&self, hangs: bool) {
        self.state.probe_hangs.store(hangs, Ordering::SeqCst);
    }

    /// How many requests reached the function (watchdog endpoints not counted).
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// How many watchdog health/readiness requests arrived.
    pub fn probes(&self) -> u64 {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// The most calls the function was answering at the same time.
    pub fn max_concurrent(&self) -> u64 {
        self.state.max_active.load(Ordering::SeqCst)
    }

    /// Calls it is answering right now.
    pub fn active(&self) -> u64 {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Forgets the high-water mark (before the next burst).
    pub fn reset_max_concurrent(&self) {
        self.state.max_active.store(0, Ordering::SeqCst);
    }

    /// The echo of every call the function received whole, oldest first (a request cut off
    /// mid-body is counted in [`StandInFunction::calls`] but not echoed here).
    pub fn received(&self) -> Vec<Value> {
        self.state
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for StandInFunction {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    if path == "/_/health" || path == "/_/ready" {
        state.probes.fetch_add(1, Ordering::SeqCst);
        if req.method() != hyper::Method::GET {
            return Ok(reply(405, "text/plain", b"method not allowed".to_vec()));
        }
        if state.probe_hangs.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let forced = state.probe_status.load(Ordering::SeqCst);
        let status = if forced != 0 {
            forced
        } else if state.unhealthy.load(Ordering::SeqCst) {
            503
        } else if path == "/_/ready" && state.saturated.load(Ordering::SeqCst) {
            429
        } else {
            200
        };
        return Ok(reply(status, "text/plain", b"OK".to_vec()));
    }

    state.calls.fetch_add(1, Ordering::SeqCst);
    let now_active = state.active.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_active.fetch_max(now_active, Ordering::SeqCst);
    // Decremented however this call ends (answered, or dropped when the client goes away).
    struct Active(Arc<State>);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _active = Active(state.clone());
    let method = req.method().to_string();
    let mut headers = Map::new();
    for (name, value) in req.headers() {
        let values = headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = values {
            list.push(Value::String(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
    let steer = |name: &str| -> Option<String> {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status: u16 = steer("x-stand-in-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let sleep_ms: u64 = steer("x-stand-in-sleep-ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let duration = steer("x-stand-in-duration");
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        // The request was cut off (Envoy reset it): the function never got a whole request.
        Err(_) => return Ok(reply(400, "text/plain", b"incomplete request".to_vec())),
    };
    let echo = json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    if let Ok(mut received) = state.received.lock() {
        received.push(echo.clone());
    }
    if sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    }
    let mut response = reply(status, "application/json", echo.to_string().into_bytes());
    if let Some(seconds) = duration.and_then(|d| d.parse().ok()) {
        response.headers_mut().insert("x-duration-seconds", seconds);
    }
    Ok(response)
}
