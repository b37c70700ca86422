//! TLS for clients: the settings a client dials with (trusting a CA,
//! optionally presenting its own certificate) and a blocking connection,
//! plain or TLS, over a std socket.
//!
//! rustls does the protocol (sans-IO) and `rustls::StreamOwned` drives it
//! over std sockets. The node side (certificates per node, the peer port's
//! name checks, async streams) is in `corekv-net`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore, ServerConnection, StreamOwned};

pub use rustls;

/// How long a TLS handshake may take before the connection is closed.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// A client's TLS settings (shared; cheap to clone).
#[derive(Clone)]
pub struct ClientTls(pub Arc<rustls::ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The crypto provider every corekv TLS configuration uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The certificates in a PEM file (at least one).
pub fn load_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\")",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file("TLS key", path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("TLS key {}: no PEM private key in it: {e}", path.display()))
}

/// A root store of the certificates in the PEM file `ca`.
pub fn roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for c in load_certs("TLS CA", ca)? {
        store
            .add(c)
            .map_err(|e| format!("TLS CA {}: {e}", ca.display()))?;
    }
    Ok(Arc::new(store))
}

/// A client that trusts `ca` and, for mutual TLS, presents `identity`
/// (certificate and key files).
pub fn client_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs("TLS certificate", cert)?, load_key(key)?)
            .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(ClientTls(Arc::new(cfg)))
}

/// The name to verify a node's certificate against when dialing `addr`
/// (`host:port`): its IP address or DNS name.
pub fn server_name_of(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| format!("{addr}: {e}"))
}

/// The error a handshake past its time fails with.
pub fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
}

/// A blocking connection, plain or TLS, over a std socket.
pub enum SyncStream {
    /// No TLS.
    Plain(TcpStream),
    /// Dialed, TLS.
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// Accepted, TLS.
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl SyncStream {
    /// The socket underneath (timeouts, addresses, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            SyncStream::Plain(s) => s,
            SyncStream::Client(s) => s.get_ref(),
            SyncStream::Server(s) => s.get_ref(),
        }
    }

    /// TLS over `tcp` to `addr` (verified as its host) with the handshake
    /// done, or plain when `tls` is None. The handshake gets the socket's
    /// read timeout, or [`HANDSHAKE_WAIT`] when none is set.
    pub fn dial(tcp: TcpStream, addr: &str, tls: Option<&ClientTls>) -> Result<SyncStream, String> {
        let Some(tls) = tls else {
            return Ok(SyncStream::Plain(tcp));
        };
        let conn = ClientConnection::new(tls.0.clone(), server_name_of(addr)?)
            .map_err(|e| format!("{addr}: TLS: {e}"))?;
        let mut s = StreamOwned::new(conn, tcp);
        handshake(&mut s.conn, &mut s.sock).map_err(|e| {
            format!(
                "{addr}: TLS handshake: {e} (the node must serve TLS with a certificate from \
                 this CA that names {addr})"
            )
        })?;
        Ok(SyncStream::Client(Box::new(s)))
    }

    /// Accepts TLS over `tcp` (handshake done within [`HANDSHAKE_WAIT`]).
    pub fn accept(tcp: TcpStream, cfg: &Arc<rustls::ServerConfig>) -> std::io::Result<SyncStream> {
        let conn = ServerConnection::new(cfg.clone()).map_err(std::io::Error::other)?;
        let mut s = StreamOwned::new(conn, tcp);
        handshake(&mut s.conn, &mut s.sock)?;
        Ok(SyncStream::Server(Box::new(s)))
    }
}

/// Drives `conn`'s handshake over `sock`, all of it within the socket's
/// read timeout (or [`HANDSHAKE_WAIT`] when none is set): every read and
/// write gets only the time left, so a peer that sends a byte at a time
/// cannot stretch it.
fn handshake<C, D>(conn: &mut C, sock: &mut TcpStream) -> std::io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    let (before_r, before_w) = (sock.read_timeout()?, sock.write_timeout()?);
    let mut io = Deadlined {
        sock,
        deadline: Instant::now() + before_r.unwrap_or(HANDSHAKE_WAIT),
    };
    let mut result = Ok(());
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut io) {
            // A socket timeout reads as WouldBlock.
            result = Err(match e.kind() {
                std::io::ErrorKind::WouldBlock => timed_out(),
                _ => e,
            });
            break;
        }
    }
    io.sock.set_read_timeout(before_r)?;
    io.sock.set_write_timeout(before_w)?;
    result
}

/// A socket whose reads and writes fail with `TimedOut` past `deadline`.
struct Deadlined<'a> {
    sock: &'a mut TcpStream,
    deadline: Instant,
}

impl Deadlined<'_> {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        Ok(left)
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.sock.set_read_timeout(Some(left))?;
        self.sock.read(buf)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.sock.set_write_timeout(Some(left))?;
        self.sock.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

impl Read for SyncStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            SyncStream::Plain(s) => s.read(buf),
            SyncStream::Client(s) => s.read(buf),
            SyncStream::Server(s) => s.read(buf),
        }
    }
}

impl Write for SyncStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SyncStream::Plain(s) => s.write(buf),
            SyncStream::Client(s) => s.write(buf),
            SyncStream::Server(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SyncStream::Plain(s) => s.flush(),
            SyncStream::Client(s) => s.flush(),
            SyncStream::Server(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert!(matches!(
            server_name_of("127.0.0.1:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name_of("[::1]:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name_of("db.example.com:7000").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name_of("bad host:1").is_err());
    }

    #[test]
    fn missing_or_empty_files_say_which() {
        let dir = std::env::temp_dir().join(format!("corekv-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        let e = load_certs("TLS CA", &empty).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = load_key(&dir.join("absent.pem")).unwrap_err();
        assert!(e.contains("absent.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
