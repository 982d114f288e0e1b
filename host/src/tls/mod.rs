//! TLS from PEM files, for every endpoint of the node and its clients:
//! certificates, keys and root CA stores read with errors that name the
//! file and what is wrong, server configs with Fabric's three client
//! authentication modes (none asked, asked but not chain-checked as
//! Fabric's `tls.RequestClientCert`, required and verified against client
//! root CAs as `tls.RequireAndVerifyClientCert`), client configs, TLS
//! server names from `host:port`, and a certificate's subject CN. Only the
//! ring crypto provider is used. Reads the files it is given; the accept
//! loop is [`listener`], dialing gRPC over TLS is [`dial`].

pub mod client_roots;
pub mod dial;
pub mod listener;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use x509_cert::der::Decode;
use x509_cert::der::asn1::ObjectIdentifier;

pub use listener::TlsListener;

/// How long a peer has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The application protocol of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The application protocol of the admin endpoint (HTTP/1.1).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// What went wrong setting up TLS or reading a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {what} {path}: {source}")]
    Read {
        /// What the file is (e.g. "TLS certificate (--tls-cert)").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file (or PEM text) is not what it should be.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// What the file is.
        what: &'static str,
        /// The file (or a label for PEM given in memory).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A root CA certificate is not a usable trust anchor.
    #[error("{what} {path}: not a usable root CA: {reason}")]
    BadCa {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why webpki refused it.
        reason: String,
    },
    /// The admin endpoint's default client CAs (the MSP's tlscacerts) are missing.
    #[error(
        "the admin endpoint's TLS needs client root CAs: no --admin-tls-client-ca given and {dir} holds no *.pem file"
    )]
    NoClientCa {
        /// The folder looked in.
        dir: PathBuf,
    },
    /// The key does not belong to the certificate, or rustls refused the pair.
    #[error("certificate {cert} with key {key}: {source}")]
    CertKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    /// The server certificate verifier could not be built (no root CA).
    #[error("server certificate verifier: {0} (the root CAs to trust come from --tls-root-ca)")]
    ServerVerifier(#[source] VerifierBuilderError),
    /// No protocol version the provider supports.
    #[error("TLS protocol versions: {0}")]
    Protocol(#[source] rustls::Error),
    /// DER bytes that are not an X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    BadCertificate(String),
    /// An address that gives no TLS server name.
    #[error("{0:?} is not host:port (the TLS server name comes from the host)")]
    BadAddress(String),
    /// A `--tls-server-name` that is neither a DNS name nor an IP address.
    #[error("{0:?} is not a TLS server name (a DNS name or an IP address)")]
    BadServerName(String),
}

/// The ring crypto provider (the only one this node uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(what, path, &read(what, path)?)
}

/// Every certificate of PEM text (at least one); `origin` names where the
/// text came from in errors.
pub fn certs_from_pem(
    what: &'static str,
    origin: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem { what, path: origin.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(what, path, &read(what, path)?)
}

/// The private key of PEM text; `origin` names where it came from.
pub fn key_from_pem(what: &'static str, origin: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| TlsError::Pem {
        what,
        path: origin.to_path_buf(),
        reason: match e {
            pem::Error::NoItemsFound => "holds no private key (PKCS#8, SEC1 or PKCS#1 PEM)".into(),
            e => format!("not a PEM key file: {e}"),
        },
    })
}

/// A root store of every certificate in `files` (each a PEM file).
pub fn load_roots(what: &'static str, files: &[PathBuf]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for path in files {
        add_roots(&mut roots, what, path, load_certs(what, path)?)?;
    }
    Ok(roots)
}

