//! The real OpenFaaS runtime around the filter: of-watchdog and the gateway (built by
//! `make openfaas` from source at pinned commits, see tools/thirdparty.sh), each in a network
//! namespace the test creates and deletes, because both listen on fixed ports (the watchdog on
//! :8080 and its metrics on :8081, the gateway on :8080 and :8082).
//!
//! The shape of one function pod and the gateway in front of it:
//!
//! ```text
//!  test ──► [ns G] gateway :8080 ──veth──► [ns P] 10.77.0.1:8080 ──(mTLS as the gateway)──► Envoy
//!                  provider (fake faas-netes)                                      (root ns, loopback)
//!  Envoy ──► bridge ──► [ns W] of-watchdog :8080 ──► the function's own server (in-test, killable)
//! ```
//!
//! `P` stands for the pod's address: what reaches it on :8080 is redirected to the sidecar's
//! inbound listener (Istio's iptables redirect, here an in-test forwarder that also originates the
//! mesh's mTLS with the gateway's SPIFFE identity, as the gateway's own sidecar would). Addresses
//! live inside the namespaces only; sockets are opened inside a namespace by a thread that enters
//! it (`setns`), so nothing is added to the host's network. Everything is stopped and deleted when
//! its guard is dropped, also when a test panics; the processes also die with the test process.

use crate::http::{self, Request, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The function every test deploys, and the service suffix the gateway appends to it.
pub const FUNCTION: &str = "env";
pub const NAMESPACE: &str = "openfaas-fn";
pub const SUFFIX: &str = "openfaas-fn.svc.cluster.local";
/// The gateway's identity under Istio mTLS (the filter's default `rewrite.gateway_principal`).
pub const GATEWAY_SPIFFE_ID: &str = "spiffe://cluster.local/ns/openfaas/sa/openfaas-controller";
/// The pod's address as the gateway sees it, and the gateway's own (inside the namespaces).
pub const POD_IP: &str = "10.77.0.1";
pub const GATEWAY_IP: &str = "10.77.0.2";

fn binary(var: &str, name: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os(var)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/openfaas").join(name));
    if path.is_file() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no {name} at {}: run `make openfaas` (builds of-watchdog and the gateway at their \
                 pinned commits with Debian's golang-go; THIRDPARTY=<mirror> or git gives the \
                 source) or set {var}",
                path.display()
            ),
        ))
    }
}

/// The of-watchdog binary: `$OF_WATCHDOG_BIN`, else `target/openfaas/of-watchdog`.
pub fn watchdog_binary() -> io::Result<PathBuf> {
    binary("OF_WATCHDOG_BIN", "of-watchdog")
}

/// The gateway binary: `$OF_GATEWAY_BIN`, else `target/openfaas/of-gateway`.
pub fn gateway_binary() -> io::Result<PathBuf> {
    binary("OF_GATEWAY_BIN", "of-gateway")
}

fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let output = Command::new(program).args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// A unique short tag per namespace in this machine: process id and a counter.
fn unique(kind: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "fmf{}{}{kind}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace (`ip netns add`), deleted when dropped with its interfaces and its
/// `/etc/netns/<name>/` files.
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// A new namespace with its loopback up.
    pub fn create(kind: &str) -> io::Result<Arc<Netns>> {
        let name = unique(kind);
        run("ip", &["netns", "add", &name]).map_err(|e| {
            io::Error::other(format!(
                "{e}\n(the OpenFaaS tests create network namespaces: run them as root, as CI does)"
            ))
        })?;
        let file = match File::open(format!("/var/run/netns/{name}")) {
            Ok(file) => file,
            Err(e) => {
                let _ = run("ip", &["netns", "del", &name]);
                return Err(e);
            }
        };
        let ns = Arc::new(Netns { name, file });
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names resolved inside this namespace (`ip netns exec` mounts this file over /etc/hosts).
    pub fn set_hosts(&self, entries: &[(&str, &str)]) -> io::Result<()> {
        let dir = PathBuf::from("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir)?;
        let mut text = String::from("127.0.0.1 localhost\n");
        for (ip, host) in entries {
            text.push_str(&format!("{ip} {host}\n"));
        }
        std::fs::write(dir.join("hosts"), text)
    }

    /// Runs `f` on a thread that entered this namespace: sockets it opens belong to it.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let fd = self.file.try_clone()?;
        std::thread::spawn(move || {
            // SAFETY: setns changes the namespace of this new thread only; the thread ends with f.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| io::Error::other("a thread in the namespace panicked"))?
    }

    /// A listener inside this namespace.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let listener = self.enter(move || {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        TcpListener::from_std(listener)
    }

    /// A connection made from inside this namespace.
    pub async fn connect(self: &Arc<Self>, addr: SocketAddr) -> io::Result<TcpStream> {
        let ns = self.clone();
        let stream = tokio::task::spawn_blocking(move || {
            ns.enter(move || {
                let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })
        })
        .await
        .map_err(io::Error::other)??;
        TcpStream::from_std(stream)
    }

    /// One HTTP/1.1 request from inside this namespace.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        request: &Request,
    ) -> io::Result<Response> {
        let exchange = async {
            let stream = self.connect(addr).await?;
            http::exchange(
                stream,
                &request.wire(&addr.to_string()),
                request.method == "HEAD",
            )
            .await
        };
        tokio::time::timeout(http::EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))?
    }

    /// Starts a program inside this namespace (`ip netns exec`), its output in `log`.
    pub fn spawn(&self, program: &Path, env: &[(String, String)], log: &Path) -> io::Result<Child> {
        let output = File::create(log)?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        crate::dies_with_the_test(&mut command);
        command.spawn()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// Connects two namespaces by a veth pair: `a_ip` in `a`, `b_ip` in `b` (a /30).
pub fn link(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) -> io::Result<()> {
    let tag = unique("");
    let tag = tag.trim_start_matches("fmf");
    let (va, vb) = (format!("fv{tag}a"), format!("fv{tag}b"));
    let (va, vb) = (
        va.chars().take(15).collect::<String>(),
        vb.chars().take(15).collect::<String>(),
    );
    run(
        "ip",
        &["link", "add", &va, "type", "veth", "peer", "name", &vb],
    )?;
    let setup = || -> io::Result<()> {
        run("ip", &["link", "set", &va, "netns", a.name()])?;
        run("ip", &["link", "set", &vb, "netns", b.name()])?;
        for (ns, dev, ip) in [(a, &va, a_ip), (b, &vb, b_ip)] {
            run(
                "ip",
                &[
                    "-n",
                    ns.name(),
                    "addr",
                    "add",
                    &format!("{ip}/30"),
                    "dev",
                    dev,
                ],
            )?;
            run("ip", &["-n", ns.name(), "link", "set", dev, "up"])?;
        }
        Ok(())
    };
    setup().inspect_err(|_| {
        let _ = run("ip", &["link", "del", &va]);
    })
}

/// A TCP forwarder: accepts on one side, connects on the other, copies both ways. Stopped (with
/// every connection) when dropped.
pub struct Forwarder {
    addr: SocketAddr,
    task: JoinHandle<()>,
    connections: Arc<AtomicU64>,
}

/// Where a forwarder connects to.
#[derive(Clone)]
pub enum Upstream {
    /// A plain connection made inside a namespace.
    InNamespace(Arc<Netns>, SocketAddr),
    /// A connection from the root namespace, over mTLS with this connector (a mesh client's
    /// sidecar), or plain.
    Root(SocketAddr, Option<tokio_rustls::TlsConnector>),
}

impl Forwarder {
    /// Forwards connections accepted by `listener` to `upstream`.
    pub fn start(listener: TcpListener, upstream: Upstream) -> io::Result<Forwarder> {
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                tasks.spawn(async move {
                    match upstream {
                        Upstream::InNamespace(ns, to) => {
                            // Refused (the process is not up): close, as a refused connection
                            // would look through a redirect.
                            if let Ok(mut out) = ns.connect(to).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                        }
                        Upstream::Root(to, None) => {
                            if let Ok(mut out) = TcpStream::connect(to).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                        }
                        Upstream::Root(to, Some(tls)) => {
                            let Ok(tcp) = TcpStream::connect(to).await else {
                                return;
                            };
                            let Ok(name) = rustls::pki_types::ServerName::try_from("localhost")
                            else {
                                return;
                            };
                            if let Ok(mut out) = tls.connect(name, tcp).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                        }
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
        });
        Ok(Forwarder {
            addr,
            task,
            connections,
        })
    }

    /// A forwarder on a free loopback port of the root namespace (for Envoy's clusters).
    pub async fn on_loopback(upstream: Upstream) -> io::Result<Forwarder> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Forwarder::start(listener, upstream)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
        let serving = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
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

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    response
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
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
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

/// A process started in a namespace, killed when dropped; its output kept in a temporary
/// directory (printed when a test fails).
pub struct Process {
    child: Child,
    dir: tempfile::TempDir,
    what: &'static str,
}

impl Process {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} output (tail) ---", self.what);
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
    }
}

/// The real of-watchdog on :8080 inside `ns` (its metrics on :8081 there too), with its own
/// temporary directory (`TMPDIR`: the lock file it writes once ready is per watchdog).
pub fn start_watchdog(ns: &Netns, env: &[(&str, &str)]) -> io::Result<Process> {
    let binary = watchdog_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("faas-mesh-watchdog-")
        .tempdir()?;
    let mut vars = vec![
        ("TMPDIR".to_string(), dir.path().display().to_string()),
        ("port".to_string(), "8080".to_string()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let child = ns.spawn(&binary, &vars, &dir.path().join("output.log"))?;
    Ok(Process {
        child,
        dir,
        what: "of-watchdog",
    })
}

/// Waits until something inside `ns` answers `GET path` on `addr` with `status`.
pub async fn wait_for(
    ns: &Arc<Netns>,
    addr: SocketAddr,
    path: &str,
    status: u16,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(response) = ns.send(addr, &Request::get(path)).await {
            if response.status == status {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{addr}{path} did not answer {status} within {limit:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stand-in for faas-netes, the provider the gateway asks about replicas (`scale_from_zero`):
/// the function starts at `replicas` and is scaled to 1 by the gateway; every scale-up is sent
/// on the channel, so the test can start the pod then (the provider reports it available at once,
/// as Kubernetes does when the pod's readiness probe passes before the function can serve).
pub struct Provider {
    addr: SocketAddr,
    state: Arc<ProviderState>,
    task: JoinHandle<()>,
}

struct ProviderState {
    replicas: AtomicU64,
    scaled: tokio::sync::mpsc::UnboundedSender<u64>,
}

impl Provider {
    pub fn start(
        ns: &Netns,
        port: u16,
        replicas: u64,
    ) -> io::Result<(Provider, tokio::sync::mpsc::UnboundedReceiver<u64>)> {
        let listener = ns.listen(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let addr = listener.local_addr()?;
        let (scaled, scale_ups) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(ProviderState {
            replicas: AtomicU64::new(replicas),
            scaled,
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| provide(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok((Provider { addr, state, task }, scale_ups))
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn replicas(&self) -> u64 {
        self.state.replicas.load(Ordering::SeqCst)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn provide(
    req: hyper::Request<Incoming>,
    state: Arc<ProviderState>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let post = req.method() == hyper::Method::POST;
    let _ = req.into_body().collect().await;
    let status = |replicas: u64| {
        json!({
            "name": FUNCTION, "namespace": NAMESPACE, "image": "ghcr.io/openfaas/env:latest",
            "replicas": replicas, "availableReplicas": replicas,
            "labels": {}, "annotations": {},
        })
    };
    let replicas = state.replicas.load(Ordering::SeqCst);
    let body = if path == format!("/system/function/{FUNCTION}") {
        status(replicas)
    } else if path == "/healthz" {
        return Ok(reply(200, "text/plain", b"OK".to_vec()));
    } else if path == "/system/functions" {
        json!([status(replicas)])
    } else if post && path == format!("/system/scale-function/{FUNCTION}") {
        if state.replicas.swap(1, Ordering::SeqCst) == 0 {
            let _ = state.scaled.send(1);
        }
        return Ok(reply(202, "text/plain", Vec::new()));
    } else {
        return Ok(reply(404, "text/plain", b"not found".to_vec()));
    };
    Ok(reply(
        200,
        "application/json",
        body.to_string().into_bytes(),
    ))
}

/// How the gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub scale_from_zero: bool,
    pub probe_functions: bool,
    /// `upstream_timeout`, `write_timeout` and `read_timeout` (Go durations).
    pub upstream_timeout: String,
    pub write_timeout: String,
    pub read_timeout: String,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            scale_from_zero: true,
            probe_functions: false,
            upstream_timeout: "60s".to_string(),
            write_timeout: "65s".to_string(),
            read_timeout: "65s".to_string(),
        }
    }
}

/// The real OpenFaaS gateway on :8080 inside `ns`, in `direct_functions` mode: it calls
/// `http://<function>.openfaas-fn.svc.cluster.local:8080/<rest>`, which `ns`'s hosts file must
/// resolve.
pub struct Gateway {
    ns: Arc<Netns>,
    process: Process,
}

impl Gateway {
    pub async fn start(
        ns: &Arc<Netns>,
        provider: &Provider,
        options: &GatewayOptions,
    ) -> io::Result<Gateway> {
        let binary = gateway_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("faas-mesh-gateway-")
            .tempdir()?;
        let flag = |b: bool| if b { "true" } else { "false" }.to_string();
        let vars: Vec<(String, String)> = [
            ("functions_provider_url", provider.url()),
            ("direct_functions", "true".to_string()),
            ("direct_functions_suffix", SUFFIX.to_string()),
            ("function_namespace", NAMESPACE.to_string()),
            ("basic_auth", "false".to_string()),
            ("scale_from_zero", flag(options.scale_from_zero)),
            ("probe_functions", flag(options.probe_functions)),
            ("upstream_timeout", options.upstream_timeout.clone()),
            ("write_timeout", options.write_timeout.clone()),
            ("read_timeout", options.read_timeout.clone()),
            ("faas_prometheus_host", "127.0.0.1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let child = ns.spawn(&binary, &vars, &dir.path().join("output.log"))?;
        let gateway = Gateway {
            ns: ns.clone(),
            process: Process {
                child,
                dir,
                what: "gateway",
            },
        };
        wait_for(
            ns,
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            "/healthz",
            200,
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| io::Error::other(format!("{e}\n{}", gateway.log())))?;
        Ok(gateway)
    }

    /// Sends one request to the gateway (from inside its namespace).
    pub async fn send(&self, request: &Request) -> io::Result<Response> {
        self.ns
            .send(SocketAddr::from(([127, 0, 0, 1], 8080)), request)
            .await
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Summary of a set of latencies, in ms: (min, median, p90, max).
pub fn summary(mut values: Vec<f64>) -> (f64, f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| -> f64 {
        if values.is_empty() {
            return f64::NAN;
        }
        let i = ((values.len() - 1) as f64 * q).round() as usize;
        values[i.min(values.len() - 1)]
    };
    (at(0.0), at(0.5), at(0.9), at(1.0))
}
