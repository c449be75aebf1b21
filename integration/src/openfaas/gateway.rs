//! The real OpenFaaS gateway in a namespace, and the fake provider (faas-netes) it asks about
//! replicas.

use super::{gateway_binary, wait_for, Netns, Process, FUNCTION, NAMESPACE, SUFFIX};
use crate::http::{Request, Response};
use crate::server::reply;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

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
        let task = tokio::spawn(crate::server::serve(listener, state.clone(), provide));
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
