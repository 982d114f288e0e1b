//! Fabric blocks: creating the next block, header and data hashes, the v2
//! metadata layout and its signatures (protoutil's rules). Pure functions
//! over protobuf values; may touch nothing but hashing and `signer`.

use bytes::Bytes;
use p256::ecdsa::VerifyingKey;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::proto::common::{
    Block, BlockData, BlockHeader, BlockMetadata, BlockMetadataIndex, LastConfig, Metadata, MetadataSignature,
    OrdererBlockMetadata, SignatureHeader,
};
use crate::signer::{Signer, SignerError};

/// Number of metadata slots in a Fabric v2 block (SIGNATURES..COMMIT_HASH).
pub const METADATA_SLOTS: usize = 5;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Errors reading or checking a block.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block has no header")]
    NoHeader,
    #[error("block {number}: data hash {found} does not match the data ({computed})")]
    DataHash { number: u64, found: String, computed: String },
    #[error("block {number}: metadata slot {slot} is not a valid Metadata message: {source}")]
    Metadata { number: u64, slot: usize, source: prost::DecodeError },
    #[error("block {number}: {what}")]
    Signature { number: u64, what: String },
    #[error("signing block {number}: {source}")]
    Sign { number: u64, source: SignerError },
}

/// DER encoding of `SEQUENCE { INTEGER number, OCTET STRING previous_hash,
/// OCTET STRING data_hash }`, as Go's asn1.Marshal writes Fabric's header.
pub fn header_der(header: &BlockHeader) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + header.previous_hash.len() + header.data_hash.len() + 8);
    der_integer(&mut body, header.number);
    der_tlv(&mut body, 0x04, &header.previous_hash);
    der_tlv(&mut body, 0x04, &header.data_hash);
    let mut out = Vec::with_capacity(body.len() + 4);
    der_tlv(&mut out, 0x30, &body);
    out
}

/// Fabric's block header hash: SHA-256 of the DER header.
pub fn header_hash(header: &BlockHeader) -> Hash {
    Sha256::digest(header_der(header)).into()
}

/// Fabric's data hash: SHA-256 of the concatenated envelope bytes.
pub fn data_hash<B: AsRef<[u8]>>(data: &[B]) -> Hash {
    let mut h = Sha256::new();
    for d in data {
        h.update(d.as_ref());
    }
    h.finalize().into()
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    der_len(out, value.len());
    out.extend_from_slice(value);
}

/// Minimal two's-complement big-endian INTEGER (Go encodes uint64 as a
/// signed big integer: a leading 0x00 when the top bit is set).
fn der_integer(out: &mut Vec<u8>, n: u64) {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    let mut v = Vec::with_capacity(9);
    if bytes[skip] & 0x80 != 0 {
        v.push(0);
    }
    v.extend_from_slice(&bytes[skip..]);
    der_tlv(out, 0x02, &v);
}

/// Fabric's `CreateNextBlock`: a block numbered `number` linking to
/// `previous_hash`, holding `envelopes`, with 5 empty metadata slots.
pub fn new_block(number: u64, previous_hash: &[u8], envelopes: Vec<Bytes>) -> Block {
    let data_hash = data_hash(&envelopes);
    Block {
        header: Some(BlockHeader {
            number,
            previous_hash: Bytes::copy_from_slice(previous_hash),
            data_hash: Bytes::copy_from_slice(&data_hash),
        }),
        data: Some(BlockData { data: envelopes }),
        metadata: Some(BlockMetadata { metadata: vec![Bytes::new(); METADATA_SLOTS] }),
    }
}

/// Fills the SIGNATURES and LAST_CONFIG slots as a Fabric v2 orderer does:
/// SIGNATURES = Metadata{value: OrdererBlockMetadata{last_config,
/// consenter_metadata}, signatures: [sig over value ‖ sig header ‖ DER
/// header]}; LAST_CONFIG = Metadata{value: LastConfig{index}} (unsigned,
/// as Fabric 2.x writes it).
pub fn sign_block(
    block: &mut Block,
    last_config: u64,
    consenter_metadata: &[u8],
    signer: &Signer,
) -> Result<(), BlockError> {
    let header = block.header.as_ref().ok_or(BlockError::NoHeader)?;
    let number = header.number;
    let value = OrdererBlockMetadata {
        last_config: Some(LastConfig { index: last_config }),
        consenter_metadata: Bytes::copy_from_slice(consenter_metadata),
    }
    .encode_to_vec();
    let sig_header = signer.new_signature_header().encode_to_vec();
    let mut msg = Vec::with_capacity(value.len() + sig_header.len() + 128);
    msg.extend_from_slice(&value);
    msg.extend_from_slice(&sig_header);
    msg.extend_from_slice(&header_der(header));
    let signature = signer.sign(&msg).map_err(|source| BlockError::Sign { number, source })?;
    let signatures = Metadata {
        value: value.into(),
        signatures: vec![MetadataSignature {
            signature_header: sig_header.into(),
            signature: signature.into(),
            identifier_header: Bytes::new(),
        }],
    };
    let last_config = Metadata { value: LastConfig { index: last_config }.encode_to_vec().into(), signatures: vec![] };
    let md = block.metadata.get_or_insert_with(Default::default);
    md.metadata.resize(METADATA_SLOTS.max(md.metadata.len()), Bytes::new());
    md.metadata[BlockMetadataIndex::Signatures as usize] = signatures.encode_to_vec().into();
    md.metadata[BlockMetadataIndex::LastConfig as usize] = last_config.encode_to_vec().into();
    Ok(())
}

