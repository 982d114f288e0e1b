//! MSPs and policies on real Fabric configs (`../shared/fixtures/`): the
//! fixture users satisfy or fail the channel policies exactly as the Fabric
//! v2.5 orderer answered (fixture README), identities are classified by
//! NodeOUs, and bad signatures, foreign, expired and revoked certificates
//! are refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use p256::pkcs8::DecodePrivateKey;
use prost::Message;

use consenter_host::msp::{IdentityError, InvalidReason, Msp, MspManager, SignatureError};
use consenter_host::policy::{PolicyError, PolicyManager, SignedData};
use consenter_host::proto::common::{Block, ChannelHeader, ConfigEnvelope, ConfigGroup, Envelope, HeaderType, Payload};
use consenter_host::proto::msp::{FabricMspConfig, FabricNodeOUs, FabricOuIdentifier, SerializedIdentity};
use consenter_host::signer::Signer;

const WRITERS_REFUSAL: &str = "implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 of the 'Writers' sub-policies to be satisfied";

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn fabric() -> PathBuf {
    shared().join("fabric")
}

/// The channel group of a CONFIG block, or None for another block.
fn channel_group(path: &Path) -> Option<ConfigGroup> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let block = Block::decode(Bytes::from(bytes)).unwrap();
    let data = block.data?.data.into_iter().next()?;
    let env = Envelope::decode(data).unwrap();
    let payload = Payload::decode(env.payload).unwrap();
    let ch = ChannelHeader::decode(payload.header?.channel_header).unwrap();
    if ch.r#type != HeaderType::Config as i32 {
        return None;
    }
    ConfigEnvelope::decode(payload.data).unwrap().config?.channel_group
}

fn managers(block: &str) -> (Arc<MspManager>, PolicyManager) {
    let root = channel_group(&fabric().join("blocks").join(block)).expect("a config block");
    let msps = Arc::new(MspManager::from_channel_group(&root).unwrap());
    let pm = PolicyManager::from_channel_group(&root, msps.clone()).unwrap();
    (msps, pm)
}

fn signer(rel: &str, mspid: &str) -> Signer {
    Signer::from_msp_dir(&fabric().join(rel), mspid).unwrap()
}

const USER1_ORG1: &str = "crypto/peerOrganizations/org1.example.com/users/User1@org1.example.com/msp";
const USER1_ORG2: &str = "crypto/peerOrganizations/org2.example.com/users/User1@org2.example.com/msp";
const ADMIN_ORG1: &str = "crypto/peerOrganizations/org1.example.com/users/Admin@org1.example.com/msp";
const PEER0_ORG1: &str = "crypto/peerOrganizations/org1.example.com/peers/peer0.org1.example.com/msp";
const USER1_ORG3: &str = "crypto-outsider/peerOrganizations/org3.example.com/users/User1@org3.example.com/msp";
const ORDERER_ADMIN: &str = "crypto/ordererOrganizations/example.com/users/Admin@example.com/msp";
const ORDERER0: &str = "crypto/ordererOrganizations/example.com/orderers/orderer0.example.com/msp";

fn eval(pm: &PolicyManager, path: &str, s: &Signer) -> Result<(), PolicyError> {
    let data = b"an envelope payload".to_vec();
    let sig = s.sign(&data).unwrap();
    pm.evaluate(path, &[SignedData { data: &data, identity: s.creator(), signature: &sig }])
}

