//! TLS of the operations endpoint, as Fabric's `Operations.TLS`: the
//! server's certificate and key, and client certificates verified against
//! `ClientRootCAs` when a client presents one (Go's
//! `VerifyClientCertIfGiven`), or required (`RequireAndVerifyClientCert`)
//! with `ClientAuthRequired`. Reads the PEM files it is given.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use crate::config::settings::Tls;
use crate::tls::{TlsError, load_certs, load_key};

/// The server config of the operations endpoint.
pub fn server_config(t: &Tls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs("operations TLS certificate", &t.certificate)?;
    let key = load_key("operations TLS key", &t.private_key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?;
    let builder = if t.client_root_cas.is_empty() && !t.client_auth_required {
        builder.with_no_client_auth()
    } else {
        let roots = crate::tls::load_roots("operations TLS client root CA", &t.client_root_cas)?;
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let v = if t.client_auth_required { v } else { v.allow_unauthenticated() };
        builder.with_client_cert_verifier(v.build()?)
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|source| TlsError::CertKey {
        cert: t.certificate.clone(),
        key: t.private_key.clone(),
        source,
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
