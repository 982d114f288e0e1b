//! The node's signing identity, read from a Fabric MSP folder
//! (`signcerts/`, `keystore/`): ECDSA P-256 over SHA-256, DER, low-S, with
//! creator = `SerializedIdentity{mspid, PEM cert}`. Also generates the
//! development identity of the embedded default. May touch only the MSP
//! folder it is given.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use prost::Message;
use rand_core::{OsRng, RngCore};

use crate::proto::common::SignatureHeader;
use crate::proto::msp::SerializedIdentity;

/// Largest message `sign` accepts (a plugin may ask to sign arbitrary bytes).
pub const MAX_SIGN_BYTES: usize = 16 * 1024 * 1024;

/// Errors loading an identity or signing.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{dir}: no {what} found (expected a PEM file in {dir}/{sub}/)")]
    Missing { dir: PathBuf, sub: &'static str, what: &'static str },
    #[error("{path}: not a PKCS#8 P-256 private key in PEM: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path}: not a P-256 X.509 certificate in PEM: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("{path}: the private key does not match the certificate's public key")]
    Mismatch { path: PathBuf },
    #[error("message of {len} bytes is over the signing limit of {MAX_SIGN_BYTES} bytes")]
    TooLarge { len: usize },
    #[error("generating the development identity: {0}")]
    Generate(String),
}

/// A signing identity: an MSP id, a certificate and its private key.
#[derive(Clone)]
pub struct Signer {
    mspid: String,
    key: SigningKey,
    cert_pem: Bytes,
    creator: Bytes,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("mspid", &self.mspid).finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads `dir/signcerts/*.pem` and `dir/keystore/*` (the first file of
    /// each, as Fabric's bccsp does for a single-identity MSP).
    pub fn from_msp_dir(dir: &Path, mspid: &str) -> Result<Signer, SignerError> {
        let cert_path = first_file(dir, "signcerts", "signing certificate")?;
        let key_path = first_file(dir, "keystore", "private key")?;
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let key_str = String::from_utf8_lossy(&key_pem);
        let key = SigningKey::from_pkcs8_pem(&key_str)
            .map_err(|e| SignerError::Key { path: key_path.clone(), reason: e.to_string() })?;
        let cert_key = cert_public_key(&cert_pem).map_err(|reason| SignerError::Cert { path: cert_path, reason })?;
        if &cert_key != key.verifying_key() {
            return Err(SignerError::Mismatch { path: key_path });
        }
        Ok(Signer::new(mspid, key, cert_pem.into()))
    }

    /// An identity from its parts.
    pub fn new(mspid: &str, key: SigningKey, cert_pem: Bytes) -> Signer {
        let creator =
            SerializedIdentity { mspid: mspid.to_string(), id_bytes: cert_pem.clone() }.encode_to_vec().into();
        Signer { mspid: mspid.to_string(), key, cert_pem, creator }
    }

    /// The MSP id.
    pub fn mspid(&self) -> &str {
        &self.mspid
    }

    /// The certificate (PEM).
    pub fn cert_pem(&self) -> &Bytes {
        &self.cert_pem
    }

    /// Marshalled `SerializedIdentity` (the `creator` of signature headers).
    pub fn creator(&self) -> &Bytes {
        &self.creator
    }

    /// The public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    /// ECDSA P-256/SHA-256 signature of `msg`, DER, low-S.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignerError> {
        if msg.len() > MAX_SIGN_BYTES {
            return Err(SignerError::TooLarge { len: msg.len() });
        }
        let sig: Signature = self.key.sign(msg);
        let sig = sig.normalize_s().unwrap_or(sig);
        Ok(sig.to_der().as_bytes().to_vec())
    }

    /// A `SignatureHeader` with this identity and a fresh 24-byte nonce.
    pub fn new_signature_header(&self) -> SignatureHeader {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        SignatureHeader { creator: self.creator.clone(), nonce: Bytes::copy_from_slice(&nonce) }
    }
}

/// The P-256 public key of a PEM (or DER) X.509 certificate.
pub fn cert_public_key(cert: &[u8]) -> Result<VerifyingKey, String> {
    use x509_cert::der::{Decode, DecodePem, Encode};
    let cert = if cert.starts_with(b"-----") {
        x509_cert::Certificate::from_pem(cert).map_err(|e| e.to_string())?
    } else {
        x509_cert::Certificate::from_der(cert).map_err(|e| e.to_string())?
    };
    let spki = cert.tbs_certificate.subject_public_key_info.to_der().map_err(|e| e.to_string())?;
    VerifyingKey::from_public_key_der(&spki).map_err(|e| format!("not a P-256 key: {e}"))
}

/// The MSP id and public key of a marshalled `SerializedIdentity`.
pub fn identity_key(creator: &[u8]) -> Result<(String, VerifyingKey), String> {
    let id = SerializedIdentity::decode(creator).map_err(|e| format!("creator is not a SerializedIdentity: {e}"))?;
    let key = cert_public_key(&id.id_bytes)?;
    Ok((id.mspid, key))
}

fn read(path: &Path) -> Result<Vec<u8>, SignerError> {
    fs::read(path).map_err(|source| SignerError::Io { path: path.to_path_buf(), source })
}

