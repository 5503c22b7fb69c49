//! Listening sockets. With several data-path workers each binds its own
//! socket on the same address with `SO_REUSEPORT`, so the kernel spreads new
//! connections across the workers and no accept is handed between threads.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

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
