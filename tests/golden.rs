//! Golden tests on real Fabric bytes (`../shared/fixtures/fabric/ledger/`):
//! our header hash, data hash and previous-hash linkage match every block a
//! Fabric v2.5 orderer wrote, and our verifier accepts orderer0's block
//! signatures with the fixture crypto.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use consenter_host::block::{self, hex};
use consenter_host::proto::common::Block;
use consenter_host::signer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

fn load(channel: &str, n: u64) -> Block {
    let p = fixtures().join("ledger").join(channel).join(format!("{n}.block"));
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Block::decode(Bytes::from(bytes)).unwrap()
}

fn orderer0_key() -> p256::ecdsa::VerifyingKey {
    let p = fixtures().join(
        "crypto/ordererOrganizations/example.com/orderers/orderer0.example.com/msp/signcerts/orderer0.example.com-cert.pem",
    );
    signer::cert_public_key(&std::fs::read(p).unwrap()).unwrap()
}

/// Header hashes listed in the fixture README.
const APPCHANNEL_HASHES: [&str; 5] = [
    "0aa8c8951de8100ebd124f189565bb8531337fa27724465791e973ef2b2ac7d6",
    "05e845fd35c45839992d8ad1d9f889599a1bb24633292ecdaca23cac36483824",
    "a387096aac569552667c50441dd90f279534fc24d13ceacbd0c2ae48d1f1885a",
    "c46dc7c75dead3120d78d962dd68463e6d11d02e5e01c123b0119cd206130b26",
    "97f79862133f9fc7d0bf1b578aaf4125b12a093df23ab672915843567dcdf051",
];

#[test]
fn appchannel_header_hashes_match_the_readme() {
    for (n, want) in APPCHANNEL_HASHES.iter().enumerate() {
        let b = load("appchannel", n as u64);
        assert_eq!(b.header.as_ref().unwrap().number, n as u64);
        assert_eq!(&hex(&block::header_hash(b.header.as_ref().unwrap())), want, "block {n}");
    }
}

#[test]
fn data_hashes_and_linkage_match_every_fixture_block() {
    for (channel, count) in [("appchannel", 5u64), ("system-channel", 2)] {
        let mut prev: Option<Block> = None;
        for n in 0..count {
            let b = load(channel, n);
            block::check_data_hash(&b).unwrap_or_else(|e| panic!("{channel}/{n}: {e}"));
            if let Some(p) = &prev {
                assert_eq!(
                    b.header.as_ref().unwrap().previous_hash.as_ref(),
                    block::header_hash(p.header.as_ref().unwrap()),
                    "{channel}/{n} previous_hash"
                );
            }
            prev = Some(b);
        }
    }
}

#[test]
fn envelope_counts_match_the_readme() {
    let counts: Vec<usize> = (0..5).map(|n| load("appchannel", n).data.unwrap().data.len()).collect();
    assert_eq!(counts, vec![1, 500, 500, 203, 7]);
}

#[test]
fn orderer0_signatures_verify() {
    let key = orderer0_key();
    for (channel, from, count) in [("appchannel", 1u64, 5u64), ("system-channel", 1, 2)] {
        for n in from..count {
            let b = load(channel, n);
            assert_eq!(block::verify_block_signature(&b, &key).unwrap_or_else(|e| panic!("{channel}/{n}: {e}")), 1);
            // The signer in the header is orderer0 of OrdererMSP.
            let sigs = block::block_signatures(&b).unwrap();
            let (mspid, k) = signer::identity_key(&sigs.signatures[0].0.creator).unwrap();
            assert_eq!(mspid, "OrdererMSP");
            assert_eq!(k, key);
        }
    }
}

#[test]
fn tampered_block_fails_verification() {
    let key = orderer0_key();
    let mut b = load("appchannel", 4);
    // Change the header: the signature covers it.
    b.header.as_mut().unwrap().number = 5;
    assert!(block::verify_block_signature(&b, &key).is_err());
    // Change the data: the data hash no longer matches.
    let mut b = load("appchannel", 4);
    b.data.as_mut().unwrap().data.pop();
    assert!(block::check_data_hash(&b).is_err());
    // Another orderer's key does not verify orderer0's signature.
    let p = fixtures().join(
        "crypto/ordererOrganizations/example.com/orderers/orderer1.example.com/msp/signcerts/orderer1.example.com-cert.pem",
    );
    let other = signer::cert_public_key(&std::fs::read(p).unwrap()).unwrap();
    assert!(block::verify_block_signature(&load("appchannel", 4), &other).is_err());
}

#[test]
fn orderer_metadata_reads_last_config() {
    for n in 1..5 {
        let m = block::orderer_metadata(&load("appchannel", n)).unwrap();
        assert_eq!(m.last_config.unwrap().index, 0, "block {n}");
    }
}

#[test]
fn our_signing_round_trips_through_fabric_layout() {
    // Re-sign a real Fabric block with the fixture's orderer0 identity: the
    // layout we write verifies with the same rule Fabric's blocks do.
    let dir = fixtures().join("crypto/ordererOrganizations/example.com/orderers/orderer0.example.com/msp");
    let s = signer::Signer::from_msp_dir(&dir, "OrdererMSP").unwrap();
    let mut b = load("appchannel", 3);
    let original = block::orderer_metadata(&b).unwrap();
    b.metadata.as_mut().unwrap().metadata = vec![Bytes::new(); 5];
    block::sign_block(&mut b, 0, &original.consenter_metadata, &s).unwrap();
    assert_eq!(block::verify_block_signature(&b, &orderer0_key()).unwrap(), 1);
    assert_eq!(block::orderer_metadata(&b).unwrap(), original);
}
