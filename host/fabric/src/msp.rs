//! Fabric's X.509 membership service providers (MSPs) of a channel: which
//! certificates are members of which organization, with which role, and the
//! verification of their signatures.
//!
//! An [`Msp`] is built from a `FabricMSPConfig` (roots, intermediates,
//! admins, CRLs, NodeOUs); an [`MspManager`] holds every MSP of a channel
//! config and turns a marshalled `SerializedIdentity` into a validated
//! [`Identity`], caching the result (one hash lookup per envelope on the
//! Broadcast path). Identity validation follows Fabric's `bccspmsp` (v1.4.3+
//! behaviour, the one of V2_0 channels): the certificate must chain to a root
//! of the MSP (via intermediates), its issuer must be a leaf of the
//! certification tree, it must not be a CA, not revoked, and with NodeOUs on
//! it must carry exactly one of the client/peer/admin/orderer OUs.
//! May touch nothing: pure, no I/O.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prost::Message;
use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::asn1::UintRef;
use x509_cert::der::{Decode, Encode, Header, Reader, SliceReader, Tag};

use crate::block::hex;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::name::Name;

use crate::proto::common::ConfigGroup;
use crate::proto::msp::{FabricMspConfig, FabricOuIdentifier, MspConfig, SerializedIdentity};

/// `MSPConfig.type` of an X.509 MSP.
pub const MSP_TYPE_FABRIC: i32 = 0;
/// `MSPConfig.type` of an Idemix MSP (not supported: skipped with a warning).
pub const MSP_TYPE_IDEMIX: i32 = 1;
/// Default capacity of the validated-identity cache.
pub const IDENTITY_CACHE_CAPACITY: usize = 4096;

const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

/// Order n of P-256 (big-endian).
const P256_ORDER: [u8; 32] = hex32("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
/// Order n of P-384 (big-endian).
const P384_ORDER: [u8; 48] =
    hex48("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973");
/// n/2 of P-256: a signature's S must be at most this (Fabric's low-S rule).
pub const P256_HALF_ORDER: [u8; 32] = half(P256_ORDER);
/// n/2 of P-384.
pub const P384_HALF_ORDER: [u8; 48] = half(P384_ORDER);

/// Errors building an MSP or an MSP manager from configuration.
#[derive(Debug, thiserror::Error)]
pub enum MspError {
    #[error("MSP value of config group {group}: {reason}")]
    Config { group: String, reason: String },
    #[error("MSP {mspid}: {what} #{index}: {reason}")]
    Cert { mspid: String, what: &'static str, index: usize, reason: String },
    #[error("MSP {mspid}: {reason}")]
    Setup { mspid: String, reason: String },
    #[error("MSP {mspid} is defined twice with different configurations (in {first} and {second})")]
    Conflict { mspid: String, first: String, second: String },
}

/// Why a certificate is not a valid identity of its MSP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("a CA certificate (basic constraints CA=true) cannot be used as an identity")]
    IsCa,
    #[error("no root or intermediate certificate of the MSP issued it")]
    UntrustedIssuer,
    #[error("its issuer {issuer} is not a leaf of the MSP's certification tree")]
    IssuerNotLeaf { issuer: String },
    #[error("expired at {not_after:?}")]
    Expired { not_after: SystemTime },
    #[error("not valid before {not_before:?}")]
    NotYetValid { not_before: SystemTime },
    #[error("CA certificate {ca} of its chain is outside its validity period")]
    CaNotValid { ca: String },
    #[error("revoked (serial {serial})")]
    Revoked { serial: String },
    #[error("CA certificate {ca} of its chain is revoked")]
    CaRevoked { ca: String },
    #[error("none of its organizational units {ous:?} is one of the MSP's OU identifiers")]
    OuNotRecognized { ous: Vec<String> },
    #[error("NodeOUs: it carries none of the client/peer/admin/orderer OUs (OUs: {ous:?})")]
    NoNodeOu { ous: Vec<String> },
    #[error("NodeOUs: it carries more than one of the client/peer/admin/orderer OUs (OUs: {ous:?})")]
    SeveralNodeOus { ous: Vec<String> },
    #[error("NodeOUs: OU {ou} must be certified by {expected}, not by its issuer")]
    NodeOuCertifier { ou: String, expected: String },
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
}

/// Errors deserializing or validating an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity is not a SerializedIdentity: {0}")]
    Decode(String),
    #[error("identity of MSP {mspid}: the MSP is not one of the channel's MSPs")]
    UnknownMsp { mspid: String },
    #[error("identity of MSP {mspid}: not a PEM X.509 certificate: {reason}")]
    Cert { mspid: String, reason: String },
    #[error("identity {subject} of MSP {mspid} is not valid: {reason}")]
    Invalid { mspid: String, subject: String, reason: InvalidReason },
}

/// Errors verifying a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature by {subject} ({mspid}) is not a DER ECDSA signature")]
    Malformed { mspid: String, subject: String },
    #[error("signature by {subject} ({mspid}) has a high S value (Fabric requires S <= n/2)")]
    HighS { mspid: String, subject: String },
    #[error("signature by {subject} ({mspid}) does not verify")]
    Invalid { mspid: String, subject: String },
}

