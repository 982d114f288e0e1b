//! Checking blocks that come from another orderer before they are kept
//! (Fabric's cluster `VerifyBlocks` and `BlockSignatureVerifier`): each
//! block must be the next number, link to the previous block's header
//! hash, carry the data its data hash names, and have SIGNATURES metadata
//! that satisfies the channel's `/Channel/Orderer/BlockValidation` policy
//! (each signature over value ‖ signature header ‖ DER header, by an
//! identity valid in the channel's MSPs). Block 0 may be unsigned, as a
//! configtxgen genesis block is. A config block that passes becomes the
//! config later blocks are checked against. Pure: no I/O.

use prost::Message;

use crate::block::{self, Hash, hex};
use crate::channel::ChannelConfig;
use crate::policy::SignedData;
use crate::proto::common::{Block, BlockMetadataIndex, ChannelHeader, Envelope, HeaderType, Metadata, Payload};

/// The policy a block's signatures must satisfy.
pub const BLOCK_VALIDATION: &str = "/Channel/Orderer/BlockValidation";

/// Why a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The block has no header.
    #[error("block has no header (expected block {expected})")]
    NoHeader {
        /// The number expected.
        expected: u64,
    },
    /// The block has no data.
    #[error("block {number} has no data")]
    NoData {
        /// Its number.
        number: u64,
    },
    /// Not the block expected next.
    #[error("got block {got} where block {expected} was expected")]
    Number {
        /// The number expected.
        expected: u64,
        /// The number it has.
        got: u64,
    },
    /// Its previous_hash is not the previous block's header hash.
    #[error("block {number}: previous hash {found} is not the header hash {expected} of block {}", number.saturating_sub(1))]
    PreviousHash {
        /// Its number.
        number: u64,
        /// The previous block's header hash.
        expected: String,
        /// What it says.
        found: String,
    },
    /// Its data hash does not match its data.
    #[error("block {number}: data hash {claimed} does not match its data ({computed})")]
    DataHash {
        /// Its number.
        number: u64,
        /// The header's data hash.
        claimed: String,
        /// The hash of the data.
        computed: String,
    },
    /// Its signatures do not satisfy the BlockValidation policy.
    #[error("block {number}: signatures do not satisfy {BLOCK_VALIDATION}: {reason}")]
    Signatures {
        /// Its number.
        number: u64,
        /// Why.
        reason: String,
    },
    /// A config block whose config cannot be read.
    #[error("config block {number}: {reason}")]
    Config {
        /// Its number.
        number: u64,
        /// Why.
        reason: String,
    },
}

/// Checks consecutive blocks of one channel.
#[derive(Debug, Clone)]
pub struct BlockVerifier {
    config: ChannelConfig,
    next: u64,
    previous: Option<Hash>,
}

impl BlockVerifier {
    /// Checks blocks from `next` on under `config` (the channel's config
    /// as of block `next - 1`; for block 0, the genesis block's own).
    /// `previous_hash` is the header hash of block `next - 1`, if known;
    /// if not, the first block's previous_hash is taken as it is.
    pub fn new(config: ChannelConfig, next: u64, previous_hash: Option<Hash>) -> BlockVerifier {
        BlockVerifier { config, next, previous: previous_hash }
    }

    /// The number of the block expected next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The header hash of the last block verified (or given).
    pub fn previous_hash(&self) -> Option<Hash> {
        self.previous
    }

    /// The config blocks are checked against now.
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// Checks `block`; if it passes it is the new previous block (and, a
    /// config block, the new config).
    pub fn verify(&mut self, block: &Block) -> Result<(), VerifyError> {
        let expected = self.next;
        let header = block.header.as_ref().ok_or(VerifyError::NoHeader { expected })?;
        let number = header.number;
        if number != expected {
            return Err(VerifyError::Number { expected, got: number });
        }
        let data = block.data.as_ref().ok_or(VerifyError::NoData { number })?;
        if let Some(prev) = &self.previous
            && header.previous_hash.as_ref() != prev
        {
            return Err(VerifyError::PreviousHash { number, expected: hex(prev), found: hex(&header.previous_hash) });
        }
        let computed = block::data_hash(&data.data);
        if header.data_hash.as_ref() != computed {
            return Err(VerifyError::DataHash { number, claimed: hex(&header.data_hash), computed: hex(&computed) });
        }
        match check_signatures(&self.config, block, number) {
            Ok(()) => {}
            // Genesis blocks are not signed (Fabric skips the error too).
            Err(_) if number == 0 => {}
            Err(e) => return Err(e),
        }
        if let Some(cfg) = config_of(block, number)? {
            self.config = cfg;
        }
        self.previous = Some(block::header_hash(header));
        self.next = number.saturating_add(1);
        Ok(())
    }
}

