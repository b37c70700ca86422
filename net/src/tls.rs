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
//! glommio's sockets and `rustls::StreamOwned` over std sockets. The client
//! half (`ClientTls`, `SyncStream`, certificate loading) is in
//! `corekv-client` and re-exported here.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::io::{AsyncRead, AsyncWrite};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};

pub use corekv_client::tls::*;
pub use futures_rustls::{TlsAcceptor, TlsConnector};

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