/// The roles of an identity in its MSP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    /// Carries the client OU (NodeOUs on).
    pub client: bool,
    /// Carries the peer OU (NodeOUs on).
    pub peer: bool,
    /// Carries the admin OU (NodeOUs on).
    pub admin: bool,
    /// Carries the orderer OU (NodeOUs on).
    pub orderer: bool,
    /// An admin of the MSP: listed in `admins`, or carrying the admin OU.
    pub is_admin: bool,
}

/// A validated identity: a certificate that is a member of its MSP.
pub struct Identity {
    mspid: String,
    subject: String,
    roles: Roles,
    cert_der: Vec<u8>,
    key: UnparsedPublicKey<Box<[u8]>>,
    half_order: &'static [u8],
    not_after: SystemTime,
    id: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("mspid", &self.mspid)
            .field("subject", &self.subject)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The MSP id.
    pub fn mspid(&self) -> &str {
        &self.mspid
    }
    /// The certificate's subject (RFC 4514), for messages.
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// The roles of the identity.
    pub fn roles(&self) -> Roles {
        self.roles
    }
    /// The certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }
    /// When the certificate (or a CA of its chain) expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// SHA-256 of the certificate DER (Fabric's identity id); with the MSP id
    /// it identifies the identity.
    pub fn id(&self) -> &[u8; 32] {
        &self.id
    }
    /// Whether two identities are the same (MSP id and certificate).
    pub fn same_as(&self, other: &Identity) -> bool {
        self.id == other.id && self.mspid == other.mspid
    }

    /// Verifies an ECDSA signature (DER) of `msg` by this identity, over
    /// SHA-256 as Fabric's SHA2 hash family does, refusing high-S signatures
    /// as Fabric does.
    pub fn verify(&self, msg: &[u8], der_sig: &[u8]) -> Result<(), SignatureError> {
        let Some(s) = der_signature_s(der_sig) else {
            return Err(SignatureError::Malformed { mspid: self.mspid.clone(), subject: self.subject.clone() });
        };
        if !be_le(s, self.half_order) {
            return Err(SignatureError::HighS { mspid: self.mspid.clone(), subject: self.subject.clone() });
        }
        self.key
            .verify(msg, der_sig)
            .map_err(|_| SignatureError::Invalid { mspid: self.mspid.clone(), subject: self.subject.clone() })
    }
}