#[test]
fn solochannel_builds_every_policy_and_msp() {
    let (msps, pm) = managers("solochannel.genesis.block");
    assert_eq!(msps.mspids(), vec!["OrdererMSP", "Org1MSP", "Org2MSP"]);
    let paths = pm.paths();
    for p in [
        "/Channel/Readers",
        "/Channel/Writers",
        "/Channel/Admins",
        "/Channel/Application/Writers",
        "/Channel/Application/Org1MSP/Writers",
        "/Channel/Application/Org2MSP/Admins",
        "/Channel/Orderer/BlockValidation",
        "/Channel/Orderer/OrdererOrg/Writers",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    assert!(pm.get("/Channel/Writers").unwrap().is_implicit_meta());
    assert!(!pm.get("/Channel/Application/Org1MSP/Writers").unwrap().is_implicit_meta());
    let err = pm.evaluate("/Channel/Nope", &[]).unwrap_err();
    assert_eq!(err, PolicyError::NotFound("/Channel/Nope".into()));
    assert_eq!(err.to_string(), "no such policy: '/Channel/Nope'");
}

#[test]
fn org_users_satisfy_writers_and_readers() {
    let (_, pm) = managers("solochannel.genesis.block");
    for (dir, mspid) in [(USER1_ORG1, "Org1MSP"), (USER1_ORG2, "Org2MSP"), (ADMIN_ORG1, "Org1MSP")] {
        let s = signer(dir, mspid);
        for path in ["/Channel/Writers", "/Channel/Readers", "/Channel/Application/Writers"] {
            eval(&pm, path, &s).unwrap_or_else(|e| panic!("{dir} on {path}: {e}"));
        }
    }
    // Org1's user satisfies its own org's policy, not Org2's.
    let s = signer(USER1_ORG1, "Org1MSP");
    eval(&pm, "/Channel/Application/Org1MSP/Writers", &s).unwrap();
    let err = eval(&pm, "/Channel/Application/Org2MSP/Writers", &s).unwrap_err();
    assert!(matches!(err, PolicyError::Signature { .. }), "{err}");
}

#[test]
fn peer_is_not_a_writer_with_fabrics_text() {
    let (_, pm) = managers("solochannel.genesis.block");
    let s = signer(PEER0_ORG1, "Org1MSP");
    let err = eval(&pm, "/Channel/Writers", &s).unwrap_err();
    assert_eq!(err.to_string(), WRITERS_REFUSAL);
    // But a peer is a reader (OR(admin, peer, client)).
    eval(&pm, "/Channel/Readers", &s).unwrap();
}

#[test]
fn outsider_org_is_refused() {
    let (msps, pm) = managers("solochannel.genesis.block");
    let s = signer(USER1_ORG3, "Org3MSP");
    assert_eq!(eval(&pm, "/Channel/Writers", &s).unwrap_err().to_string(), WRITERS_REFUSAL);
    assert!(eval(&pm, "/Channel/Readers", &s).is_err());
    assert_eq!(msps.identity(s.creator()).unwrap_err(), IdentityError::UnknownMsp { mspid: "Org3MSP".into() });
    // Org3's cert presented as Org1MSP: not issued by Org1's CA.
    let forged = SerializedIdentity { mspid: "Org1MSP".into(), id_bytes: s.cert_pem().clone() }.encode_to_vec();
    match msps.identity(&forged).unwrap_err() {
        IdentityError::Invalid { mspid, subject, reason } => {
            assert_eq!(mspid, "Org1MSP");
            assert!(subject.contains("User1@org3.example.com"), "{subject}");
            assert_eq!(reason, InvalidReason::UntrustedIssuer);
        }
        e => panic!("{e}"),
    }
    let data = b"x".to_vec();
    let sig = s.sign(&data).unwrap();
    let err =
        pm.evaluate("/Channel/Writers", &[SignedData { data: &data, identity: &forged, signature: &sig }]).unwrap_err();
    assert_eq!(err.to_string(), WRITERS_REFUSAL);
}

#[test]
fn system_channel_readers_are_the_orderer_org() {
    let (_, pm) = managers("system-channel.genesis.block");
    assert!(pm.paths().contains(&"/Channel/Consortiums/SampleConsortium/Org1MSP/Writers"));
    eval(&pm, "/Channel/Readers", &signer(ORDERER_ADMIN, "OrdererMSP")).unwrap();
    let err = eval(&pm, "/Channel/Readers", &signer(USER1_ORG1, "Org1MSP")).unwrap_err();
    assert!(matches!(err, PolicyError::ImplicitMeta { satisfied: 0, threshold: 1, .. }), "{err}");
}

#[test]
fn roles_are_classified_by_node_ous() {
    let (msps, _) = managers("system-channel.genesis.block");
    let role = |dir, mspid| msps.identity(signer(dir, mspid).creator()).unwrap().roles();
    let user = role(USER1_ORG1, "Org1MSP");
    assert!(user.client && !user.peer && !user.admin && !user.orderer && !user.is_admin, "{user:?}");
    let admin = role(ADMIN_ORG1, "Org1MSP");
    assert!(admin.admin && admin.is_admin && !admin.client, "{admin:?}");
    let peer = role(PEER0_ORG1, "Org1MSP");
    assert!(peer.peer && !peer.client && !peer.is_admin, "{peer:?}");
    let orderer = role(ORDERER0, "OrdererMSP");
    assert!(orderer.orderer && !orderer.peer && !orderer.is_admin, "{orderer:?}");
    let oadmin = role(ORDERER_ADMIN, "OrdererMSP");
    assert!(oadmin.is_admin && !oadmin.orderer, "{oadmin:?}");
    let id = msps.identity(signer(USER1_ORG1, "Org1MSP").creator()).unwrap();
    assert_eq!(id.mspid(), "Org1MSP");
    assert!(id.subject().contains("CN=User1@org1.example.com"), "{}", id.subject());
}

#[test]
fn bad_signatures_are_refused() {
    let (msps, pm) = managers("solochannel.genesis.block");
    let s = signer(USER1_ORG1, "Org1MSP");
    let id = msps.identity(s.creator()).unwrap();
    let data = b"payload".to_vec();
    let sig = s.sign(&data).unwrap();
    id.verify(&data, &sig).unwrap();
    // Wrong data.
    assert!(matches!(id.verify(b"other", &sig), Err(SignatureError::Invalid { .. })));
    // Another identity's signature.
    let other = signer(USER1_ORG2, "Org2MSP").sign(&data).unwrap();
    assert!(matches!(id.verify(&data, &other), Err(SignatureError::Invalid { .. })));
    // Garbage.
    assert!(matches!(id.verify(&data, b"\x30\x03\x02\x01"), Err(SignatureError::Malformed { .. })));
    // High S: the same signature with s replaced by n - s. ring alone accepts
    // it (it is mathematically valid); Fabric and we refuse it.
    let high = high_s(&sig);
    let ring_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        s.verifying_key().to_encoded_point(false).as_bytes().to_vec(),
    );
    ring_key.verify(&data, &high).expect("ring accepts the high-S twin");
    let err = id.verify(&data, &high).unwrap_err();
    assert!(matches!(err, SignatureError::HighS { .. }), "{err}");
    assert!(err.to_string().contains("User1@org1.example.com"), "{err}");
    // Through the policy: the refused signature drops the identity.
    for bad in [&other[..], &high[..]] {
        let e = pm
            .evaluate("/Channel/Writers", &[SignedData { data: &data, identity: s.creator(), signature: bad }])
            .unwrap_err();
        assert_eq!(e.to_string(), WRITERS_REFUSAL);
    }
    // A bad signature first, then a good one by the same identity: Fabric
    // deduplicates only verified identities, so the second one counts.
    pm.evaluate(
        "/Channel/Writers",
        &[
            SignedData { data: &data, identity: s.creator(), signature: &high },
            SignedData { data: &data, identity: s.creator(), signature: &sig },
        ],
    )
    .unwrap();
}

