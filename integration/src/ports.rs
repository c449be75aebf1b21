//! Loopback ports a test holds for a process it starts later (a function that comes up after
//! Envoy, or dies and comes back).
//!
//! A port that is only probed free and then let go can be taken by anyone before the test binds
//! it again: another test's `bind(0)`, or the source port of any outgoing connection. So the
//! port stays bound for as long as the test holds its [`ReservedPort`]: bound but not listening,
//! so connections to it are refused (as to a function that is not running), no outgoing
//! connection gets it as its source port, and it is shared only with sockets that ask for it with
//! `SO_REUSEPORT` as the same user, which is what the stand-in function ([`listen_on`]) and
//! Envoy's listeners do.

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// A loopback port held for this test until dropped.
pub struct ReservedPort {
    port: u16,
    // Bound, never listening: holds the port.
    _socket: TcpSocket,
}

impl ReservedPort {
    /// A port of the OS's choosing, held from now on.
    pub fn new() -> io::Result<Self> {
        // SO_REUSEPORT but not SO_REUSEADDR: with it, any listener that sets SO_REUSEADDR (as
        // std's, tokio's and Go's do) could bind next to a socket that is not listening.
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseport(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let port = socket.local_addr()?.port();
        Ok(ReservedPort {
            port,
            _socket: socket,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Listens on `127.0.0.1:port`, next to a [`ReservedPort`] holding it (0: any free port).
pub fn listen_on(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // SO_REUSEADDR as every listener has it (a restart is not held up by the last one's
    // connections in TIME_WAIT); SO_REUSEPORT to share the reservation.
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reserved_port_refuses_connections_and_is_taken_only_by_who_shares_it() {
        let reserved = ReservedPort::new().expect("reserve");
        // Nothing listens: a caller is refused, as by a function that is not running.
        assert!(tokio::net::TcpStream::connect(reserved.addr())
            .await
            .is_err());
        // A plain bind (another test, another program) cannot take it.
        assert!(std::net::TcpListener::bind(reserved.addr()).is_err());
        // The function listens on it, dies and comes back; the port stays held throughout.
        for _ in 0..2 {
            let listener = listen_on(reserved.port()).expect("listen next to the reservation");
            let (accepted, connected) = tokio::join!(
                listener.accept(),
                tokio::net::TcpStream::connect(reserved.addr())
            );
            accepted.expect("accepted");
            connected.expect("connected");
            drop(listener);
            assert!(std::net::TcpListener::bind(reserved.addr()).is_err());
        }
        let port = reserved.port();
        drop(reserved);
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
