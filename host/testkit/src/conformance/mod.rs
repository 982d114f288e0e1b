//! The conformance suite a consenter's author runs before an operator
//! does: named checks, each a pass or a failure with a one-line reason,
//! over the real runtime and support, in virtual time. Single-node plugins
//! (world `consenter`) run on the test host (`single`), clustered ones
//! (world `clustered-consenter`) on the simulated network (`clustered`),
//! where seeded fault schedules check safety, no loss and liveness; a
//! failing schedule is shrunk to a shortest trace and replays exactly from
//! its seed. `consenter-host conformance PLUGIN.wasm` prints a [`Report`];
//! [`run`] is the same suite for `cargo test` in a plugin's own crate.
//! Touches nothing outside memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use serde::Serialize;

use crate::block;
use crate::envelope::{self, Envelope};
use crate::proto::common::{Block, HeaderType};
use crate::signer::Signer;
use consenter_runtime::Plugin;

pub mod clustered;
pub mod reference;
pub mod single;
pub mod update;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The consensus type the test channels name (default: the plugin's
    /// name, as the node registers it).
    pub consensus_type: Option<String>,
    /// `ConsensusType.metadata` of single-node test channels (clustered
    /// ones carry the simulator's etcdraft consenter set).
    pub metadata: Bytes,
    /// Nodes of the simulated network (clustered plugins).
    pub nodes: usize,
    /// Seed of the seeded checks; schedules use `seed..seed+schedules`.
    pub seed: u64,
    /// Fault schedules to run (clustered plugins).
    pub schedules: u64,
    /// Rerun only this fault schedule, printing its whole trace.
    pub replay: Option<u64>,
    /// Run only the check of this name.
    pub only: Option<String>,
    /// Envelopes of the long run of the `resources` check.
    pub long_run: usize,
    /// Threads running schedules (default: the machine's cores).
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            consensus_type: None,
            metadata: Bytes::new(),
            nodes: 3,
            seed: 1,
            schedules: 100,
            replay: None,
            only: None,
            long_run: 10_000,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The check's name (`contract`, `ordering`, ...).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// One line: what held, or what failed and where.
    pub reason: String,
    /// Wall time the check took.
    pub millis: u64,
    /// Figures the check measured (e.g. `us_per_envelope`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, f64>,
    /// More lines: a failing schedule's seed and shortest trace, a replay's
    /// whole trace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// The suite's verdict on one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The plugin (its consensus type).
    pub plugin: String,
    /// Its contract world (`consenter` or `clustered-consenter`).
    pub world: String,
    /// Every check run, in order.
    pub checks: Vec<CheckResult>,
    /// Checks passed.
    pub passed: usize,
    /// Checks failed.
    pub failed: usize,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.failed == 0 && !self.checks.is_empty()
    }

    /// The check named `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The report as one JSON object (for CI).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report for a terminal: one line per check, details indented,
    /// then a summary.
    pub fn to_text(&self) -> String {
        let mut out = format!("conformance of plugin {} (world {})\n", self.plugin, self.world);
        for c in &self.checks {
            let verdict = if c.passed { "pass" } else { "FAIL" };
            out.push_str(&format!("{verdict} {:<13} {} ({} ms)\n", c.name, c.reason, c.millis));
            for (k, v) in &c.figures {
                out.push_str(&format!("       {k} = {v:.3}\n"));
            }
            for d in &c.details {
                out.push_str(&format!("       {d}\n"));
            }
        }
        out.push_str(&format!("{} passed, {} failed\n", self.passed, self.failed));
        out
    }
}

/// What a check returns: Ok(summary) or Err(reason), with figures and
/// detail lines either way.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Figures measured.
    pub figures: BTreeMap<String, f64>,
    /// Detail lines.
    pub details: Vec<String>,
}

/// A check: name, and the function running it.
pub(crate) type CheckFn = fn(&Suite, &mut Outcome) -> Result<String, String>;

/// What every check gets: the plugin, the signer, the options.
pub struct Suite {
    /// The plugin under test.
    pub plugin: Plugin,
    /// The node identity blocks are signed with.
    pub signer: Arc<Signer>,
    /// The options.
    pub opts: Options,
}

impl Suite {
    /// The consensus type test channels name.
    pub fn consensus_type(&self) -> String {
        self.opts.consensus_type.clone().unwrap_or_else(|| self.plugin.name().to_string())
    }
}

/// The checks run for a plugin of the single-node world, in order.
pub const SINGLE_CHECKS: &[&str] =
    &["contract", "ordering", "revalidation", "cutter", "restart", "upgrade", "determinism", "schedules", "resources"];

/// The checks run for a plugin of the clustered world, in order.
pub const CLUSTERED_CHECKS: &[&str] =
    &["contract", "ordering", "restart", "upgrade", "swap", "determinism", "schedules", "resources"];