/// `sig` with S replaced by n - S.
fn high_s(der: &[u8]) -> Vec<u8> {
    let sig = p256::ecdsa::Signature::from_der(der).unwrap();
    let (r, s) = sig.split_scalars();
    let neg: p256::Scalar = -*s.as_ref();
    let high = p256::ecdsa::Signature::from_scalars(r.to_bytes(), neg.to_bytes()).unwrap();
    assert!(high.normalize_s().is_some(), "n - s of a low-S signature is high-S");
    high.to_der().as_bytes().to_vec()
}

#[test]
fn admins_policy_needs_an_admin() {
    let (_, pm) = managers("solochannel.genesis.block");
    // /Channel/Application/Admins is MAJORITY of the orgs' Admins: 2 of 2.
    let a1 = signer(ADMIN_ORG1, "Org1MSP");
    let a2 = signer("crypto/peerOrganizations/org2.example.com/users/Admin@org2.example.com/msp", "Org2MSP");
    let data = b"config update".to_vec();
    let s1 = a1.sign(&data).unwrap();
    let s2 = a2.sign(&data).unwrap();
    let one = [SignedData { data: &data, identity: a1.creator(), signature: &s1 }];
    let err = pm.evaluate("/Channel/Application/Admins", &one).unwrap_err();
    assert_eq!(
        err.to_string(),
        "implicit policy evaluation failed - 1 sub-policies were satisfied, but this policy requires 2 of the 'Admins' sub-policies to be satisfied"
    );
    let both = [one[0], SignedData { data: &data, identity: a2.creator(), signature: &s2 }];
    pm.evaluate("/Channel/Application/Admins", &both).unwrap();
    // The same admin twice is one signer.
    let twice = [one[0], one[0]];
    assert!(pm.evaluate("/Channel/Application/Admins", &twice).is_err());
    // A client is not an admin.
    let u = signer(USER1_ORG1, "Org1MSP");
    assert!(eval(&pm, "/Channel/Application/Org1MSP/Admins", &u).is_err());
    eval(&pm, "/Channel/Application/Org1MSP/Admins", &a1).unwrap();
}

