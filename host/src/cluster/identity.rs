//! Who the transport is as a TLS client and whom it trusts: the node's
//! client certificate and key (Fabric's General.Cluster.ClientCertificate,
//! by default the general TLS certificate), the root CAs a member's server
//! certificate must chain to (the node's own RootCAs and, per channel,
//! its orderer organizations' TLS CAs), and the per-member client config that also
//! pins the member's server certificate (its public key must be the one
//! in the channel config, as Fabric's cluster dialer checks). The
//! transport's limits live here too. Parses PEM; opens nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::tls::{self, TlsError};

/// The transport's TLS client identity: certificate chain and key, and
/// the root CAs of the members' server certificates.
#[derive(Clone)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("roots", &self.roots.len()).finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// From PEM text: the certificate (chain), its key, and one PEM text
    /// per root CA file (each may hold several certificates).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], root_cas_pem: &[Vec<u8>]) -> Result<ClientIdentity, TlsError> {
        let label = Path::new("(PEM in memory)");
        let chain = tls::certs_from_pem("cluster client certificate", label, cert_pem)?;
        let key = tls::key_from_pem("cluster client key", label, key_pem)?;
        let mut roots = RootCertStore::empty();
        for pem in root_cas_pem {
            let certs = tls::certs_from_pem("cluster root CA", label, pem)?;
            tls::add_roots(&mut roots, "cluster root CA", label, certs)?;
        }
        Self::checked(chain, key, roots, label, label)
    }

    /// From PEM files (e.g. `--tls-cert`, `--tls-key`, `--tls-root-ca`).
    pub fn from_files(cert: &Path, key: &Path, root_cas: &[PathBuf]) -> Result<ClientIdentity, TlsError> {
        let chain = tls::load_certs("cluster client certificate", cert)?;
        let key_der = tls::load_key("cluster client key", key)?;
        let roots = tls::load_roots("TLS root CA (--tls-root-ca)", root_cas)?;
        Self::checked(chain, key_der, roots, cert, key)
    }

    fn checked(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: RootCertStore,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<ClientIdentity, TlsError> {
        // Build a config once, so a key that is not the certificate's is
        // refused here rather than at the first connection.
        tls::client_config(RootCertStore::empty(), Some((chain.clone(), key.clone_key(), cert_path, key_path)), b"h2")?;
        Ok(ClientIdentity { chain, key: Arc::new(key), roots: Arc::new(roots) })
    }

    /// The leaf certificate (DER) this identity presents.
    pub fn cert_der(&self) -> &[u8] {
        self.chain.first().map(|c| c.as_ref()).unwrap_or_default()
    }

    /// The root CAs server certificates must chain to.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// This identity also trusting `cas` (DER; e.g. the TLS CAs of a
    /// channel's orderer organizations, as Fabric's cluster trusts them).
    /// A certificate that is no usable trust anchor is skipped with a
    /// warning.
    pub fn with_roots(&self, cas: &[Vec<u8>]) -> ClientIdentity {
        if cas.is_empty() {
            return self.clone();
        }
        let mut roots = (*self.roots).clone();
        for der in cas {
            if let Err(e) = roots.add(CertificateDer::from(der.clone())) {
                tracing::warn!(error = %e, "cluster: a channel's TLS CA certificate is no usable trust anchor; skipped");
            }
        }
        ClientIdentity { chain: self.chain.clone(), key: self.key.clone(), roots: Arc::new(roots) }
    }

    /// A client config that presents this identity and verifies a server
    /// against the root CAs; with `pin`, the server's leaf must also carry
    /// that public key (SubjectPublicKeyInfo DER).
    pub fn client_config(&self, pin: Option<Vec<u8>>) -> Result<Arc<ClientConfig>, TlsError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), tls::provider())
            .build()
            .map_err(TlsError::ServerVerifier)?;
        let verifier: Arc<dyn ServerCertVerifier> = match pin {
            Some(spki) => Arc::new(PinnedServer { webpki, spki }),
            None => webpki,
        };
        let mut config = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocol)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::CertKey { cert: PathBuf::new(), key: PathBuf::new(), source })?;
        config.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// WebPKI verification (chain to the roots, name, validity), then the
/// member's pinned public key.
#[derive(Debug)]
struct PinnedServer {
    webpki: Arc<WebPkiServerVerifier>,
    spki: Vec<u8>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        match tls::public_key_info(end_entity) {
            Ok(spki) if spki == self.spki => Ok(ok),
            _ => Err(rustls::Error::General(format!(
                "the server certificate presented by {server_name:?} is not the member's server_tls_cert (another public key)"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Bounds of the transport.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    /// Messages queued per (channel, member) before sends are dropped
    /// (Fabric's General.Cluster.SendBufferSize, default 100).
    pub queue_depth: usize,
    /// Forwarded envelopes (SubmitRequests) queued per (channel, member)
    /// on top of `queue_depth`: a follower forwards every Broadcast to the
    /// leader, and a burst of them must not be dropped at raft's depth
    /// (Fabric's follower blocks on the stream instead; ours may not block
    /// the chain). Envelopes are at most AbsoluteMaxBytes each.
    pub submit_queue_depth: usize,
    /// Largest payload (a consensus message, or a forwarded envelope)
    /// sent or accepted, in bytes (Fabric's default gRPC limit: 100 MiB).
    pub max_message_bytes: usize,
    /// First pause before reconnecting to a member.
    pub backoff_initial: Duration,
    /// Longest pause (the pause doubles after every failed attempt).
    pub backoff_max: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            queue_depth: 100,
            submit_queue_depth: 10_000,
            max_message_bytes: 100 * 1024 * 1024,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Room above [`TransportLimits::max_message_bytes`] for a message's own
/// framing: a gRPC frame up to this much larger is read and refused (the
/// stream stays up); a larger frame ends the stream.
pub const FRAME_MARGIN: usize = 1024 * 1024;
