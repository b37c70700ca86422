//! Throwaway certificates for local clusters (`corekv dev --tls`): a CA,
//! one certificate per node and one client certificate, in a directory.
//!
//! A node's certificate names it as `node-<id>.corekv` (what peers check)
//! and as `localhost`, 127.0.0.1 and its own listen addresses (what clients
//! dial). The CA key stays in the directory (mode 0600) so nodes added
//! later get certificates too. Not for production: see docs/security.md.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The CA certificate, in the directory.
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
/// The client certificate and key (mutual TLS), in the directory.
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// See [`CLIENT_CERT_FILE`].
pub const CLIENT_KEY_FILE: &str = "client-key.pem";

/// A directory of certificates signed by one CA.
pub struct DevCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "corekv dev CA (throwaway)");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn write_key(path: &Path, pem: &str) -> anyhow::Result<()> {
    crate::ctl::write_secret(path, pem.trim_end())
}

impl DevCa {
    /// The CA in `dir`, made there if it is not.
    pub fn open_or_make(dir: &Path) -> anyhow::Result<DevCa> {
        std::fs::create_dir_all(dir)?;
        let (cert, key) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
        let issuer = if cert.is_file() && key.is_file() {
            let k = KeyPair::from_pem(&std::fs::read_to_string(&key)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            Issuer::new(ca_params(), k)
        } else {
            let k = KeyPair::generate()?;
            let c = ca_params().self_signed(&k)?;
            write_key(&key, &k.serialize_pem())?;
            std::fs::write(&cert, c.pem())?;
            Issuer::new(ca_params(), k)
        };
        Ok(DevCa {
            dir: dir.to_path_buf(),
            issuer,
        })
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }

    /// Node `id`'s certificate and key files, made if missing, naming the
    /// node and `ips` (127.0.0.1 and `localhost` always).
    pub fn node(&self, id: u64, ips: &[IpAddr]) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(format!("node-{id}.pem"));
        let key = self.dir.join(format!("node-{id}-key.pem"));
        if !(cert.is_file() && key.is_file()) {
            let mut p = CertificateParams::new(vec![
                corekv_net::tls::node_name(id),
                "localhost".to_string(),
            ])?;
            let mut all: Vec<IpAddr> = vec![std::net::Ipv4Addr::LOCALHOST.into()];
            all.extend(ips.iter().copied().filter(|ip| !ip.is_unspecified()));
            all.sort();
            all.dedup();
            p.subject_alt_names
                .extend(all.into_iter().map(SanType::IpAddress));
            p.distinguished_name
                .push(DnType::CommonName, corekv_net::tls::node_name(id));
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            self.issue(p, &cert, &key)?;
        }
        Ok((cert, key))
    }

    /// The client certificate and key files (mutual TLS), made if missing.
    pub fn client(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(CLIENT_CERT_FILE);
        let key = self.dir.join(CLIENT_KEY_FILE);
        if !(cert.is_file() && key.is_file()) {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name
                .push(DnType::CommonName, "corekv dev client");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.issue(p, &cert, &key)?;
        }
        Ok((cert, key))
    }

    fn issue(&self, p: CertificateParams, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let k = KeyPair::generate()?;
        let c = p.signed_by(&k, &self.issuer)?;
        write_key(key, &k.serialize_pem())?;
        std::fs::write(cert, c.pem())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_their_node_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::open_or_make(dir.path()).unwrap();
        let (cert, key) = ca.node(2, &["127.0.0.2".parse().unwrap()]).unwrap();
        let certs = corekv_net::tls::load_certs("cert", &cert).unwrap();
        assert!(corekv_net::tls::certifies_node(&certs, 2));
        assert!(!corekv_net::tls::certifies_node(&certs, 3));
        // Loads as a node's TLS (key matches, CA parses), and a CA opened
        // again from its files signs certificates the same CA verifies.
        let files = corekv_net::tls::TlsFiles {
            cert,
            key,
            ca: ca.ca_file(),
        };
        corekv_net::tls::node_tls(&files, true).unwrap();
        let again = DevCa::open_or_make(dir.path()).unwrap();
        let (c3, k3) = again.node(3, &[]).unwrap();
        let files3 = corekv_net::tls::TlsFiles {
            cert: c3,
            key: k3,
            ca: again.ca_file(),
        };
        corekv_net::tls::node_tls(&files3, false).unwrap();
        let pem = std::fs::read_to_string(ca.ca_file()).unwrap();
        assert_eq!(pem, std::fs::read_to_string(again.ca_file()).unwrap());
    }
}
