//! A TCP forwarder between namespaces (the pod address's redirect to the sidecar).

use super::Netns;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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