/// A public key able to verify certificate and CRL signatures.
#[derive(Debug, Clone)]
enum IssuerKey {
    Ec { curve: Curve, point: Vec<u8> },
    Rsa { der: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// A root or intermediate CA of an MSP.
#[derive(Debug)]
struct Ca {
    der: Vec<u8>,
    subject_der: Vec<u8>,
    subject: String,
    serial: Vec<u8>,
    key: IssuerKey,
    not_before: SystemTime,
    not_after: SystemTime,
    /// Index of the issuer (None for a root).
    parent: Option<usize>,
    /// Issued one of the intermediates: identities it issues are refused.
    internal: bool,
    /// Serials (leading zeros stripped) revoked by a CRL this CA signed.
    revoked: Vec<Vec<u8>>,
}

/// An OU identifier: the OU name and, optionally, the CA that must have
/// issued the identity.
#[derive(Debug, Clone)]
struct OuId {
    ou: String,
    ca: Option<usize>,
}

#[derive(Debug, Default)]
struct NodeOus {
    client: Option<OuId>,
    peer: Option<OuId>,
    admin: Option<OuId>,
    orderer: Option<OuId>,
}

/// One X.509 MSP.
#[derive(Debug)]
pub struct Msp {
    name: String,
    cas: Vec<Ca>,
    admins: Vec<Vec<u8>>,
    ou_identifiers: Vec<OuId>,
    node_ous: Option<NodeOus>,
    /// Its TLS root and intermediate CA certificates (DER): whom the
    /// organization's TLS certificates chain to.
    tls_cas: Vec<Vec<u8>>,
}

impl Msp {
    /// Builds an MSP from its configuration.
    pub fn from_config(conf: &FabricMspConfig) -> Result<Msp, MspError> {
        let mspid = conf.name.clone();
        if mspid.is_empty() {
            return Err(MspError::Setup { mspid, reason: "the MSP has no name".into() });
        }
        let cert_err = |what: &'static str, index: usize, reason: String| MspError::Cert {
            mspid: mspid.clone(),
            what,
            index,
            reason,
        };
        if conf.root_certs.is_empty() {
            return Err(MspError::Setup { mspid, reason: "no root certificate".into() });
        }
        let mut cas = Vec::new();
        let n_roots = conf.root_certs.len();
        for (what, list) in
            [("root certificate", &conf.root_certs), ("intermediate certificate", &conf.intermediate_certs)]
        {
            for (i, pem) in list.iter().enumerate() {
                let (der, cert) = parse_cert(pem).map_err(|r| cert_err(what, i, r))?;
                if !is_ca(&cert) {
                    return Err(cert_err(what, i, "not a CA certificate (basic constraints CA=true missing)".into()));
                }
                let tbs = &cert.tbs_certificate;
                cas.push(Ca {
                    subject_der: tbs.subject.to_der().map_err(|e| cert_err(what, i, e.to_string()))?,
                    subject: tbs.subject.to_string(),
                    serial: strip_zeros(tbs.serial_number.as_bytes()).to_vec(),
                    key: issuer_key(&cert).map_err(|r| cert_err(what, i, r))?,
                    not_before: tbs.validity.not_before.to_system_time(),
                    not_after: tbs.validity.not_after.to_system_time(),
                    parent: None,
                    internal: false,
                    revoked: Vec::new(),
                    der,
                });
            }
        }
        // Chain every intermediate to its issuer; the chain must end at a root.
        for i in n_roots..cas.len() {
            let (_, cert) =
                parse_der_cert(&cas[i].der).map_err(|r| cert_err("intermediate certificate", i - n_roots, r))?;
            let parent = find_issuer(&cas, &cas[i].der, &cert, Some(i)).ok_or_else(|| {
                cert_err(
                    "intermediate certificate",
                    i - n_roots,
                    format!("{}: no root or intermediate certificate of the MSP issued it", cas[i].subject),
                )
            })?;
            cas[i].parent = Some(parent);
        }
        for i in n_roots..cas.len() {
            let mut cur = i;
            let mut steps = 0;
            while let Some(p) = cas[cur].parent {
                cur = p;
                steps += 1;
                if steps > cas.len() {
                    return Err(cert_err(
                        "intermediate certificate",
                        i - n_roots,
                        "certification chain loops without reaching a root".into(),
                    ));
                }
            }
            if let Some(p) = cas[i].parent {
                cas[p].internal = true;
            }
        }
        for (i, crl) in conf.revocation_list.iter().enumerate() {
            add_crl(&mut cas, crl).map_err(|r| cert_err("revocation list", i, r))?;
        }
        let mut admins = Vec::new();
        for (i, pem) in conf.admins.iter().enumerate() {
            let (der, _) = parse_cert(pem).map_err(|r| cert_err("admin certificate", i, r))?;
            admins.push(der);
        }
        let ou_id = |what: &'static str, id: &FabricOuIdentifier| -> Result<OuId, MspError> {
            let ca = if id.certificate.is_empty() {
                None
            } else {
                let (der, _) = parse_cert(&id.certificate).map_err(|r| cert_err(what, 0, r))?;
                Some(cas.iter().position(|c| c.der == der).ok_or_else(|| {
                    cert_err(
                        what,
                        0,
                        "its certificate is not one of the MSP's root or intermediate certificates".into(),
                    )
                })?)
            };
            Ok(OuId { ou: id.organizational_unit_identifier.clone(), ca })
        };
        let mut ou_identifiers = Vec::new();
        for id in &conf.organizational_unit_identifiers {
            if id.certificate.is_empty() {
                return Err(MspError::Setup {
                    mspid: mspid.clone(),
                    reason: format!("OU identifier {} has no certificate", id.organizational_unit_identifier),
                });
            }
            ou_identifiers.push(ou_id("OU identifier", id)?);
        }
        let node_ous = match &conf.fabric_node_ous {
            Some(n) if n.enable => {
                let get = |what, o: &Option<FabricOuIdentifier>| o.as_ref().map(|o| ou_id(what, o)).transpose();
                Some(NodeOus {
                    client: get("client OU identifier", &n.client_ou_identifier)?,
                    peer: get("peer OU identifier", &n.peer_ou_identifier)?,
                    admin: get("admin OU identifier", &n.admin_ou_identifier)?,
                    orderer: get("orderer OU identifier", &n.orderer_ou_identifier)?,
                })
            }
            _ => None,
        };
        // Fabric's setupTLSCAs: every TLS root and intermediate
        // certificate must parse.
        let mut tls_cas = Vec::new();
        for (what, list) in [
            ("TLS root certificate", &conf.tls_root_certs),
            ("TLS intermediate certificate", &conf.tls_intermediate_certs),
        ] {
            for (i, pem) in list.iter().enumerate() {
                tls_cas.push(parse_cert(pem).map_err(|r| cert_err(what, i, r))?.0);
            }
        }
        Ok(Msp { name: mspid, cas, admins, ou_identifiers, node_ous, tls_cas })
    }

    /// The MSP id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its TLS root and intermediate CA certificates (DER), as its config
    /// names them (`tls_root_certs`, then `tls_intermediate_certs`).
    pub fn tls_cas(&self) -> &[Vec<u8>] {
        &self.tls_cas
    }

    /// Whether NodeOUs classification is on.
    pub fn node_ous_enabled(&self) -> bool {
        self.node_ous.is_some()
    }

