//! Listening sockets of a node.
//!
//! Every shard binds the same address with `SO_REUSEPORT`, so the kernel
//! spreads connections over shards. `SO_REUSEPORT` would also let a second
//! server process share the port silently, so [`check_free`] first binds
//! without it: that fails while any other process listens there. Both set
//! `SO_REUSEADDR`, so connections of a previous run lingering in TIME_WAIT do
//! not block a restart.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

fn socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    Ok(s)
}

/// How long a port still held by the closing connections of a killed
/// process (FIN_WAIT, LAST_ACK: states `SO_REUSEADDR` does not cover) is
/// waited for.
const BIND_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// Fails if another process listens on `addr`. A restarted node may find its
/// port briefly held by the previous process's closing connections, so
/// "address in use" is retried for a few seconds first.
pub fn check_free(addr: SocketAddr) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let s = socket(addr)?;
        match s.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < BIND_RETRY_FOR =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A listening socket on `addr` for one shard alone (port 0: one the
/// system picks).
pub fn own_listener(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let s = socket(addr)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// A listening socket on `addr` that other shards of this process may bind
/// too.
pub fn shared_listener(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let s = socket(addr)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}