fn check_signatures(cfg: &ChannelConfig, block: &Block, number: u64) -> Result<(), VerifyError> {
    let err = |reason: String| VerifyError::Signatures { number, reason };
    let header = block.header.as_ref().ok_or(VerifyError::NoHeader { expected: number })?;
    let slot = block
        .metadata
        .as_ref()
        .and_then(|m| m.metadata.get(BlockMetadataIndex::Signatures as usize))
        .ok_or_else(|| err("no signatures in block metadata".into()))?;
    let md = Metadata::decode(slot.clone()).map_err(|e| err(format!("SIGNATURES metadata does not decode: {e}")))?;
    let header_der = block::header_der(header);
    let mut signed = Vec::with_capacity(md.signatures.len());
    for s in &md.signatures {
        let sh = crate::proto::common::SignatureHeader::decode(s.signature_header.clone())
            .map_err(|e| err(format!("a signature header does not decode: {e}")))?;
        let mut data = Vec::with_capacity(md.value.len() + s.signature_header.len() + header_der.len());
        data.extend_from_slice(&md.value);
        data.extend_from_slice(&s.signature_header);
        data.extend_from_slice(&header_der);
        signed.push((sh.creator, data, s.signature.clone()));
    }
    let sd: Vec<SignedData> =
        signed.iter().map(|(id, data, sig)| SignedData { data, identity: id, signature: sig }).collect();
    cfg.policies.evaluate(BLOCK_VALIDATION, &sd).map_err(|e| err(e.to_string()))
}

/// The config a block carries, if it is a config block.
fn config_of(block: &Block, number: u64) -> Result<Option<ChannelConfig>, VerifyError> {
    let Some(first) = block.data.as_ref().and_then(|d| d.data.first()) else { return Ok(None) };
    let is_config = Envelope::decode(first.clone())
        .ok()
        .and_then(|e| Payload::decode(e.payload).ok())
        .and_then(|p| p.header)
        .and_then(|h| ChannelHeader::decode(h.channel_header).ok())
        .is_some_and(|ch| ch.r#type == HeaderType::Config as i32);
    if !is_config {
        return Ok(None);
    }
    ChannelConfig::from_config_block(block).map(Some).map_err(|e| VerifyError::Config { number, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn ledger(n: u64) -> Block {
        let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../shared/fixtures/fabric/ledger/appchannel/{n}.block"));
        Block::decode(bytes::Bytes::from(std::fs::read(p).unwrap())).unwrap()
    }

    fn verifier() -> BlockVerifier {
        let genesis = ledger(0);
        BlockVerifier::new(ChannelConfig::from_config_block(&genesis).unwrap(), 0, None)
    }

    #[test]
    fn fabric_blocks_verify() {
        let mut v = verifier();
        for n in 0..5 {
            v.verify(&ledger(n)).unwrap_or_else(|e| panic!("block {n}: {e}"));
        }
        assert_eq!(v.next(), 5);
        assert_eq!(
            hex(&v.previous_hash().unwrap()),
            "97f79862133f9fc7d0bf1b578aaf4125b12a093df23ab672915843567dcdf051"
        );
    }

    #[test]
    fn tampered_blocks_say_why() {
        let mut v = verifier();
        v.verify(&ledger(0)).unwrap();
        // Skipping a block.
        assert_eq!(v.verify(&ledger(2)).unwrap_err(), VerifyError::Number { expected: 1, got: 2 });
        // Changed data.
        let mut b = ledger(1);
        let d = &mut b.data.as_mut().unwrap().data[7];
        let mut bytes = d.to_vec();
        bytes[40] ^= 1;
        *d = bytes.into();
        assert!(matches!(v.verify(&b), Err(VerifyError::DataHash { number: 1, .. })));
        // Another previous hash.
        let mut b = ledger(1);
        b.header.as_mut().unwrap().previous_hash = vec![0u8; 32].into();
        let e = v.verify(&b).unwrap_err();
        assert!(matches!(e, VerifyError::PreviousHash { number: 1, .. }), "{e}");
        // No signature.
        let mut b = ledger(1);
        b.metadata.as_mut().unwrap().metadata[0] = Metadata::default().encode_to_vec().into();
        let e = v.verify(&b).unwrap_err().to_string();
        assert!(e.contains("block 1: signatures do not satisfy /Channel/Orderer/BlockValidation"), "{e}");
        assert!(e.contains("0 sub-policies were satisfied"), "{e}");
        // Nothing was accepted meanwhile: block 1 as it is passes.
        v.verify(&ledger(1)).unwrap();
        // A signature over another header (block 2's signature on a
        // block 2 whose data was replaced by block 3's, hash fixed up).
        let mut b = ledger(2);
        b.data = ledger(3).data;
        let data = b.data.as_ref().unwrap().data.clone();
        b.header.as_mut().unwrap().data_hash = block::data_hash(&data).to_vec().into();
        let e = v.verify(&b).unwrap_err();
        assert!(matches!(e, VerifyError::Signatures { number: 2, .. }), "{e}");
    }
}