    /// Validates the certificate of `id_bytes` (PEM) as an identity of this
    /// MSP at time `now`. The identity's `not_after` is the earliest of its
    /// chain (when a cache must stop trusting it).
    pub fn validate(&self, id_bytes: &[u8], now: SystemTime) -> Result<Identity, IdentityError> {
        let mspid = &self.name;
        let (der, cert) =
            parse_cert(id_bytes).map_err(|reason| IdentityError::Cert { mspid: mspid.clone(), reason })?;
        let tbs = &cert.tbs_certificate;
        let subject = tbs.subject.to_string();
        let invalid =
            |reason: InvalidReason| IdentityError::Invalid { mspid: mspid.clone(), subject: subject.clone(), reason };
        if is_ca(&cert) {
            return Err(invalid(InvalidReason::IsCa));
        }
        let issuer =
            find_issuer(&self.cas, &der, &cert, None).ok_or_else(|| invalid(InvalidReason::UntrustedIssuer))?;
        if self.cas[issuer].internal {
            return Err(invalid(InvalidReason::IssuerNotLeaf { issuer: self.cas[issuer].subject.clone() }));
        }
        let not_before = tbs.validity.not_before.to_system_time();
        let mut not_after = tbs.validity.not_after.to_system_time();
        if now < not_before {
            return Err(invalid(InvalidReason::NotYetValid { not_before }));
        }
        if now > not_after {
            return Err(invalid(InvalidReason::Expired { not_after }));
        }
        let serial = strip_zeros(tbs.serial_number.as_bytes());
        if self.cas[issuer].revoked.iter().any(|r| r == serial) {
            return Err(invalid(InvalidReason::Revoked { serial: hex(serial) }));
        }
        let mut cur = Some(issuer);
        while let Some(c) = cur {
            let ca = &self.cas[c];
            if now < ca.not_before || now > ca.not_after {
                return Err(invalid(InvalidReason::CaNotValid { ca: ca.subject.clone() }));
            }
            not_after = not_after.min(ca.not_after);
            if let Some(p) = ca.parent
                && self.cas[p].revoked.contains(&ca.serial)
            {
                return Err(invalid(InvalidReason::CaRevoked { ca: ca.subject.clone() }));
            }
            cur = ca.parent;
        }
        let ous = subject_ous(&tbs.subject);
        if !self.ou_identifiers.is_empty()
            && !self.ou_identifiers.iter().any(|o| o.ca == Some(issuer) && ous.contains(&o.ou))
        {
            return Err(invalid(InvalidReason::OuNotRecognized { ous }));
        }
        let mut roles = Roles::default();
        if let Some(n) = &self.node_ous {
            let mut count = 0;
            for ou in &ous {
                for (slot, flag) in [
                    (&n.client, &mut roles.client),
                    (&n.peer, &mut roles.peer),
                    (&n.admin, &mut roles.admin),
                    (&n.orderer, &mut roles.orderer),
                ] {
                    let Some(id) = slot else { continue };
                    if id.ou != *ou {
                        continue;
                    }
                    if let Some(ca) = id.ca
                        && ca != issuer
                    {
                        return Err(invalid(InvalidReason::NodeOuCertifier {
                            ou: ou.clone(),
                            expected: self.cas[ca].subject.clone(),
                        }));
                    }
                    *flag = true;
                    count += 1;
                    break;
                }
            }
            if count == 0 {
                return Err(invalid(InvalidReason::NoNodeOu { ous }));
            }
            if count > 1 {
                return Err(invalid(InvalidReason::SeveralNodeOus { ous }));
            }
        }
        roles.is_admin = roles.admin || self.admins.contains(&der);
        let spki = &tbs.subject_public_key_info;
        let point = spki.subject_public_key.raw_bytes();
        let (alg, half_order): (&'static dyn VerificationAlgorithm, &'static [u8]) =
            match issuer_key(&cert).map_err(|r| invalid(InvalidReason::UnsupportedKey(r)))? {
                IssuerKey::Ec { curve: Curve::P256, .. } => (&sig::ECDSA_P256_SHA256_ASN1, &P256_HALF_ORDER),
                IssuerKey::Ec { curve: Curve::P384, .. } => (&sig::ECDSA_P384_SHA256_ASN1, &P384_HALF_ORDER),
                IssuerKey::Rsa { .. } => {
                    return Err(invalid(InvalidReason::UnsupportedKey("RSA identities are not supported".into())));
                }
            };
        let id: [u8; 32] = Sha256::digest(&der).into();
        Ok(Identity {
            mspid: mspid.clone(),
            subject,
            roles,
            key: UnparsedPublicKey::new(alg, point.to_vec().into_boxed_slice()),
            half_order,
            cert_der: der,
            not_after,
            id,
        })
    }
}

/// The MSPs of a channel, with a cache of validated identities.
pub struct MspManager {
    msps: HashMap<String, Msp>,
    cache: IdentityCache,
}

impl std::fmt::Debug for MspManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.msps.keys().collect();
        ids.sort();
        f.debug_struct("MspManager").field("msps", &ids).finish_non_exhaustive()
    }
}

impl MspManager {
    /// A manager of `msps` (MSP ids must be distinct).
    pub fn new(msps: Vec<Msp>) -> Result<MspManager, MspError> {
        let mut map = HashMap::new();
        for m in msps {
            if map.contains_key(&m.name) {
                return Err(MspError::Setup { mspid: m.name.clone(), reason: "the MSP is given twice".into() });
            }
            map.insert(m.name.clone(), m);
        }
        Ok(MspManager { msps: map, cache: IdentityCache::new(IDENTITY_CACHE_CAPACITY) })
    }

    /// Collects the `MSP` value of every group of a channel config tree
    /// (`Channel/Orderer/<org>`, `Channel/Application/<org>`,
    /// `Channel/Consortiums/<consortium>/<org>`). The same MSP may appear in
    /// several places with the same config; two different configs for one
    /// MSP id are an error (as in Fabric).
    pub fn from_channel_group(root: &ConfigGroup) -> Result<MspManager, MspError> {
        let mut found: HashMap<String, (String, Vec<u8>, Msp)> = HashMap::new();
        collect_msps(root, "Channel", &mut found)?;
        MspManager::new(found.into_values().map(|(_, _, m)| m).collect())
    }

    /// The MSP of an id.
    pub fn msp(&self, mspid: &str) -> Option<&Msp> {
        self.msps.get(mspid)
    }