/// Adds `certs` (read from `origin`) to `roots` as trust anchors.
pub fn add_roots(
    roots: &mut RootCertStore,
    what: &'static str,
    origin: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<(), TlsError> {
    for c in certs {
        roots.add(c).map_err(|e| TlsError::BadCa { what, path: origin.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(())
}

/// Which client certificates a server asks for (Fabric's
/// `ClientAuthRequired` and `ClientRootCAs`).
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Ask for none.
    None,
    /// Fabric's general listener when ClientAuthRequired is false (Go's
    /// `tls.RequestClientCert`): ask for a certificate, accept a
    /// connection without one, and do not check a given certificate's
    /// chain (the handshake still proves the client holds its key). What
    /// the certificate is worth is for the service to decide: the cluster
    /// service matches it byte for byte against a channel's consenters.
    Request,
    /// Go's `tls.RequireAndVerifyClientCert`: a certificate chaining to
    /// one of these roots is required.
    Require(Arc<RootCertStore>),
    /// A certificate `verify` accepts is required (e.g.
    /// [`client_roots::ChannelClientRoots`]: the configured roots and the
    /// TLS CAs of the node's channels).
    Verifier(Arc<dyn ClientCertVerifier>),
}

/// A server's TLS: certificate chain and key (both PEM files), the client
/// authentication mode and the application protocols. `what` prefixes the
/// errors (e.g. "TLS" gives "TLS certificate …").
pub fn server_config(
    cert: &Path,
    key: &Path,
    names: (&'static str, &'static str),
    client_auth: ClientAuth,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(names.0, cert)?;
    let key_der = load_key(names.1, key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Request => builder.with_client_cert_verifier(Arc::new(RequestClientCert::new())),
        ClientAuth::Require(roots) => {
            builder.with_client_cert_verifier(WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?)
        }
        ClientAuth::Verifier(v) => builder.with_client_cert_verifier(v),
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|source| TlsError::CertKey {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS: trust `roots` for the server's certificate and, with
/// `identity` (certificate chain, key), present a client certificate.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, &Path, &Path)>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key, cert_path, key_path)) => builder.with_client_auth_cert(chain, key).map_err(|source| {
            TlsError::CertKey { cert: cert_path.to_path_buf(), key: key_path.to_path_buf(), source }
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The client files of a gRPC client (the `bench` flags): root CAs, and
/// optionally a client certificate and its key, all PEM files.
pub fn grpc_client_config(roots: &[PathBuf], identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let what = "TLS root CA (--tls-root-ca)";
    let store = load_roots(what, roots)?;
    let identity = match identity {
        Some((cert, key)) => Some((
            load_certs("TLS client certificate (--tls-client-cert)", cert)?,
            load_key("TLS client key (--tls-client-key)", key)?,
            cert,
            key,
        )),
        None => None,
    };
    client_config(store, identity, ALPN_H2)
}

/// Go's `tls.RequestClientCert` for rustls: asks for a client certificate
/// (with no CA hints), accepts a connection without one, accepts any
/// certificate, and verifies the handshake signature with the provider's
/// algorithms, so a client cannot present a certificate whose key it does
/// not hold.
#[derive(Debug)]
pub struct RequestClientCert {
    provider: Arc<CryptoProvider>,
}

impl RequestClientCert {
    /// With the ring provider's signature algorithms.
    pub fn new() -> RequestClientCert {
        RequestClientCert { provider: provider() }
    }
}

impl Default for RequestClientCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Go's RequestClientCert checks nothing, but a certificate that
        // does not even parse is refused.
        x509_cert::Certificate::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS server name of `host:port` (a DNS name or an IP address,
/// `[v6]:port` included).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let bad = || TlsError::BadAddress(addr.to_string());
    let (host, _port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| bad())
}

/// A TLS server name given on its own (`--tls-server-name`).
pub fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::BadServerName(name.to_string()))
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

/// The DER SubjectPublicKeyInfo of a DER certificate (to compare two
/// certificates' keys, as Fabric's `CertificatesWithSamePublicKey`).
pub fn public_key_info(cert_der: &[u8]) -> Result<Vec<u8>, TlsError> {
    use x509_cert::der::Encode;
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    cert.tbs_certificate.subject_public_key_info.to_der().map_err(|e| TlsError::BadCertificate(e.to_string()))
}

/// A rustls error inside an I/O error (how tokio-rustls and rustls'
/// `StreamOwned` report one), if there is one.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/fabric/crypto/ordererOrganizations/example.com")
    }

    #[test]
    fn server_names() {
        assert!(matches!(server_name("127.0.0.1:7050").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]:7050").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("orderer0.example.com:7050").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(server_name("no-port"), Err(TlsError::BadAddress(_))));
        assert!(matches!(parse_server_name("orderer0.example.com").unwrap(), ServerName::DnsName(_)));
        let e = parse_server_name("not a name").unwrap_err().to_string();
        assert!(e.contains("not a TLS server name"), "{e}");
    }

    #[test]
    fn server_config_modes_and_errors() {
        let o0 = org().join("orderers/orderer0.example.com/tls");
        let names = ("TLS certificate (--tls-cert)", "TLS key (--tls-key)");
        let roots = Arc::new(load_roots("CA", &[org().join("tlsca/tlsca.example.com-cert.pem")]).unwrap());
        for auth in [ClientAuth::None, ClientAuth::Request, ClientAuth::Require(roots)] {
            let c = server_config(&o0.join("server.crt"), &o0.join("server.key"), names, auth, ALPN_H2).unwrap();
            assert_eq!(c.alpn_protocols, vec![b"h2".to_vec()]);
        }
        let e = server_config(&o0.join("server.key"), &o0.join("server.key"), names, ClientAuth::None, ALPN_H2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-cert") && e.contains("server.key") && e.contains("no CERTIFICATE"), "{e}");
        let e = server_config(&o0.join("server.crt"), &o0.join("nope.key"), names, ClientAuth::None, ALPN_H2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reading TLS key (--tls-key)") && e.contains("nope.key"), "{e}");
        let o1 = org().join("orderers/orderer1.example.com/tls");
        let e = server_config(&o0.join("server.crt"), &o1.join("server.key"), names, ClientAuth::None, ALPN_H2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("with key") && e.contains("orderer1.example.com/tls/server.key"), "{e}");
        let e = load_roots("TLS root CA (--tls-root-ca)", &[o0.join("server.key")]).unwrap_err().to_string();
        assert!(e.contains("--tls-root-ca") && e.contains("no CERTIFICATE"), "{e}");
    }

    #[test]
    fn same_key_certificates() {
        let der = |p: PathBuf| load_certs("t", &p).unwrap().remove(0);
        let a = der(org().join("orderers/orderer0.example.com/tls/server.crt"));
        let b = der(org().join("orderers/orderer1.example.com/tls/server.crt"));
        assert_eq!(public_key_info(&a).unwrap(), public_key_info(&a).unwrap());
        assert_ne!(public_key_info(&a).unwrap(), public_key_info(&b).unwrap());
        assert!(public_key_info(b"\x30\x00").is_err());
    }
}