fn first_file(dir: &Path, sub: &'static str, what: &'static str) -> Result<PathBuf, SignerError> {
    let d = dir.join(sub);
    let rd = fs::read_dir(&d).map_err(|source| SignerError::Io { path: d.clone(), source })?;
    let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().next().ok_or(SignerError::Missing { dir: dir.to_path_buf(), sub, what })
}

/// Paths of the development identity generated by the embedded default.
#[derive(Debug, Clone)]
pub struct DevIdentity {
    /// MSP id of both identities.
    pub mspid: String,
    /// MSP folder of the orderer node (signs blocks).
    pub orderer_msp: PathBuf,
    /// MSP folder of a client (signs envelopes sent to the node).
    pub client_msp: PathBuf,
}

/// MSP id of the generated development identity.
pub const DEV_MSPID: &str = "DevMSP";

/// Creates (once) a development CA, an orderer identity and a client
/// identity under `root`, as Fabric MSP folders (`cacerts/`, `signcerts/`,
/// `keystore/priv_sk`, `config.yaml` with NodeOUs). Existing folders are
/// reused, so restarts keep the same identity.
pub fn ensure_dev_identity(root: &Path) -> Result<DevIdentity, SignerError> {
    let ident = DevIdentity {
        mspid: DEV_MSPID.to_string(),
        orderer_msp: root.join("orderer").join("msp"),
        client_msp: root.join("client").join("msp"),
    };
    if ident.orderer_msp.join("signcerts").exists() && ident.client_msp.join("signcerts").exists() {
        return Ok(ident);
    }
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        PKCS_ECDSA_P256_SHA256,
    };
    let g = |e: rcgen::Error| SignerError::Generate(e.to_string());
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(g)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "ca.dev.consenter-host");
    ca.distinguished_name.push(DnType::OrganizationName, "dev.consenter-host");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(g)?;
    let issuer = Issuer::new(ca, &ca_key);
    for (msp, cn, ou) in [
        (&ident.orderer_msp, "orderer0.dev.consenter-host", "orderer"),
        (&ident.client_msp, "client.dev.consenter-host", "client"),
    ] {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(g)?;
        let mut p = CertificateParams::new(vec![cn.to_string()]).map_err(g)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name.push(DnType::OrganizationalUnitName, ou);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &issuer).map_err(g)?;
        let w = |sub: &str, name: &str, data: &[u8]| -> Result<(), SignerError> {
            let d = msp.join(sub);
            fs::create_dir_all(&d).map_err(|source| SignerError::Io { path: d.clone(), source })?;
            let p = d.join(name);
            fs::write(&p, data).map_err(|source| SignerError::Io { path: p, source })
        };
        w("cacerts", "ca.pem", ca_cert.pem().as_bytes())?;
        w("keystore", "priv_sk", key.serialize_pem().as_bytes())?;
        w("signcerts", "cert.pem", cert.pem().as_bytes())?;
        w(
            "",
            "config.yaml",
            b"NodeOUs:\n  Enable: true\n  ClientOUIdentifier:\n    Certificate: cacerts/ca.pem\n    OrganizationalUnitIdentifier: client\n  PeerOUIdentifier:\n    Certificate: cacerts/ca.pem\n    OrganizationalUnitIdentifier: peer\n  AdminOUIdentifier:\n    Certificate: cacerts/ca.pem\n    OrganizationalUnitIdentifier: admin\n  OrdererOUIdentifier:\n    Certificate: cacerts/ca.pem\n    OrganizationalUnitIdentifier: orderer\n",
        )?;
    }
    Ok(ident)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn dev_identity_signs_low_s_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let id = ensure_dev_identity(dir.path()).unwrap();
        let s = Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap();
        for i in 0..64u32 {
            let msg = i.to_be_bytes();
            let der = s.sign(&msg).unwrap();
            let sig = Signature::from_der(&der).unwrap();
            assert!(sig.normalize_s().is_none(), "signature {i} is high-S");
            s.verifying_key().verify(&msg, &sig).unwrap();
        }
        let (mspid, key) = identity_key(s.creator()).unwrap();
        assert_eq!(mspid, DEV_MSPID);
        assert_eq!(&key, s.verifying_key());
        // A second call reuses the identity.
        let again = ensure_dev_identity(dir.path()).unwrap();
        let s2 = Signer::from_msp_dir(&again.orderer_msp, &again.mspid).unwrap();
        assert_eq!(s.cert_pem(), s2.cert_pem());
    }

    #[test]
    fn fabric_fixture_msp_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../../../shared/fixtures/fabric/crypto/ordererOrganizations/example.com/orderers/orderer0.example.com/msp",
        );
        let s = Signer::from_msp_dir(&dir, "OrdererMSP").unwrap();
        assert_eq!(s.mspid(), "OrdererMSP");
        let h = s.new_signature_header();
        assert_eq!(h.nonce.len(), 24);
        assert_eq!(&h.creator, s.creator());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = ensure_dev_identity(dir.path()).unwrap();
        fs::copy(id.client_msp.join("keystore/priv_sk"), id.orderer_msp.join("keystore/priv_sk")).unwrap();
        let err = Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap_err();
        assert!(matches!(err, SignerError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn oversize_message_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = ensure_dev_identity(dir.path()).unwrap();
        let s = Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap();
        assert!(matches!(s.sign(&vec![0; MAX_SIGN_BYTES + 1]), Err(SignerError::TooLarge { .. })));
    }
}
