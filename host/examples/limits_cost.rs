//! What the plugin limits cost, counted in instructions rather than timed:
//! the chain path without the ledger (solo in wasm → cutter → block, hash,
//! sign → a sink that drops the block), 1 KiB envelopes in groups of 500,
//! with the default limits or with `Limits::unlimited()`. Run it under
//! callgrind, which counts the same instructions on a busy machine as on
//! an idle one, collecting only inside `ChainCore::enqueue_many`:
//!
//! ```sh
//! cargo build --release -p consenter-host --example limits_cost
//! valgrind --tool=callgrind --toggle-collect='*enqueue_many*' \
//!     target/release/examples/limits_cost default 20000
//! valgrind --tool=callgrind --toggle-collect='*enqueue_many*' \
//!     target/release/examples/limits_cost unlimited 20000
//! ```
//!
//! Figures and the ratio are in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use consenter_host::chain::{ChainCore, ChainStatus};
use consenter_host::channel::{ChannelConfig, ChannelTemplate};
use consenter_host::envelope::{self, Envelope};
use consenter_host::node::embedded;
use consenter_host::proto::common::HeaderType;
use consenter_host::runtime::{Limits, Runtime};
use consenter_host::signer::{self, Signer};
use consenter_host::support::{BlockSink, ChainPosition, Support, SupportLimits, SystemClock};

struct NullSink;
impl BlockSink for NullSink {
    fn write(
        &mut self,
        _number: u64,
        block: Bytes,
        _on_durable: Option<consenter_host::support::OnDurable>,
    ) -> Result<(), String> {
        std::hint::black_box(block);
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let limits = match args.next().as_deref() {
        Some("default") | None => Limits::default(),
        Some("unlimited") => Limits::unlimited(),
        Some(other) => anyhow::bail!("limits {other:?}: expected default or unlimited"),
    };
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let id = signer::ensure_dev_identity(&dir.path().join("id"))?;
    let signer = Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid)?);
    let mut template = ChannelTemplate::solo("bench");
    template.batch_timeout = Duration::from_secs(3600);
    let cfg = Arc::new(ChannelConfig::from_config_block(&template.genesis_block())?);
    let envs: Vec<Envelope> = (0..n)
        .map(|i| {
            let b = envelope::build("bench", HeaderType::Message, &i.to_string(), Bytes::from(vec![7u8; 934]), None)?;
            Ok(Envelope::parse(b)?)
        })
        .collect::<anyhow::Result<_>>()?;
    let rt = Runtime::new(limits)?;
    let solo = rt.load("solo", embedded::get("solo").ok_or_else(|| anyhow::anyhow!("no embedded solo"))?)?;
    let pos = ChainPosition { height: 1, last_hash: [0; 32], last_config: 0 };
    let support =
        Support::new("bench", cfg, signer, Box::new(NullSink), Arc::new(SystemClock), pos, SupportLimits::default());
    let mut core = ChainCore::start(&solo, support, &[], Arc::new(ChainStatus::default()))?;
    for group in envs.chunks(500) {
        for r in core.enqueue_many(group.to_vec()) {
            r?;
        }
    }
    println!("{n} envelopes ordered");
    Ok(())
}