    /// The MSP ids, sorted.
    pub fn mspids(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.msps.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Deserializes and validates a marshalled `SerializedIdentity`, from
    /// the cache when it was validated before and has not expired since.
    pub fn identity(&self, serialized: &[u8]) -> Result<Arc<Identity>, IdentityError> {
        self.identity_at(serialized, SystemTime::now())
    }

    /// [`MspManager::identity`] at time `now`.
    pub fn identity_at(&self, serialized: &[u8], now: SystemTime) -> Result<Arc<Identity>, IdentityError> {
        let hash = self.cache.hash(serialized);
        if let Some(id) = self.cache.get(hash, serialized, now) {
            return Ok(id);
        }
        let id = Arc::new(self.validate_uncached(serialized, now)?);
        self.cache.insert(hash, serialized, id.clone());
        Ok(id)
    }

    /// Deserializes and validates an identity without the cache.
    pub fn validate_uncached(&self, serialized: &[u8], now: SystemTime) -> Result<Identity, IdentityError> {
        let sid = SerializedIdentity::decode(serialized).map_err(|e| IdentityError::Decode(e.to_string()))?;
        let msp = self.msps.get(&sid.mspid).ok_or_else(|| IdentityError::UnknownMsp { mspid: sid.mspid.clone() })?;
        msp.validate(&sid.id_bytes, now)
    }

    /// Number of identities in the cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// The MSP id a config group's `MSP` value names (None: no MSP value, or
/// not a Fabric MSP).
pub fn msp_id_of(group: &ConfigGroup) -> Option<String> {
    let v = group.values.get("MSP")?;
    let mc = MspConfig::decode(v.value.clone()).ok()?;
    (mc.r#type == MSP_TYPE_FABRIC).then(|| FabricMspConfig::decode(mc.config).ok().map(|c| c.name))?
}

fn collect_msps(
    group: &ConfigGroup,
    path: &str,
    found: &mut HashMap<String, (String, Vec<u8>, Msp)>,
) -> Result<(), MspError> {
    if let Some(v) = group.values.get("MSP") {
        let cfg_err = |reason: String| MspError::Config { group: path.to_string(), reason };
        let mc = MspConfig::decode(v.value.clone()).map_err(|e| cfg_err(format!("not an MSPConfig: {e}")))?;
        match mc.r#type {
            MSP_TYPE_FABRIC => {
                let conf = FabricMspConfig::decode(mc.config.clone())
                    .map_err(|e| cfg_err(format!("not a FabricMSPConfig: {e}")))?;
                match found.get(&conf.name) {
                    Some((first, bytes, _)) => {
                        if bytes[..] != mc.config[..] {
                            return Err(MspError::Conflict {
                                mspid: conf.name.clone(),
                                first: first.clone(),
                                second: path.to_string(),
                            });
                        }
                    }
                    None => {
                        let msp = Msp::from_config(&conf)?;
                        found.insert(conf.name.clone(), (path.to_string(), mc.config.to_vec(), msp));
                    }
                }
            }
            MSP_TYPE_IDEMIX => {
                tracing::warn!(group = path, "Idemix MSPs are not supported; its identities will be refused")
            }
            t => return Err(cfg_err(format!("MSP type {t} is not supported (0 = FABRIC)"))),
        }
    }
    for (name, child) in &group.groups {
        collect_msps(child, &format!("{path}/{name}"), found)?;
    }
    Ok(())
}

/// A bounded, sharded cache of validated identities keyed by the
/// serialized identity bytes. A hit costs one SipHash of the bytes, one
/// lock and one comparison of the bytes.
struct IdentityCache {
    hasher: std::hash::RandomState,
    shards: Vec<Mutex<HashMap<u64, CacheEntry, BuildHasherDefault<U64Hasher>>>>,
    per_shard: usize,
}

struct CacheEntry {
    key: Box<[u8]>,
    identity: Arc<Identity>,
}

const SHARDS: usize = 16;

impl IdentityCache {
    fn new(capacity: usize) -> IdentityCache {
        IdentityCache {
            hasher: std::hash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes)
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, HashMap<u64, CacheEntry, BuildHasherDefault<U64Hasher>>> {
        let m = &self.shards[(hash >> 59) as usize % SHARDS];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, hash: u64, bytes: &[u8], now: SystemTime) -> Option<Arc<Identity>> {
        let mut shard = self.shard(hash);
        let e = shard.get(&hash)?;
        if &e.key[..] != bytes {
            return None;
        }
        if now > e.identity.not_after {
            shard.remove(&hash);
            return None;
        }
        Some(e.identity.clone())
    }

    fn insert(&self, hash: u64, bytes: &[u8], identity: Arc<Identity>) {
        let mut shard = self.shard(hash);
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            // Simple eviction: drop an arbitrary entry.
            if let Some(&victim) = shard.keys().next() {
                shard.remove(&victim);
            }
        }
        shard.insert(hash, CacheEntry { key: bytes.into(), identity });
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum()
    }
}

/// Hasher for keys that already are hashes.
#[derive(Default)]
struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

// ---------------------------------------------------------------------------
// X.509 helpers

/// The first PEM block of `input` (Go's `pem.Decode` skips leading text and
/// ignores what follows the block), or `input` itself when it is DER.
fn pem_block(input: &[u8], what: &str) -> Result<Vec<u8>, String> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let Some(start) = find(input, BEGIN) else {
        if input.first() == Some(&0x30) {
            return Ok(input.to_vec());
        }
        return Err(format!("no PEM {what} found"));
    };
    let rest = &input[start..];
    let end_marker = find(rest, b"-----END ").ok_or_else(|| format!("unterminated PEM {what}"))?;
    let after = &rest[end_marker + 9..];
    let close = find(after, b"-----").ok_or_else(|| format!("unterminated PEM {what}"))?;
    let block = &rest[..end_marker + 9 + close + 5];
    let (_label, der) = x509_cert::der::pem::decode_vec(block).map_err(|e| format!("bad PEM {what}: {e}"))?;
    Ok(der)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_cert(pem: &[u8]) -> Result<(Vec<u8>, Certificate), String> {
    let der = pem_block(pem, "certificate")?;
    parse_der_cert(&der)
}

fn parse_der_cert(der: &[u8]) -> Result<(Vec<u8>, Certificate), String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok((der.to_vec(), cert))
}

fn is_ca(cert: &Certificate) -> bool {
    cert.tbs_certificate.extensions.iter().flatten().any(|e| {
        e.extn_id == OID_BASIC_CONSTRAINTS
            && BasicConstraints::from_der(e.extn_value.as_bytes()).map(|b| b.ca).unwrap_or(false)
    })
}

fn issuer_key(cert: &Certificate) -> Result<IssuerKey, String> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let raw = spki.subject_public_key.raw_bytes().to_vec();
    if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or("EC key without a named curve")?;
        let curve = if curve == OID_P256 {
            Curve::P256
        } else if curve == OID_P384 {
            Curve::P384
        } else {
            return Err(format!("EC curve {curve} is not supported (P-256, P-384)"));
        };
        Ok(IssuerKey::Ec { curve, point: raw })
    } else if spki.algorithm.oid == OID_RSA_ENCRYPTION {
        Ok(IssuerKey::Rsa { der: raw })
    } else {
        Err(format!("public key algorithm {} is not supported", spki.algorithm.oid))
    }
}