/// Runs the suite on `plugin` (loaded as the node loads it: the caller
/// checked its package and limits) with `signer` as the node's identity.
pub fn run(plugin: &Plugin, signer: Arc<Signer>, opts: &Options) -> Report {
    let clustered = plugin.world().is_clustered();
    let checks: Vec<(&str, CheckFn)> = if clustered { clustered::checks() } else { single::checks() };
    let suite = Suite { plugin: plugin.clone(), signer, opts: opts.clone() };
    let mut results = Vec::new();
    let wanted = |name: &str| match (&opts.only, opts.replay) {
        (Some(only), _) => only == name,
        // A replay reruns the seeded check with its whole trace.
        (None, Some(_)) => name == "schedules",
        (None, None) => true,
    };
    for (name, f) in checks {
        if !wanted(name) {
            continue;
        }
        let started = Instant::now();
        let mut outcome = Outcome::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&suite, &mut outcome)))
            .unwrap_or_else(|p| Err(format!("the check panicked: {}", panic_text(&p))));
        let (passed, reason) = match r {
            Ok(s) => (true, s),
            Err(e) => (false, e),
        };
        results.push(CheckResult {
            name: name.to_string(),
            passed,
            reason,
            millis: started.elapsed().as_millis() as u64,
            figures: outcome.figures,
            details: outcome.details,
        });
    }
    let passed = results.iter().filter(|c| c.passed).count();
    Report {
        plugin: plugin.name().to_string(),
        world: if clustered { "clustered-consenter" } else { "consenter" }.into(),
        failed: results.len() - passed,
        passed,
        checks: results,
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// An unsigned normal envelope on `channel` with `size` bytes of data and a
/// fixed timestamp, so the same arguments give the same bytes.
pub fn test_envelope(channel: &str, tx_id: &str, size: usize) -> Bytes {
    let mut data = vec![0u8; size];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(tx_id.len() as u8);
    }
    envelope::build_at(channel, HeaderType::Message, tx_id, data.into(), None, Duration::from_secs(1_700_000_000))
        .unwrap_or_default()
}

/// What a block holds, by transaction id (`<config>` for a CONFIG
/// envelope, `<unparsable>` for bytes that do not parse).
pub fn block_txs(b: &Block) -> Vec<String> {
    b.data
        .as_ref()
        .map(|d| {
            d.data
                .iter()
                .map(|e| match Envelope::parse(e.clone()) {
                    Ok(e) if e.header_type == HeaderType::Config as i32 => "<config>".to_string(),
                    Ok(e) => e.tx_id,
                    Err(_) => "<unparsable>".to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks one ledger: numbers from 0, each block's data hash, each block
/// linked to the one before, a CONFIG envelope only alone in a block whose
/// last-config index names it.
pub fn verify_ledger(blocks: &[Block]) -> Result<(), String> {
    for (h, b) in blocks.iter().enumerate() {
        let hd = b.header.as_ref().ok_or(format!("block {h} has no header"))?;
        if hd.number != h as u64 {
            return Err(format!("the block at height {h} is numbered {}", hd.number));
        }
        block::check_data_hash(b).map_err(|e| format!("block {h}: {e}"))?;
        if h > 0 {
            let prev = blocks[h - 1].header.as_ref().map(block::header_hash).unwrap_or_default();
            if hd.previous_hash.as_ref() != prev {
                return Err(format!("block {h} does not link to block {}", h - 1));
            }
            let txs = block_txs(b);
            if txs.iter().any(|t| t == "<config>") {
                if txs.len() != 1 {
                    return Err(format!("block {h} holds a config envelope among {} envelopes", txs.len()));
                }
                let (last_config, _) = block::last_config_and_metadata(b);
                if last_config != h as u64 {
                    return Err(format!(
                        "block {h} holds a config envelope but names block {last_config} its last config"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks that every id of `accepted` is in `ordered` exactly once and that
/// ids of one stream (the text before the first '-') keep their order.
/// Ok(ids ordered that were not in `accepted`, e.g. config envelopes).
pub fn check_ordered(accepted: &[String], ordered: &[String]) -> Result<(), String> {
    let mut at: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, t) in ordered.iter().enumerate() {
        if t.starts_with('<') {
            continue;
        }
        if at.insert(t.as_str(), i).is_some() {
            return Err(format!("{t} is in two blocks"));
        }
    }
    let mut last_of_stream: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for t in accepted {
        let Some(&pos) = at.get(t.as_str()) else {
            return Err(format!("{t} was accepted but is in no block ({} of {} ordered)", at.len(), accepted.len()));
        };
        let stream = t.split('-').next().unwrap_or("");
        if let Some((prev, prev_tx)) = last_of_stream.insert(stream, (pos, t.as_str()))
            && prev > pos
        {
            return Err(format!("{t} was ordered before {prev_tx}, accepted earlier on the same stream"));
        }
    }
    Ok(())
}

/// Every transaction id of `blocks` after genesis, in order.
pub fn ordered_ids(blocks: &[Block]) -> Vec<String> {
    blocks.iter().skip(1).flat_map(block_txs).collect()
}

/// The consenter metadata of each block (what the plugin wrote with it).
pub fn consenter_metadata(blocks: &[Block]) -> Vec<Vec<u8>> {
    blocks.iter().map(|b| block::last_config_and_metadata(b).1).collect()
}

/// A block's size in bytes, marshalled.
pub fn block_bytes(b: &Block) -> usize {
    b.encoded_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_ordered_names_loss_duplicates_and_reordering() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        check_ordered(&s(&["a-1", "b-1", "a-2"]), &s(&["b-1", "a-1", "<config>", "a-2"])).unwrap();
        assert!(check_ordered(&s(&["a-1", "a-2"]), &s(&["a-1"])).unwrap_err().contains("a-2 was accepted but"));
        assert!(check_ordered(&s(&["a-1"]), &s(&["a-1", "a-1"])).unwrap_err().contains("in two blocks"));
        let e = check_ordered(&s(&["a-1", "a-2"]), &s(&["a-2", "a-1"])).unwrap_err();
        assert!(e.contains("a-2 was ordered before a-1"), "{e}");
    }

    #[test]
    fn test_envelopes_repeat_byte_for_byte() {
        assert_eq!(test_envelope("c", "t-1", 100), test_envelope("c", "t-1", 100));
        let e = Envelope::parse(test_envelope("c", "t-1", 100)).unwrap();
        assert_eq!(e.tx_id, "t-1");
    }
}