#[test]
fn evaluate_identities_skips_signature_checks() {
    let (msps, pm) = managers("solochannel.genesis.block");
    let user = msps.identity(signer(USER1_ORG1, "Org1MSP").creator()).unwrap();
    let peer = msps.identity(signer(PEER0_ORG1, "Org1MSP").creator()).unwrap();
    pm.evaluate_identities("/Channel/Writers", std::slice::from_ref(&user)).unwrap();
    assert_eq!(
        pm.evaluate_identities("/Channel/Writers", std::slice::from_ref(&peer)).unwrap_err().to_string(),
        WRITERS_REFUSAL
    );
    pm.evaluate_identities("/Channel/Writers", &[peer, user]).unwrap();
    assert_eq!(msps.cached(), 2);
}

#[test]
fn third_party_config_blocks_build() {
    let dir = shared().join("fabric-sdk-py");
    let mut built = 0;
    for name in [
        "e2e_cli__orderer.genesis.block",
        "e2e_raft__orderer.genesis.block",
        "lifecycle_2_0__orderer.genesis.block",
        "lifecycle_2_0__orderer_2_0.genesis.block",
        "e2e_cli__businesschannel_4.block",
    ] {
        let Some(root) = channel_group(&dir.join(name)) else {
            assert_eq!(name, "e2e_cli__businesschannel_4.block", "only the endorser block is not a config block");
            continue;
        };
        let msps = Arc::new(MspManager::from_channel_group(&root).unwrap_or_else(|e| panic!("{name}: {e}")));
        assert!(!msps.mspids().is_empty(), "{name}: no MSP");
        let pm = PolicyManager::from_channel_group(&root, msps).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(pm.get("/Channel/Writers").is_some(), "{name}");
        // Nobody's signature: /Channel/Writers is not satisfied.
        assert!(pm.evaluate("/Channel/Writers", &[]).is_err(), "{name}");
        built += 1;
    }
    assert_eq!(built, 4);
}