/// Verifies `signature` over `signed` with `key` and the signature
/// algorithm `alg`.
fn check_signature(key: &IssuerKey, alg: &ObjectIdentifier, signed: &[u8], signature: &[u8]) -> bool {
    let ring_alg: &'static dyn VerificationAlgorithm = match (key, *alg) {
        (IssuerKey::Ec { curve: Curve::P256, .. }, OID_ECDSA_SHA256) => &sig::ECDSA_P256_SHA256_ASN1,
        (IssuerKey::Ec { curve: Curve::P256, .. }, OID_ECDSA_SHA384) => &sig::ECDSA_P256_SHA384_ASN1,
        (IssuerKey::Ec { curve: Curve::P384, .. }, OID_ECDSA_SHA256) => &sig::ECDSA_P384_SHA256_ASN1,
        (IssuerKey::Ec { curve: Curve::P384, .. }, OID_ECDSA_SHA384) => &sig::ECDSA_P384_SHA384_ASN1,
        (IssuerKey::Rsa { .. }, OID_RSA_SHA256) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (IssuerKey::Rsa { .. }, OID_RSA_SHA384) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (IssuerKey::Rsa { .. }, OID_RSA_SHA512) => &sig::RSA_PKCS1_2048_8192_SHA512,
        _ => return false,
    };
    let bytes = match key {
        IssuerKey::Ec { point, .. } => point,
        IssuerKey::Rsa { der } => der,
    };
    UnparsedPublicKey::new(ring_alg, bytes).verify(signed, signature).is_ok()
}

/// The CA of `cas` (other than `skip`) whose subject is the certificate's
/// issuer and whose key verifies its signature.
fn find_issuer(cas: &[Ca], der: &[u8], cert: &Certificate, skip: Option<usize>) -> Option<usize> {
    let issuer = cert.tbs_certificate.issuer.to_der().ok()?;
    let tbs = first_element(der)?;
    let signature = cert.signature.as_bytes()?;
    cas.iter().enumerate().position(|(i, ca)| {
        Some(i) != skip
            && ca.subject_der == issuer
            && check_signature(&ca.key, &cert.signature_algorithm.oid, tbs, signature)
    })
}

/// Records the serials of a CRL under the CA that signed it. A CRL no CA of
/// the MSP signed is ignored (as Fabric ignores a CRL whose signature does
/// not match the issuing CA).
fn add_crl(cas: &mut [Ca], crl: &[u8]) -> Result<(), String> {
    let der = pem_block(crl, "CRL")?;
    let list = CertificateList::from_der(&der).map_err(|e| format!("not an X.509 CRL: {e}"))?;
    let issuer = list.tbs_cert_list.issuer.to_der().map_err(|e| e.to_string())?;
    let tbs = first_element(&der).ok_or("malformed CRL")?;
    let signature = list.signature.as_bytes().ok_or("malformed CRL signature")?;
    let Some(ca) = cas.iter().position(|ca| {
        ca.subject_der == issuer && check_signature(&ca.key, &list.signature_algorithm.oid, tbs, signature)
    }) else {
        tracing::warn!(issuer = %list.tbs_cert_list.issuer, "ignoring a CRL signed by no CA of the MSP");
        return Ok(());
    };
    for rc in list.tbs_cert_list.revoked_certificates.iter().flatten() {
        cas[ca].revoked.push(strip_zeros(rc.serial_number.as_bytes()).to_vec());
    }
    Ok(())
}

