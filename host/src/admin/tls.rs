//! Mutual TLS of the admin endpoint, as Fabric's `Admin.TLS` settings: the
//! server config from PEM files (certificate, key, client root CAs; client
//! certificates are required and checked with rustls' WebPKI verifier), a
//! listener for axum that runs handshakes off the accept path, the peer's
//! leaf certificate for the access check (its subject CN), and the client
//! config of the `consenter-host channel` commands (osnadmin's `--ca-file`,
//! `--client-cert`, `--client-key`). Only the ring crypto provider is used.
//! Reads the PEM files it is given; opens no socket itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use x509_cert::der::Decode;
use x509_cert::der::asn1::ObjectIdentifier;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; more connections wait in the backlog.
const MAX_HANDSHAKES: usize = 64;

/// The only application protocol the endpoint speaks.
const ALPN_HTTP1: &[u8] = b"http/1.1";

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// What went wrong setting up TLS or reading a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Pem { what: &'static str, path: PathBuf, reason: String },
    #[error("client CA {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "the admin endpoint's TLS needs client root CAs: no --admin-tls-client-ca given and {dir} holds no *.pem file"
    )]
    NoClientCa { dir: PathBuf },
    #[error("certificate {cert} with key {key}: {source}")]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    #[error("TLS protocol versions: {0}")]
    Protocol(#[source] rustls::Error),
    #[error("not an X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("{0:?} is not host:port (the TLS server name comes from the host)")]
    BadAddress(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let pem_err = |reason: String| TlsError::Pem { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason: match e {
            pem::Error::NoItemsFound => "holds no private key (PKCS#8, SEC1 or PKCS#1 PEM)".into(),
            e => format!("not a PEM key file: {e}"),
        },
    })
}

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
    pub config: Arc<ServerConfig>,
    /// See [`ServerFiles::admin_cns`].
    pub admin_cns: Vec<String>,
}

impl ServerTls {
    /// Reads and checks the files: the key must match the certificate, and
    /// every client CA must be a usable trust anchor.
    pub fn load(f: &ServerFiles) -> Result<ServerTls, TlsError> {
        let chain = load_certs("admin TLS certificate", &f.cert)?;
        let key = load_key("admin TLS key", &f.key)?;
        let mut roots = RootCertStore::empty();
        for path in &f.client_cas {
            for c in load_certs("admin TLS client CA", path)? {
                roots.add(c).map_err(|e| TlsError::BadCa { path: path.clone(), reason: e.to_string() })?;
            }
        }
        // Client authentication is mandatory: the builder refuses
        // anonymous clients unless told otherwise.
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocol)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::CertKey { cert: f.cert.clone(), key: f.key.clone(), source })?;
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(ServerTls { config: Arc::new(config), admin_cns: f.admin_cns.clone() })
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

/// The subject CN of a DER certificate (the last one if there are
/// several, as Go's crypto/x509 reads it), if it has one.
pub fn subject_cn(cert_der: &[u8]) -> Result<Option<String>, TlsError> {
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let mut cn = None;
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|a| a.oid == OID_CN) {
            let s = std::str::from_utf8(atv.value.value())
                .map_err(|_| TlsError::BadCertificate("the subject CN is not UTF-8 text".into()))?;
            cn = Some(s.to_string());
        }
    }
    Ok(cn)
}

/// Who is at the other end of an admin connection: its address and, over
/// TLS, its verified leaf certificate (DER).
#[derive(Debug, Clone)]
pub struct AdminPeer {
    pub addr: SocketAddr,
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

/// A TLS listener for `axum::serve`: a task accepts TCP connections and
/// runs each handshake in its own task (bounded in time and number), so a
/// slow or failing client never holds up the others; completed streams
/// come through a channel. Failed handshakes are logged and dropped. The
/// task ends when the listener is dropped.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp` (needs a Tokio runtime).
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>, handshake_timeout: Duration) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), handshake_timeout, tx));
        Ok(TlsListener { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    timeout: Duration,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = tx.closed() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = tx.closed() => return,
            r = tcp.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    tracing::debug!(%peer, "admin endpoint: TLS handshake done");
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "admin endpoint: TLS handshake refused"),
                Err(_) => tracing::warn!(%peer, ?timeout, "admin endpoint: TLS handshake timed out"),
            }
        });
    }
}

/// As axum's own listener: per-connection errors are skipped; others
/// (out of file descriptors, say) are logged and retried after a pause.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "admin endpoint: accepting a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The client side (the `channel` commands): trust `ca_file` for the
/// endpoint's certificate and, with `identity` (certificate, key), present
/// a client certificate.
pub fn client_config(ca_file: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs("CA file", ca_file)? {
        roots.add(c).map_err(|e| TlsError::BadCa { path: ca_file.to_path_buf(), reason: e.to_string() })?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs("client certificate", cert)?, load_key("client key", key)?)
            .map_err(|source| TlsError::CertKey { cert: cert.to_path_buf(), key: key.to_path_buf(), source })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS server name of `host:port` (a DNS name or an IP address,
/// `[v6]:port` included).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let bad = || TlsError::BadAddress(addr.to_string());
    let (host, _port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

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
