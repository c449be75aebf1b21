//! Network namespaces: created and deleted by the test, entered by a thread to open sockets
//! and start processes inside, and connected by veth pairs.

use crate::http::{self, Request, Response};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

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