fn subject_ous(name: &Name) -> Vec<String> {
    let mut ous = Vec::new();
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_OU
                && let Ok(s) = std::str::from_utf8(atv.value.value())
            {
                ous.push(s.to_string());
            }
        }
    }
    ous
}

/// The raw bytes (header included) of the first element of a DER SEQUENCE:
/// the signed part of a certificate or CRL, exactly as it was signed.
fn first_element(der: &[u8]) -> Option<&[u8]> {
    let mut r = SliceReader::new(der).ok()?;
    let h = Header::decode(&mut r).ok()?;
    if h.tag != Tag::Sequence {
        return None;
    }
    r.tlv_bytes().ok()
}

/// The S integer (big-endian, without leading zeros) of a DER ECDSA
/// signature `SEQUENCE { INTEGER r, INTEGER s }`, both positive, nothing
/// after it (strict DER, as Go's encoding/asn1).
fn der_signature_s(sig: &[u8]) -> Option<&[u8]> {
    let (_, s) = der_signature(sig)?;
    Some(s)
}

/// (r, s) of a DER ECDSA signature.
fn der_signature(sig: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut reader = SliceReader::new(sig).ok()?;
    let (r, s) = reader
        .sequence(|seq| {
            let r = UintRef::decode(seq)?;
            let s = UintRef::decode(seq)?;
            Ok((r, s))
        })
        .ok()?;
    reader.finish(()).ok()?;
    if r.is_empty() || s.is_empty() {
        return None;
    }
    Some((r.as_bytes(), s.as_bytes()))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|x| **x == 0).count();
    &b[n..]
}

/// `a <= b` for big-endian unsigned integers (`b` without leading zeros
/// beyond its fixed width).
fn be_le(a: &[u8], b: &[u8]) -> bool {
    let b = strip_zeros(b);
    if a.len() != b.len() {
        return a.len() < b.len();
    }
    a <= b
}

const fn hex_nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("bad hex digit"),
    }
}