// ---------------------------------------------------------------------------
// A generated CA: expiry, revocation, chains, NodeOUs.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, RevokedCertParams, SerialNumber, date_time_ymd,
};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(cn: &str, parent: Option<&Ca>) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = match parent {
        None => p.self_signed(&key).unwrap(),
        Some(pa) => p.signed_by(&key, &Issuer::new(pa.params.clone(), &pa.key)).unwrap(),
    };
    Ca { params: p, key, pem: cert.pem() }
}

/// A leaf with OUs `ous`, serial `serial`, valid in [from, to] (years).
fn leaf(issuer: &Ca, cn: &str, ous: &[&str], serial: u64, years: (i32, i32)) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    for (i, ou) in ous.iter().enumerate() {
        // rcgen keeps one value per DnType: a second OU needs the OID spelled out.
        let t = if i == 0 { DnType::OrganizationalUnitName } else { DnType::CustomDnType(vec![2, 5, 4, 11]) };
        p.distinguished_name.push(t, *ou);
    }
    p.serial_number = Some(SerialNumber::from(serial));
    p.not_before = date_time_ymd(years.0, 1, 1);
    p.not_after = date_time_ymd(years.1, 1, 1);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = p.signed_by(&key, &Issuer::new(issuer.params.clone(), &issuer.key)).unwrap();
    (cert.pem(), key)
}

fn crl(issuer: &Ca, serials: &[u64]) -> String {
    let params = CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2100, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&Issuer::new(issuer.params.clone(), &issuer.key)).unwrap().pem().unwrap()
}

fn node_ous(ca_pem: &str) -> FabricNodeOUs {
    let id = |ou: &str| {
        Some(FabricOuIdentifier {
            certificate: Bytes::from(ca_pem.to_string()),
            organizational_unit_identifier: ou.into(),
        })
    };
    FabricNodeOUs {
        enable: true,
        client_ou_identifier: id("client"),
        peer_ou_identifier: id("peer"),
        admin_ou_identifier: id("admin"),
        orderer_ou_identifier: id("orderer"),
    }
}

fn serialized(mspid: &str, pem: &str) -> Vec<u8> {
    SerializedIdentity { mspid: mspid.into(), id_bytes: Bytes::from(pem.to_string()) }.encode_to_vec()
}

fn invalid_reason(e: IdentityError) -> InvalidReason {
    match e {
        IdentityError::Invalid { reason, .. } => reason,
        e => panic!("expected an invalid identity, got {e}"),
    }
}

#[test]
fn expired_revoked_and_misclassified_certs_are_refused() {
    let root = ca("root.test", None);
    let other_root = ca("root.test", None); // same name, other key
    let (good, good_key) = leaf(&root, "good", &["client"], 10, (2020, 2090));
    let (expired, _) = leaf(&root, "expired", &["client"], 11, (2001, 2002));
    let (future, _) = leaf(&root, "future", &["client"], 12, (2080, 2090));
    let (revoked, _) = leaf(&root, "revoked", &["client"], 13, (2020, 2090));
    let (two_ous, _) = leaf(&root, "both", &["client", "peer"], 14, (2020, 2090));
    let (no_ou, _) = leaf(&root, "none", &["sales"], 15, (2020, 2090));
    let (foreign, _) = leaf(&other_root, "foreign", &["client"], 16, (2020, 2090));
    let conf = FabricMspConfig {
        name: "TestMSP".into(),
        root_certs: vec![Bytes::from(root.pem.clone())],
        // A CRL by the right CA revokes 13; one by another CA (same name)
        // revokes 10 and must be ignored.
        revocation_list: vec![Bytes::from(crl(&root, &[13])), Bytes::from(crl(&other_root, &[10]))],
        fabric_node_ous: Some(node_ous(&root.pem)),
        ..Default::default()
    };
    let msps = MspManager::new(vec![Msp::from_config(&conf).unwrap()]).unwrap();
    let now = SystemTime::now();
    let id = msps.identity_at(&serialized("TestMSP", &good), now).unwrap();
    assert!(id.roles().client);
    let check = |pem: &str| invalid_reason(msps.identity_at(&serialized("TestMSP", pem), now).unwrap_err());
    assert!(matches!(check(&expired), InvalidReason::Expired { .. }));
    assert!(matches!(check(&future), InvalidReason::NotYetValid { .. }));
    assert_eq!(check(&revoked), InvalidReason::Revoked { serial: "0d".into() });
    assert!(matches!(check(&two_ous), InvalidReason::SeveralNodeOus { .. }));
    assert!(matches!(check(&no_ou), InvalidReason::NoNodeOu { .. }));
    assert_eq!(check(&foreign), InvalidReason::UntrustedIssuer);
    // A CA certificate is not an identity.
    assert_eq!(check(&root.pem), InvalidReason::IsCa);

    // The cached identity expires with its certificate.
    let after = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000); // 2096
    assert!(matches!(
        invalid_reason(msps.identity_at(&serialized("TestMSP", &good), after).unwrap_err()),
        InvalidReason::Expired { .. }
    ));

    // It signs and verifies (P-256 through ring).
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&good_key.serialize_pem()).unwrap();
    let s = Signer::new("TestMSP", key, Bytes::from(good.clone()));
    let sig = s.sign(b"m").unwrap();
    msps.identity_at(s.creator(), now).unwrap().verify(b"m", &sig).unwrap();
}

