//! Checking and reading ledgers offline.

use crate::*;

#[derive(Subcommand)]
pub(crate) enum LedgerCmd {
    /// Verify ledgers: record checksums, block numbers, the hash chain,
    /// data hashes and every block signature; print each channel's height.
    /// Read-only.
    Verify {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Only this channel (default: every channel).
        #[arg(long)]
        channel: Option<String>,
    },
    /// Print blocks readably: header, hashes, envelopes, signer, metadata.
    Inspect {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The channel.
        #[arg(long)]
        channel: String,
        /// Only this block (default: all).
        #[arg(long)]
        block: Option<u64>,
    },
}

pub(crate) fn channels_of(data_dir: &Path, only: Option<&str>) -> Result<Vec<String>> {
    if let Some(c) = only {
        return Ok(vec![c.to_string()]);
    }
    let dir = node::chains_dir(data_dir);
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

pub(crate) fn verify(data_dir: &Path, only: Option<&str>) -> Result<()> {
    let mut failed = false;
    for ch in channels_of(data_dir, only)? {
        let dir = node::channel_dir(data_dir, &ch);
        match verify_channel(&dir) {
            Ok((height, signers)) => {
                println!("{ch}: OK height {height} (hash chain, data hashes, signatures by {})", signers.join(", "))
            }
            Err(e) => {
                failed = true;
                println!("{ch}: FAILED: {e:#}");
            }
        }
    }
    if failed {
        bail!("ledger verification failed");
    }
    Ok(())
}

/// Verifies one ledger; returns its height and the MSP ids that signed.
pub(crate) fn verify_channel(dir: &Path) -> Result<(u64, Vec<String>)> {
    let height = ledger::verify_dir(dir)?;
    let mut signers = std::collections::BTreeSet::new();
    // verify_dir checked the hash chain; now check every block signature
    // (each against the certificate in its signature header).
    for (n, bytes) in read_blocks(dir)?.into_iter().enumerate() {
        let b = Block::decode(bytes).with_context(|| format!("block {n} does not decode"))?;
        let sigs = block::block_signatures(&b)?;
        if sigs.signatures.is_empty() {
            if n == 0 {
                continue; // a genesis block made by configtxgen is unsigned
            }
            bail!("block {n} has no signature");
        }
        for (sh, _) in &sigs.signatures {
            let (mspid, key) = signer::identity_key(&sh.creator).map_err(|e| anyhow::anyhow!("block {n}: {e}"))?;
            block::verify_block_signature(&b, &key)?;
            signers.insert(mspid);
        }
    }
    Ok((height, signers.into_iter().collect()))
}

/// Every block of a ledger, after a read-only check (a torn tail is
/// reported, not repaired: the node repairs it when it next opens).
pub(crate) fn read_blocks(dir: &Path) -> Result<Vec<Bytes>> {
    ledger::verify_dir(dir).with_context(|| format!("checking {}", dir.display()))?;
    let l = ledger::Ledger::open(dir).with_context(|| format!("opening {} (is a node using it?)", dir.display()))?;
    l.iter_from(0).map(|b| b.map_err(anyhow::Error::from)).collect()
}

pub(crate) fn inspect(data_dir: &Path, channel: &str, only: Option<u64>) -> Result<()> {
    let dir = node::channel_dir(data_dir, channel);
    for (n, bytes) in read_blocks(&dir)?.into_iter().enumerate() {
        let n = n as u64;
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let size = bytes.len();
        let b = Block::decode(bytes).with_context(|| format!("block {n} does not decode"))?;
        let h = b.header.clone().unwrap_or_default();
        let data = b.data.as_ref().map(|d| d.data.clone()).unwrap_or_default();
        println!("block {}  ({size} bytes)", h.number);
        println!("  header hash:   {}", hex(&block::header_hash(&h)));
        println!("  previous hash: {}", hex(&h.previous_hash));
        println!("  data hash:     {}", hex(&h.data_hash));
        println!("  envelopes:     {}", data.len());
        for (i, d) in data.iter().enumerate().take(5) {
            match Envelope::parse(d.clone()) {
                Ok(e) => println!(
                    "    [{i}] type {} channel {} tx {:?} {} bytes",
                    e.header_type, e.channel_id, e.tx_id, e.size
                ),
                Err(e) => println!("    [{i}] undecodable: {e}"),
            }
        }
        if data.len() > 5 {
            println!("    ... {} more", data.len() - 5);
        }
        let (last_config, consenter_md) = node::last_config_and_metadata(&b);
        println!("  last config:   {last_config}");
        println!("  consenter metadata: {} bytes", consenter_md.len());
        if let Ok(s) = block::block_signatures(&b) {
            for (sh, sig) in &s.signatures {
                let who = signer::identity_key(&sh.creator).map(|(m, _)| m).unwrap_or_else(|e| format!("? ({e})"));
                println!("  signed by:     {who} ({} byte signature)", sig.len());
            }
        }
    }
    Ok(())
}
