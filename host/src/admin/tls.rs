//! Mutual TLS of the admin endpoint, as Fabric's `Admin.TLS` settings: the
//! server config from PEM files (certificate, key, client root CAs; client
//! certificates are required and checked with rustls' WebPKI verifier),
//! the peer's leaf certificate for the access check (its subject CN), and
//! the client config of the `consenter-host channel` commands (osnadmin's
//! `--ca-file`, `--client-cert`, `--client-key`). Built on the node's
//! shared TLS module ([`crate::tls`]: PEM loading, the accept loop). Reads
//! the PEM files it is given; opens no socket itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpListener;

use crate::tls::{ALPN_HTTP1, ClientAuth};
pub use crate::tls::{
    HANDSHAKE_TIMEOUT, TlsError, TlsListener, load_certs, load_key, parse_server_name, server_name, subject_cn,
};

/// The admin endpoint's TLS settings (Fabric's `Admin.TLS`).
#[derive(Debug, Clone, Default)]
pub struct ServerFiles {
    /// Certificate (chain) the endpoint presents (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Root CAs client certificates must chain to (PEM; Fabric's
    /// ClientRootCAs). Not empty.
    pub client_cas: Vec<PathBuf>,
    /// When not empty, only client certificates with one of these subject
    /// CNs are admins.
    pub admin_cns: Vec<String>,
}

/// A loaded server configuration.
#[derive(Clone)]
pub struct ServerTls {
    /// The rustls config (client certificates required).
    pub config: Arc<ServerConfig>,
    /// See [`ServerFiles::admin_cns`].
    pub admin_cns: Vec<String>,
}

impl ServerTls {
    /// Reads and checks the files: the key must match the certificate, and
    /// every client CA must be a usable trust anchor.
    pub fn load(f: &ServerFiles) -> Result<ServerTls, TlsError> {
        // Client authentication is mandatory: the verifier refuses
        // anonymous clients (and an empty CA list).
        let roots = crate::tls::load_roots("admin TLS client CA", &f.client_cas)?;
        let config = crate::tls::server_config(
            &f.cert,
            &f.key,
            ("admin TLS certificate", "admin TLS key"),
            ClientAuth::Require(Arc::new(roots)),
            ALPN_HTTP1,
        )?;
        Ok(ServerTls { config, admin_cns: f.admin_cns.clone() })
    }
}

/// The default client root CAs: the MSP folder's `tlscacerts/*.pem` (the
/// organization's TLS CA), sorted.
pub fn msp_tls_cas(msp_dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
    let dir = msp_dir.join("tlscacerts");
    let mut found = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(|source| TlsError::Read { what: "MSP folder", path: dir.clone(), source })?;
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pem") && p.is_file() {
                    found.push(p);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(TlsError::Read { what: "MSP folder", path: dir, source }),
    }
    if found.is_empty() {
        return Err(TlsError::NoClientCa { dir });
    }
    found.sort();
    Ok(found)
}

/// Who is at the other end of an admin connection: its address and, over
/// TLS, its verified leaf certificate (DER).
#[derive(Debug, Clone)]
pub struct AdminPeer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its verified leaf certificate, over TLS.
    pub cert: Option<Arc<CertificateDer<'static>>>,
}

impl Connected<IncomingStream<'_, TcpListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        AdminPeer { addr: *stream.remote_addr(), cert: None }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().get_ref();
        let cert = conn.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.clone().into_owned()));
        AdminPeer { addr: *stream.remote_addr(), cert }
    }
}

