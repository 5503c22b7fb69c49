//! Listening sockets. With several data-path workers each binds its own
//! socket on the same address with `SO_REUSEPORT`, so the kernel spreads new
//! connections across the workers and no accept is handed between threads.
//! [`Acceptor`] is how every listener accepts: within a connection cap, and
//! pausing after an accept error instead of spinning on it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long accepting pauses after an accept error (e.g. out of file
/// descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// Accepts connections on one listener, at most `cap` at a time: the
/// permit a connection holds frees its slot when dropped; beyond the cap,
/// new connections wait in the kernel's queue.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    name: &'static str,
}

impl Acceptor {
    /// Accepts on `listener` (named `name` in metrics and logs), at most
    /// `cap` connections at once.
    pub fn new(listener: TcpListener, cap: usize, name: &'static str) -> Acceptor {
        Acceptor {
            listener,
            slots: Arc::new(Semaphore::new(cap.max(1))),
            name,
        }
    }

    /// The next connection, its peer, and its slot.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
                // Never closed; wait as if at the cap.
                std::future::pending::<()>().await;
                continue;
            };
            match self.listener.accept().await {
                Ok((tcp, peer)) => return (tcp, peer, permit),
                Err(e) => {
                    metrics::counter!("gns_gateway_accept_errors_total", "listener" => self.name)
                        .increment(1);
                    tracing::warn!(listener = self.name, error = %e, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

/// Pending connections the kernel queues per listening socket.
const BACKLOG: i32 = 1024;

/// A non-blocking listening socket on `address`; `shared` sets
/// `SO_REUSEPORT` so other workers of this process can bind it too (a port
/// another program holds still fails with "address in use").
pub fn bind(address: SocketAddr, shared: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_sockets_bind_one_address_and_others_are_refused() {
        let first = bind("127.0.0.1:0".parse().expect("address"), true).expect("first");
        let address = first.local_addr().expect("address");
        let second = bind(address, true).expect("a second worker binds the same address");
        assert_eq!(second.local_addr().expect("address"), address);
        let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("plain");
        let taken = plain.local_addr().expect("address");
        let err = bind(taken, true).expect_err("a port held without SO_REUSEPORT stays taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
