//! Where a chain resumes after a start or a crash: its height, last hash,
//! config in force and the consenter metadata of its last block, read from
//! its ledger.

use std::sync::Arc;

use crate::block::{self, Hash};
use crate::channel::ChannelConfig;
use crate::ledger::{Ledger, LedgerError};
use crate::support::ChainPosition;

/// Where a chain resumes: its position, its configuration (from the last
/// config block) and the consenter metadata of its last block.
pub struct ResumePoint {
    /// Height, last header hash, last config block.
    pub pos: ChainPosition,
    /// The configuration in force.
    pub config: Arc<ChannelConfig>,
    /// The consenter metadata of the last block (handed to `handle-chain`);
    /// empty when that block changed the consensus type.
    pub metadata: Vec<u8>,
}

/// Why a chain's resume point cannot be read from its ledger.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("channel {channel}: {what}")]
    Missing { channel: String, what: String },
    #[error("channel {channel}: {source}")]
    Config { channel: String, source: crate::channel::ConfigError },
}

impl ResumePoint {
    /// Reads the resume point of `channel` from its (non-empty) ledger.
    pub fn read(channel: &str, ledger: &Ledger) -> Result<ResumePoint, ResumeError> {
        let missing = |what: String| ResumeError::Missing { channel: channel.into(), what };
        let height = ledger.height();
        if height == 0 {
            return Err(missing("ledger is empty (no genesis block)".into()));
        }
        let last = ledger.block(height - 1)?.ok_or_else(|| missing(format!("block {} is missing", height - 1)))?;
        let last_hash: Hash =
            last.header.as_ref().map(block::header_hash).ok_or_else(|| missing("last block has no header".into()))?;
        let (last_config, metadata) = block::last_config_and_metadata(&last);
        let config_block =
            ledger.block(last_config)?.ok_or_else(|| missing(format!("config block {last_config} is missing")))?;
        let config = ChannelConfig::from_config_block(&config_block)
            .map_err(|source| ResumeError::Config { channel: channel.into(), source })?;
        let mut metadata = metadata;
        // The last block changed the consensus type (a live swap): the new
        // type's plugin starts without metadata, as Fabric's rule says,
        // also when it restarts before writing a block of its own.
        if last_config == height - 1 && height >= 2 {
            let before = ledger.block(height - 2)?.map(|b| block::last_config_and_metadata(&b).0);
            if let Some(prev) = before.and_then(|n| ledger.block(n).ok().flatten())
                && let Ok(prev) = ChannelConfig::from_config_block(&prev)
                && prev.consensus_type != config.consensus_type
            {
                metadata.clear();
            }
        }
        Ok(ResumePoint { pos: ChainPosition { height, last_hash, last_config }, config: Arc::new(config), metadata })
    }
}