/// Checks that a block's data hash matches its data.
pub fn check_data_hash(block: &Block) -> Result<(), BlockError> {
    let header = block.header.as_ref().ok_or(BlockError::NoHeader)?;
    let empty = Vec::new();
    let data = block.data.as_ref().map(|d| &d.data).unwrap_or(&empty);
    let computed = data_hash(data);
    if header.data_hash.as_ref() != computed {
        return Err(BlockError::DataHash {
            number: header.number,
            found: hex(&header.data_hash),
            computed: hex(&computed),
        });
    }
    Ok(())
}

/// The signatures in a block's SIGNATURES slot and what they sign.
pub struct BlockSignatures {
    /// OrdererBlockMetadata (v2) or legacy value bytes.
    pub value: Bytes,
    /// (signature header, signature) pairs.
    pub signatures: Vec<(SignatureHeader, Bytes)>,
}

/// Reads the SIGNATURES slot.
pub fn block_signatures(block: &Block) -> Result<BlockSignatures, BlockError> {
    let header = block.header.as_ref().ok_or(BlockError::NoHeader)?;
    let number = header.number;
    let slot = block
        .metadata
        .as_ref()
        .and_then(|m| m.metadata.get(BlockMetadataIndex::Signatures as usize))
        .cloned()
        .unwrap_or_default();
    let md = Metadata::decode(slot).map_err(|source| BlockError::Metadata { number, slot: 0, source })?;
    let mut signatures = Vec::with_capacity(md.signatures.len());
    for s in md.signatures {
        let sh = SignatureHeader::decode(s.signature_header.clone())
            .map_err(|e| BlockError::Signature { number, what: format!("signature header does not decode: {e}") })?;
        signatures.push((sh, s.signature));
    }
    Ok(BlockSignatures { value: md.value, signatures })
}

/// The OrdererBlockMetadata a v2 orderer stored in the SIGNATURES slot
/// (last config index and the consenter's metadata).
pub fn orderer_metadata(block: &Block) -> Result<OrdererBlockMetadata, BlockError> {
    let number = block.header.as_ref().map(|h| h.number).unwrap_or_default();
    let sigs = block_signatures(block)?;
    OrdererBlockMetadata::decode(sigs.value).map_err(|source| BlockError::Metadata { number, slot: 0, source })
}

/// Verifies that some signature in the SIGNATURES slot was made by `key`
/// over value ‖ signature header ‖ DER header (the v2 rule). Returns how
/// many signatures verified.
pub fn verify_block_signature(block: &Block, key: &VerifyingKey) -> Result<usize, BlockError> {
    use p256::ecdsa::signature::Verifier;
    let header = block.header.as_ref().ok_or(BlockError::NoHeader)?;
    let number = header.number;
    let sigs = block_signatures(block)?;
    if sigs.signatures.is_empty() {
        return Err(BlockError::Signature { number, what: "no signatures in SIGNATURES metadata".into() });
    }
    let der = header_der(header);
    let mut ok = 0;
    for (sh, sig) in &sigs.signatures {
        let sh_bytes = sh.encode_to_vec();
        let mut msg = Vec::with_capacity(sigs.value.len() + sh_bytes.len() + der.len());
        msg.extend_from_slice(&sigs.value);
        msg.extend_from_slice(&sh_bytes);
        msg.extend_from_slice(&der);
        let Ok(sig) = p256::ecdsa::Signature::from_der(sig) else { continue };
        if sig.normalize_s().is_some() {
            // High-S: Fabric rejects it.
            continue;
        }
        if key.verify(&msg, &sig).is_ok() {
            ok += 1;
        }
    }
    if ok == 0 {
        return Err(BlockError::Signature { number, what: "no signature verifies with the given key".into() });
    }
    Ok(ok)
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// The last-config index and consenter metadata of a block: from the
/// SIGNATURES slot's OrdererBlockMetadata (v2), else the LAST_CONFIG slot,
/// else (a genesis block) 0 and no metadata.
pub fn last_config_and_metadata(b: &Block) -> (u64, Vec<u8>) {
    if let Ok(m) = orderer_metadata(b)
        && let Some(lc) = m.last_config
    {
        return (lc.index, m.consenter_metadata.to_vec());
    }
    let slot = b
        .metadata
        .as_ref()
        .and_then(|m| m.metadata.get(crate::proto::common::BlockMetadataIndex::LastConfig as usize))
        .cloned();
    if let Some(slot) = slot
        && let Ok(md) = crate::proto::common::Metadata::decode(slot)
        && let Ok(lc) = crate::proto::common::LastConfig::decode(md.value)
    {
        return (lc.index, Vec::new());
    }
    (0, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integer_matches_go_asn1() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x02, 0x01, 0x00]),
            (1, &[0x02, 0x01, 0x01]),
            (127, &[0x02, 0x01, 0x7f]),
            (128, &[0x02, 0x02, 0x00, 0x80]),
            (256, &[0x02, 0x02, 0x01, 0x00]),
            (u64::MAX, &[0x02, 0x09, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ];
        for (n, want) in cases {
            let mut out = vec![];
            der_integer(&mut out, *n);
            assert_eq!(&out, want, "INTEGER {n}");
        }
    }

    #[test]
    fn header_der_of_genesis_shape() {
        let h = BlockHeader { number: 0, previous_hash: Bytes::new(), data_hash: Bytes::from(vec![7u8; 32]) };
        let der = header_der(&h);
        assert_eq!(&der[..7], &[0x30, 0x27, 0x02, 0x01, 0x00, 0x04, 0x00]);
        assert_eq!(der[7], 0x04);
        assert_eq!(der[8], 32);
        assert_eq!(der.len(), 2 + 3 + 2 + 2 + 32);
    }

    #[test]
    fn long_form_length() {
        let mut out = vec![];
        der_tlv(&mut out, 0x04, &[0u8; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