/// The client side (the `channel` commands): trust `ca_file` for the
/// endpoint's certificate and, with `identity` (certificate, key), present
/// a client certificate.
pub fn client_config(ca_file: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = crate::tls::load_roots("CA file", &[ca_file.to_path_buf()])?;
    let identity = match identity {
        Some((cert, key)) => Some((load_certs("client certificate", cert)?, load_key("client key", key)?, cert, key)),
        None => None,
    };
    crate::tls::client_config(roots, identity, ALPN_HTTP1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn org() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/fabric/crypto/ordererOrganizations/example.com")
    }

    fn der(path: PathBuf) -> Vec<u8> {
        load_certs("test", &path).unwrap().remove(0).to_vec()
    }

    #[test]
    fn subject_cns_of_fabric_certs() {
        let admin = der(org().join("users/Admin@example.com/tls/client.crt"));
        assert_eq!(subject_cn(&admin).unwrap().as_deref(), Some("Admin@example.com"));
        let o1 = der(org().join("orderers/orderer1.example.com/tls/server.crt"));
        assert_eq!(subject_cn(&o1).unwrap().as_deref(), Some("orderer1.example.com"));
        let err = subject_cn(b"\x30\x03\x02\x01\x00").unwrap_err();
        assert!(matches!(err, TlsError::BadCertificate(_)), "{err}");
        // A certificate without a CN.
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "no cn");
        let c = p.self_signed(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()).unwrap();
        assert_eq!(subject_cn(c.der()).unwrap(), None);
    }

    #[test]
    fn server_names_from_addresses() {
        assert_eq!(server_name("127.0.0.1:7053").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert!(matches!(server_name("127.0.0.1:7053").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]:7053").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("orderer0.example.com:7053").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(server_name("no-port"), Err(TlsError::BadAddress(_))));
        assert!(matches!(server_name("bad host:1"), Err(TlsError::BadAddress(_))));
    }

    #[test]
    fn default_client_cas_come_from_the_msp() {
        let cas = msp_tls_cas(&org().join("orderers/orderer0.example.com/msp")).unwrap();
        assert_eq!(cas.len(), 1);
        assert!(cas[0].ends_with("tlscacerts/tlsca.example.com-cert.pem"), "{cas:?}");
        let empty = tempfile::tempdir().unwrap();
        let err = msp_tls_cas(empty.path()).unwrap_err();
        assert!(matches!(err, TlsError::NoClientCa { .. }));
        assert!(err.to_string().contains("--admin-tls-client-ca") && err.to_string().contains("tlscacerts"), "{err}");
        // Files that are not *.pem are not CAs.
        std::fs::create_dir(empty.path().join("tlscacerts")).unwrap();
        std::fs::write(empty.path().join("tlscacerts/README"), "x").unwrap();
        assert!(matches!(msp_tls_cas(empty.path()), Err(TlsError::NoClientCa { .. })));
    }

    #[test]
    fn server_config_checks_its_files() {
        let o0 = org().join("orderers/orderer0.example.com/tls");
        let o1 = org().join("orderers/orderer1.example.com/tls");
        let files = ServerFiles {
            cert: o0.join("server.crt"),
            key: o0.join("server.key"),
            client_cas: vec![org().join("tlsca/tlsca.example.com-cert.pem")],
            admin_cns: vec![],
        };
        let tls = ServerTls::load(&files).unwrap();
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let with = |f: &dyn Fn(&mut ServerFiles)| {
            let mut x = files.clone();
            f(&mut x);
            ServerTls::load(&x).err().expect("refused").to_string()
        };
        let e = with(&|f| f.key = o0.join("missing.key"));
        assert!(e.contains("reading admin TLS key") && e.contains("missing.key"), "{e}");
        let e = with(&|f| f.key = o0.join("server.crt"));
        assert!(e.contains("server.crt") && e.contains("holds no private key"), "{e}");
        let e = with(&|f| f.cert = o0.join("server.key"));
        assert!(e.contains("admin TLS certificate") && e.contains("no CERTIFICATE"), "{e}");
        let e = with(&|f| f.key = o1.join("server.key"));
        assert!(e.contains("with key") && e.contains("orderer1.example.com/tls/server.key"), "{e}");
        let e = with(&|f| f.client_cas = vec![o0.join("server.key")]);
        assert!(e.contains("admin TLS client CA"), "{e}");
        let e = with(&|f| f.client_cas = vec![]);
        assert!(e.contains("verifier"), "{e}");
    }

    #[test]
    fn client_config_loads_osnadmin_files() {
        let admin = org().join("users/Admin@example.com/tls");
        let ca = org().join("tlsca/tlsca.example.com-cert.pem");
        client_config(&ca, None).unwrap();
        client_config(&ca, Some((&admin.join("client.crt"), &admin.join("client.key")))).unwrap();
        let e = client_config(&admin.join("client.key"), None).unwrap_err().to_string();
        assert!(e.contains("CA file") && e.contains("client.key"), "{e}");
        let e = client_config(&ca, Some((&admin.join("client.crt"), &admin.join("nope")))).unwrap_err().to_string();
        assert!(e.contains("reading client key") && e.contains("nope"), "{e}");
    }
}
