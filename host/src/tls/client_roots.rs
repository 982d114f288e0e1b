//! Client certificates required on the gRPC port, as Fabric's orderer
//! requires them (General.TLS.ClientAuthRequired): a client's certificate
//! must chain to one of the configured client root CAs
//! (`--tls-client-root-ca`, ClientRootCAs) or to a TLS CA of an
//! organization of one of the node's channels (their MSPs'
//! `tls_root_certs` and `tls_intermediate_certs`), which Fabric adds to
//! its listener whenever a channel's config changes. The channels' CAs
//! are read from a source the node sets once it runs, and the verifier is
//! rebuilt when they change (checked at each handshake: handshakes are
//! rare next to the messages a connection carries). Opens nothing.

use std::sync::{Arc, OnceLock, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Where the TLS CAs (DER) of the node's channels come from.
pub type CaSource = Box<dyn Fn() -> Vec<Vec<u8>> + Send + Sync>;

/// The verifier in force and the channel CAs it was built from.
struct Current {
    channel_cas: Vec<Vec<u8>>,
    /// None: no trust anchor at all (every client certificate refused).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// A client-certificate verifier trusting fixed roots plus the TLS CAs of
/// the node's channels.
pub struct ChannelClientRoots {
    fixed: Vec<CertificateDer<'static>>,
    source: OnceLock<CaSource>,
    current: RwLock<Current>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for ChannelClientRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelClientRoots").field("fixed", &self.fixed.len()).finish_non_exhaustive()
    }
}

impl ChannelClientRoots {
    /// A verifier trusting `fixed` (the configured client root CAs) until
    /// [`ChannelClientRoots::set_source`] adds the channels' CAs.
    pub fn new(fixed: Vec<CertificateDer<'static>>) -> Arc<ChannelClientRoots> {
        let provider = super::provider();
        let verifier = build(&fixed, &[], &provider);
        Arc::new(ChannelClientRoots {
            fixed,
            source: OnceLock::new(),
            current: RwLock::new(Current { channel_cas: Vec::new(), verifier }),
            provider,
        })
    }

    /// [`ChannelClientRoots::new`] with the CAs of `files` (PEM), each
    /// checked as a trust anchor first so that an error names the file;
    /// `what` names the setting in errors (e.g. "TLS root CA
    /// (--tls-root-ca)"). No file: only the channels' CAs are trusted.
    pub fn from_files(
        what: &'static str,
        files: &[std::path::PathBuf],
    ) -> Result<Arc<ChannelClientRoots>, super::TlsError> {
        super::load_roots(what, files)?;
        let mut fixed = Vec::new();
        for f in files {
            fixed.extend(super::load_certs(what, f)?);
        }
        Ok(ChannelClientRoots::new(fixed))
    }

    /// Sets where the channels' TLS CAs come from (once; later calls are
    /// ignored).
    pub fn set_source(&self, source: CaSource) {
        let _ = self.source.set(source);
    }

    /// The verifier for the CAs in force now, rebuilt if the channels' CAs
    /// changed.
    fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let mut cas = self.source.get().map(|s| s()).unwrap_or_default();
        cas.sort();
        cas.dedup();
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.channel_cas == cas {
                return cur.verifier.clone();
            }
        }
        let verifier = build(&self.fixed, &cas, &self.provider);
        tracing::info!(
            channel_cas = cas.len(),
            fixed = self.fixed.len(),
            "gRPC: client root CAs updated from the channels' organizations"
        );
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        *cur = Current { channel_cas: cas, verifier: verifier.clone() };
        verifier
    }
}

/// WebPKI client verification against `fixed` and `channel` (DER); None
/// if none of them is a usable trust anchor.
fn build(
    fixed: &[CertificateDer<'static>],
    channel: &[Vec<u8>],
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Option<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for c in fixed.iter().cloned().chain(channel.iter().map(|d| CertificateDer::from(d.clone()))) {
        if let Err(e) = roots.add(c) {
            tracing::warn!(error = %e, "gRPC: a client root CA is no usable trust anchor; skipped");
        }
    }
    if roots.is_empty() {
        return None;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tracing::warn!(error = %e, "gRPC: building the client certificate verifier"))
        .ok()
}

impl ClientCertVerifier for ChannelClientRoots {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints are optional: clients pick their certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.verifier() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    fn crypto(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric/crypto").join(p)
    }

    fn cert(p: &str) -> CertificateDer<'static> {
        super::super::load_certs("test certificate", &crypto(p)).unwrap().remove(0)
    }

    #[test]
    fn a_channels_tls_ca_is_trusted_while_a_channel_names_it() {
        let orderer_ca = cert("ordererOrganizations/example.com/tlsca/tlsca.example.com-cert.pem");
        let org1_ca = cert("peerOrganizations/org1.example.com/tlsca/tlsca.org1.example.com-cert.pem");
        let user = cert("peerOrganizations/org1.example.com/users/User1@org1.example.com/tls/client.crt");
        let admin = cert("ordererOrganizations/example.com/users/Admin@example.com/tls/client.crt");
        let now = UnixTime::now();
        let v = ChannelClientRoots::new(vec![orderer_ca]);
        assert!(v.client_auth_mandatory());
        assert!(v.verify_client_cert(&admin, &[], now).is_ok(), "the configured root");
        assert!(v.verify_client_cert(&user, &[], now).is_err(), "no channel names Org1's TLS CA yet");
        let cas: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let source = cas.clone();
        v.set_source(Box::new(move || source.lock().unwrap().clone()));
        assert!(v.verify_client_cert(&user, &[], now).is_err());
        cas.lock().unwrap().push(org1_ca.to_vec());
        assert!(v.verify_client_cert(&user, &[], now).is_ok(), "a channel names Org1's TLS CA");
        assert!(v.verify_client_cert(&admin, &[], now).is_ok());
        cas.lock().unwrap().clear();
        assert!(v.verify_client_cert(&user, &[], now).is_err(), "the channel is gone");
        // No trust anchor at all: every certificate is refused.
        let none = ChannelClientRoots::new(Vec::new());
        assert!(none.verify_client_cert(&admin, &[], now).is_err());
    }
}