#[test]
fn intermediate_chains_and_revoked_intermediates() {
    let root = ca("root.chain", None);
    let int_ok = ca("int.ok", Some(&root));
    let int_revoked = ca("int.revoked", Some(&root));
    // Serial of int_revoked: rcgen picks a random one; read it back.
    let revoked_serial = serial_of(&int_revoked.pem);
    let (via_ok, _) = leaf(&int_ok, "via-ok", &["peer"], 1, (2020, 2090));
    let (via_revoked, _) = leaf(&int_revoked, "via-revoked", &["peer"], 2, (2020, 2090));
    let (via_root, _) = leaf(&root, "via-root", &["peer"], 3, (2020, 2090));
    let mut conf = FabricMspConfig {
        name: "ChainMSP".into(),
        root_certs: vec![Bytes::from(root.pem.clone())],
        intermediate_certs: vec![Bytes::from(int_ok.pem.clone()), Bytes::from(int_revoked.pem.clone())],
        revocation_list: vec![Bytes::from(crl_serial_bytes(&root, revoked_serial))],
        ..Default::default()
    };
    let msps = MspManager::new(vec![Msp::from_config(&conf).unwrap()]).unwrap();
    let now = SystemTime::now();
    let id = msps.identity_at(&serialized("ChainMSP", &via_ok), now).unwrap();
    // NodeOUs off: no OU role, not an admin.
    assert_eq!(id.roles(), Default::default());
    assert!(matches!(
        invalid_reason(msps.identity_at(&serialized("ChainMSP", &via_revoked), now).unwrap_err()),
        InvalidReason::CaRevoked { .. }
    ));
    // The root issued intermediates: it is an internal node of the tree, so
    // identities it issues directly are refused (Fabric's rule).
    assert!(matches!(
        invalid_reason(msps.identity_at(&serialized("ChainMSP", &via_root), now).unwrap_err()),
        InvalidReason::IssuerNotLeaf { .. }
    ));
    // NodeOUs pinned to the intermediate: a peer issued by it is a peer.
    conf.fabric_node_ous = Some(node_ous(&int_ok.pem));
    conf.admins = vec![Bytes::from(via_ok.clone())];
    let msps = MspManager::new(vec![Msp::from_config(&conf).unwrap()]).unwrap();
    let id = msps.identity_at(&serialized("ChainMSP", &via_ok), now).unwrap();
    assert!(id.roles().peer && id.roles().is_admin && !id.roles().admin, "{:?}", id.roles());
    // An intermediate missing from the MSP: its leaves are untrusted.
    let stray = ca("int.stray", Some(&root));
    let (via_stray, _) = leaf(&stray, "via-stray", &["peer"], 4, (2020, 2090));
    assert_eq!(
        invalid_reason(msps.identity_at(&serialized("ChainMSP", &via_stray), now).unwrap_err()),
        InvalidReason::UntrustedIssuer
    );
}