const fn hex_array<const N: usize>(s: &str) -> [u8; N] {
    let s = s.as_bytes();
    assert!(s.len() == 2 * N);
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = hex_nibble(s[2 * i]) << 4 | hex_nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

const fn hex32(s: &str) -> [u8; 32] {
    hex_array::<32>(s)
}

const fn hex48(s: &str) -> [u8; 48] {
    hex_array::<48>(s)
}

/// `n >> 1` for a big-endian integer.
const fn half<const N: usize>(n: [u8; N]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut carry = 0u8;
    let mut i = 0;
    while i < N {
        out[i] = (n[i] >> 1) | carry;
        carry = (n[i] & 1) << 7;
        i += 1;
    }
    out
}

/// The DER of a PEM (or DER) X.509 certificate, checked to parse.
pub fn cert_der_of_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    parse_cert(pem).map(|(der, _)| der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair};

    /// `n - s` for big-endian integers (s < n).
    fn sub(n: &[u8], s: &[u8]) -> Vec<u8> {
        let mut s_pad = vec![0u8; n.len() - s.len()];
        s_pad.extend_from_slice(s);
        let mut out = vec![0u8; n.len()];
        let mut borrow = 0i16;
        for i in (0..n.len()).rev() {
            let mut d = n[i] as i16 - s_pad[i] as i16 - borrow;
            borrow = 0;
            if d < 0 {
                d += 256;
                borrow = 1;
            }
            out[i] = d as u8;
        }
        out
    }

    fn der_int(v: &[u8]) -> Vec<u8> {
        let v = strip_zeros(v);
        let mut c = Vec::new();
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            c.push(0);
        }
        c.extend_from_slice(v);
        let mut out = vec![0x02, c.len() as u8];
        out.extend(c);
        out
    }

    fn der_sig(r: &[u8], s: &[u8]) -> Vec<u8> {
        let mut body = der_int(r);
        body.extend(der_int(s));
        let mut out = vec![0x30];
        if body.len() >= 0x80 {
            out.push(0x81);
        }
        out.push(body.len() as u8);
        out.extend(body);
        out
    }

    fn r_of(sig: &[u8]) -> &[u8] {
        der_signature(sig).unwrap().0
    }

    /// The curve orders are right: with our n, (r, n - s) is the other valid
    /// signature of the same message (ring accepts it), and exactly one of
    /// s, n - s is at most our n/2.
    #[test]
    fn curve_orders_and_half_orders() {
        let rng = SystemRandom::new();
        for (sign_alg, verify_alg, order, halfo) in [
            (&sig::ECDSA_P256_SHA256_ASN1_SIGNING, &sig::ECDSA_P256_SHA256_ASN1, &P256_ORDER[..], &P256_HALF_ORDER[..]),
            (&sig::ECDSA_P384_SHA384_ASN1_SIGNING, &sig::ECDSA_P384_SHA384_ASN1, &P384_ORDER[..], &P384_HALF_ORDER[..]),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(sign_alg, &rng).unwrap();
            let kp = EcdsaKeyPair::from_pkcs8(sign_alg, pkcs8.as_ref(), &rng).unwrap();
            let pk = UnparsedPublicKey::new(verify_alg, kp.public_key().as_ref().to_vec());
            for i in 0..8u8 {
                let msg = [i; 10];
                let s1 = kp.sign(&rng, &msg).unwrap().as_ref().to_vec();
                let s = der_signature_s(&s1).unwrap().to_vec();
                let twin = der_sig(r_of(&s1), &sub(order, &s));
                pk.verify(&msg, &twin).expect("(r, n - s) verifies with the right n");
                let t = der_signature_s(&twin).unwrap();
                assert_ne!(be_le(&s, halfo), be_le(t, halfo), "exactly one of s, n-s is low");
            }
        }
        assert_eq!(P256_HALF_ORDER[0], 0x7f);
        assert_eq!(*P384_HALF_ORDER.last().unwrap(), 0xb9);
    }

    #[test]
    fn der_signature_parsing() {
        assert_eq!(der_signature_s(&der_sig(&[1], &[2, 3])), Some(&[2u8, 3][..]));
        // Leading zero of a positive integer is stripped.
        assert_eq!(der_signature_s(&der_sig(&[1], &[0x80])), Some(&[0x80u8][..]));
        for bad in [
            &[][..],
            &[0x30, 0x00],
            &[0x30, 0x03, 0x02, 0x01, 0x01],
            &[0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x81], // negative s
            &[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00], // trailing
            &[0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01], // short
        ] {
            assert_eq!(der_signature_s(bad), None, "{bad:?}");
        }
        assert!(be_le(&[0x7f], &[0x80]) && be_le(&[0x80], &[0x80]) && !be_le(&[0x81], &[0x80]));
        assert!(be_le(&[0xff], &[0x01, 0x00]) && !be_le(&[0x01, 0x00], &[0xff]));
    }

    #[test]
    fn pem_block_takes_the_first_block() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap().self_signed(&key).unwrap();
        let two = format!("junk before\n{}{}", cert.pem(), cert.pem());
        assert_eq!(cert_der_of_pem(two.as_bytes()).unwrap(), cert.der().to_vec());
        assert_eq!(cert_der_of_pem(cert.der()).unwrap(), cert.der().to_vec());
        assert!(cert_der_of_pem(b"not a cert").is_err());
        assert!(cert_der_of_pem(b"-----BEGIN CERTIFICATE-----\nAAAA").is_err());
    }

    fn dummy(n: u8, not_after: SystemTime) -> Arc<Identity> {
        Arc::new(Identity {
            mspid: "M".into(),
            subject: format!("CN={n}"),
            roles: Roles::default(),
            cert_der: vec![n],
            key: UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_ASN1, Box::new([])),
            half_order: &P256_HALF_ORDER,
            not_after,
            id: [n; 32],
        })
    }

    #[test]
    fn cache_is_bounded_and_expires() {
        let cache = IdentityCache::new(32);
        let now = SystemTime::now();
        let later = now + std::time::Duration::from_secs(3600);
        for n in 0..=255u8 {
            let key = [n; 40];
            cache.insert(cache.hash(&key), &key, dummy(n, later));
            assert!(cache.len() <= 32, "cache grew to {}", cache.len());
        }
        let key = [255u8; 40];
        let hit = cache.get(cache.hash(&key), &key, now).expect("the last insert is cached");
        assert!(Arc::ptr_eq(&hit, &cache.get(cache.hash(&key), &key, now).unwrap()));
        // Same hash slot, other bytes: a miss, never another identity.
        assert!(cache.get(cache.hash(&key), &[254u8; 40], now).is_none());
        // Past not_after the entry is dropped.
        assert!(cache.get(cache.hash(&key), &key, later + std::time::Duration::from_secs(1)).is_none());
        assert!(cache.get(cache.hash(&key), &key, now).is_none());
    }

    #[test]
    fn config_errors_name_the_msp() {
        let conf = FabricMspConfig { name: "X".into(), ..Default::default() };
        assert_eq!(Msp::from_config(&conf).unwrap_err().to_string(), "MSP X: no root certificate");
        let conf = FabricMspConfig {
            name: "X".into(),
            root_certs: vec![bytes::Bytes::from_static(b"garbage")],
            ..Default::default()
        };
        let e = Msp::from_config(&conf).unwrap_err().to_string();
        assert!(e.starts_with("MSP X: root certificate #0: "), "{e}");
        // A leaf is not a root.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap().self_signed(&key).unwrap();
        let conf = FabricMspConfig {
            name: "X".into(),
            root_certs: vec![bytes::Bytes::from(leaf.pem())],
            ..Default::default()
        };
        let e = Msp::from_config(&conf).unwrap_err().to_string();
        assert!(e.contains("not a CA certificate"), "{e}");
    }

    #[test]
    fn shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<MspManager>();
        send_sync::<Identity>();
        send_sync::<crate::policy::PolicyManager>();
    }

    #[test]
    fn p384_chains_verify() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P384_SHA384};
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "p384 ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "p384 leaf");
        let leaf = p.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
        let msp = Msp::from_config(&FabricMspConfig {
            name: "P384".into(),
            root_certs: vec![bytes::Bytes::from(ca_cert.pem())],
            ..Default::default()
        })
        .unwrap();
        let id = msp.validate(leaf.pem().as_bytes(), SystemTime::now()).unwrap();
        assert_eq!(id.subject(), "CN=p384 leaf");
        assert_eq!(id.half_order, &P384_HALF_ORDER[..]);
        // A tampered certificate no longer chains.
        let mut der = leaf.der().to_vec();
        let i = der.len() / 2;
        der[i] ^= 1;
        assert!(msp.validate(&der, SystemTime::now()).is_err());
    }
}
