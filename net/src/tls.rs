//! TLS on the client, shard, RESP and peer ports.
//!
//! A node has one certificate and key (PEM) and one CA bundle. The CA
//! verifies everyone: clients verify a node against the host they dial
//! (an IP address or DNS name in the certificate), nodes verify each other
//! against the CA *and* the name `node-<id>.corekv`, so a certificate issued
//! by the CA to node 2 cannot pose as node 3 on the peer port. With client
//! authentication on, client ports too accept only certificates from the CA.
//!
//! rustls does the protocol (sans-IO); futures-rustls drives it over
//! glommio's sockets and `rustls::StreamOwned` over std sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConnection, RootCertStore, ServerConnection, StreamOwned};

pub use futures_rustls::{TlsAcceptor, TlsConnector};
pub use rustls;

/// How long a TLS handshake may take before the connection is closed.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// The name a node's certificate carries for the peer port (a DNS name in
/// its subject alternative names).
pub fn node_name(node_id: u64) -> String {
    format!("node-{node_id}.corekv")
}

/// Where a node's certificate, key and CA are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA bundle (PEM) that signs nodes and, with client
    /// authentication, clients.
    pub ca: PathBuf,
}

/// A node's TLS: what its ports accept with and what its own connections
/// present.
pub struct NodeTls {
    /// Client, shard and RESP ports.
    pub clients: Arc<rustls::ServerConfig>,
    /// Peer port: a certificate from the CA is required.
    pub peers: Arc<rustls::ServerConfig>,
    /// The node's own connections (peer links and its clients of other
    /// nodes): verify against the CA, present the node's certificate.
    pub dial: ClientTls,
    /// Clients must present a certificate from the CA.
    pub client_auth: bool,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeTls {{ client_auth: {} }}", self.client_auth)
    }
}

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
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

/// Loads a node's certificate, key and CA; fails with what is wrong.
pub fn node_tls(files: &TlsFiles, client_auth: bool) -> Result<NodeTls, String> {
    let certs = load_certs("TLS certificate", &files.cert)?;
    let key = load_key(&files.key)?;
    let roots = roots(&files.ca)?;
    let server = |verify_clients: bool| -> Result<Arc<rustls::ServerConfig>, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if verify_clients {
            let v = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| format!("TLS CA {}: {e}", files.ca.display()))?;
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let cfg = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| {
                format!(
                    "TLS certificate {} and key {}: {e}",
                    files.cert.display(),
                    files.key.display()
                )
            })?;
        Ok(Arc::new(cfg))
    };
    let dial = client_tls(&files.ca, Some((&files.cert, &files.key)))?;
    Ok(NodeTls {
        clients: server(client_auth)?,
        peers: server(true)?,
        dial,
        client_auth,
    })
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

/// True if the first of `certs` names node `node_id` (see [`node_name`]).
/// The chain itself was verified against the CA in the handshake.
pub fn certifies_node(certs: &[CertificateDer<'_>], node_id: u64) -> bool {
    let (Some(leaf), Ok(name)) = (certs.first(), ServerName::try_from(node_name(node_id))) else {
        return false;
    };
    ParsedCertificate::try_from(leaf)
        .is_ok_and(|p| rustls::client::verify_server_name(&p, &name).is_ok())
}

/// The nodes a certificate names for the peer port (`node-<id>.corekv` among
/// its DNS names), for a peer's leaf certificate: empty for a client's.
pub fn certified_nodes(certs: &[CertificateDer<'_>]) -> Vec<u64> {
    let Some(leaf) = certs.first() else {
        return Vec::new();
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return Vec::new();
    };
    cert.valid_dns_names()
        .filter_map(|n| {
            let n = n.to_ascii_lowercase();
            n.strip_prefix("node-")?
                .strip_suffix(".corekv")?
                .parse()
                .ok()
        })
        .filter(|&id| id > 0)
        .collect()
}

/// `f`'s output, or None once `deadline` has passed.
pub async fn by_deadline<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(left).await;
        None
    })
    .await
}

/// An async connection, plain or TLS (glommio's sockets and the like).
pub enum Stream<S> {
    /// No TLS.
    Plain(S),
    /// Accepted, TLS.
    Server(Box<futures_rustls::server::TlsStream<S>>),
    /// Dialed, TLS.
    Client(Box<futures_rustls::client::TlsStream<S>>),
}

impl<S> Stream<S> {
    /// The certificates the other side presented (TLS with a verified
    /// client or server certificate), leaf first.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Server(s) => s.get_ref().1.peer_certificates(),
            Stream::Client(s) => s.get_ref().1.peer_certificates(),
        }
    }
}

/// `hs`, or a `TimedOut` error once [`HANDSHAKE_WAIT`] has passed.
async fn within_wait<T>(
    hs: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    by_deadline(Instant::now() + HANDSHAKE_WAIT, hs)
        .await
        .unwrap_or_else(|| Err(timed_out()))
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
}

/// Accepts a TLS connection on `stream` within [`HANDSHAKE_WAIT`].
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
) -> std::io::Result<Stream<S>> {
    let s = within_wait(acceptor.accept(stream)).await?;
    Ok(Stream::Server(Box::new(s)))
}

/// Dials TLS over `stream`, verifying the other side as `name`, within
/// [`HANDSHAKE_WAIT`].
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &ClientTls,
    name: ServerName<'static>,
    stream: S,
) -> std::io::Result<Stream<S>> {
    let s = within_wait(TlsConnector::from(tls.0.clone()).connect(name, stream)).await?;
    Ok(Stream::Client(Box::new(s)))
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Server($s) => $e,
            Stream::Client($s) => $e,
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_close(cx))
    }
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