fn serial_of(pem: &str) -> Vec<u8> {
    use x509_cert::der::DecodePem;
    let c = x509_cert::Certificate::from_pem(pem.as_bytes()).unwrap();
    c.tbs_certificate.serial_number.as_bytes().to_vec()
}

fn crl_serial_bytes(issuer: &Ca, serial: Vec<u8>) -> String {
    let params = CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2100, 1, 1),
        crl_number: SerialNumber::from(2u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(serial),
            revocation_time: date_time_ymd(2024, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&Issuer::new(issuer.params.clone(), &issuer.key)).unwrap().pem().unwrap()
}

/// Per-envelope cost of the Broadcast hot path: identity cache hit +
/// signature verification + `/Channel/Writers`. Run with
/// `cargo test --release -p consenter-host --test policy -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_per_envelope_cost() {
    let (msps, pm) = managers("solochannel.genesis.block");
    let s = signer(USER1_ORG1, "Org1MSP");
    let data = vec![7u8; 300];
    let sig = s.sign(&data).unwrap();
    let creator = s.creator().clone();
    msps.identity(&creator).unwrap();
    let n = 20_000u32;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let id = msps.identity(std::hint::black_box(&creator)).unwrap();
        id.verify(&data, &sig).unwrap();
        pm.evaluate_identities("/Channel/Writers", std::slice::from_ref(&id)).unwrap();
    }
    let total = t.elapsed() / n;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(msps.identity(std::hint::black_box(&creator)).unwrap());
    }
    let lookup = t.elapsed() / n;
    let id = msps.identity(&creator).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..n {
        pm.evaluate_identities("/Channel/Writers", std::slice::from_ref(&id)).unwrap();
    }
    let policy = t.elapsed() / n;
    let t = std::time::Instant::now();
    for _ in 0..200 {
        std::hint::black_box(msps.validate_uncached(&creator, SystemTime::now()).unwrap());
    }
    let uncached = t.elapsed() / 200;
    println!(
        "per envelope: {total:?} (identity cache hit {lookup:?}, /Channel/Writers {policy:?}); uncached validation {uncached:?}"
    );
}

/// In maintenance mode a message's signature must satisfy
/// `/Channel/Orderer/Writers` (Fabric's SigFilter), not `/Channel/Writers`:
/// an application org's user is refused, the orderer org's admin is not.
#[test]
fn maintenance_mode_checks_the_orderer_writers() {
    use consenter_host::envelope::{self as env_mod, Envelope as Parsed};
    use consenter_host::processor::{self, Refusal};
    let raw = std::fs::read(fabric().join("blocks/solochannel.genesis.block")).unwrap();
    let block = Block::decode(Bytes::from(raw)).unwrap();
    let mut cfg = consenter_host::channel::ChannelConfig::from_config_block(&block).unwrap();
    let msg = |s: &Signer| {
        let b = env_mod::build(&cfg.channel_id, HeaderType::Message, "tx", Bytes::from_static(b"x"), Some(s)).unwrap();
        Parsed::parse(b).unwrap()
    };
    let user = signer(USER1_ORG1, "Org1MSP");
    let admin = signer(ORDERER_ADMIN, "OrdererMSP");
    let (u, a) = (msg(&user), msg(&admin));
    processor::check_writers(&cfg, &u).unwrap();
    cfg.consensus_state = processor::STATE_MAINTENANCE;
    assert_eq!(processor::writers_path(&cfg), "/Channel/Orderer/Writers");
    match processor::check_writers(&cfg, &u) {
        Err(Refusal::Forbidden(e)) => assert!(e.contains("permission denied"), "{e}"),
        other => panic!("{other:?}"),
    }
    processor::check_writers(&cfg, &a).unwrap();
}
