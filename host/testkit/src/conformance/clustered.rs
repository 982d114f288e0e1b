//! The checks for plugins of the clustered world (`clustered-consenter`),
//! on the simulated network: N instances, a virtual clock, seeded faults.
//!
//! A fault schedule is a [`Plan`] drawn from its seed: the network's
//! faults (drop and duplication rates, delays, snapshot interval) and a
//! list of [`Action`]s (crashes that keep a majority up, restarts,
//! partitions, heals, submissions at nodes, virtual time passing), then a
//! fixed end: every fault heals, every node restarts, envelopes are
//! submitted and must be ordered. Checked on every schedule: safety after
//! every step (every ledger verifies, no two nodes hold different blocks at
//! one height), at the end liveness and no loss (every envelope accepted
//! after the faults healed is ordered by every node within the bound, none
//! twice), and no chain errored. A failing plan is shrunk (actions removed
//! while it still fails) to a shortest trace; the same seed gives the same
//! run, so `--replay SEED` reruns it exactly.

use std::fmt;
use std::time::{Duration, Instant};

use super::{CheckFn, Outcome, Suite, check_ordered, ordered_ids, test_envelope, update};
use crate::simnet::{SimConfig, SimNet, SimRng};

/// The simulated channel.
pub const CHANNEL: &str = "simchannel";

pub(crate) fn checks() -> Vec<(&'static str, CheckFn)> {
    vec![
        ("contract", contract),
        ("ordering", ordering),
        ("restart", restart),
        ("upgrade", upgrade),
        ("swap", swap),
        ("determinism", determinism),
        ("schedules", schedules),
        ("resources", resources),
    ]
}

fn net(s: &Suite, cfg: SimConfig) -> Result<SimNet, String> {
    if !s.plugin.world().is_clustered() {
        // A single-node plugin's schedules: one node, its own channel.
        let mut t = crate::channel::ChannelTemplate::solo(CHANNEL);
        t.consensus_type = s.consensus_type();
        t.consensus_metadata = s.opts.metadata.clone();
        t.batch_size.max_message_count = cfg.max_message_count;
        t.batch_timeout = cfg.batch_timeout;
        let cfg = SimConfig { nodes: 1, consensus_type: t.consensus_type.clone(), ..cfg };
        return SimNet::start_from_genesis(&s.plugin, s.signer.clone(), cfg, t.genesis_block())
            .map_err(|e| format!("the simulated node did not start: {e}"));
    }
    let ty = s.opts.consensus_type.clone().unwrap_or_else(|| "etcdraft".into());
    if ty != "etcdraft" {
        return Err(format!(
            "a clustered plugin is tested on an etcdraft channel (the consenter set the host reads is etcdraft's \
             ConfigMetadata); consensus type {ty:?} names no consenters"
        ));
    }
    let cfg = SimConfig { nodes: s.opts.nodes.max(1), consensus_type: ty, ..cfg };
    SimNet::start(&s.plugin, s.signer.clone(), cfg).map_err(|e| format!("the network did not start: {e}"))
}

fn env(tx: &str) -> bytes::Bytes {
    test_envelope(CHANNEL, tx, 64)
}

/// Submits at node `i` (or the next one up), retrying every 100 ms of
/// virtual time for up to `tries` (a node refuses while it knows no
/// leader). Whether it was accepted.
fn submit_retrying(n: &mut SimNet, i: usize, tx: &str, tries: u32) -> bool {
    for _ in 0..tries {
        let at = (0..n.len()).map(|k| (i + k) % n.len()).find(|k| n.is_up(*k)).unwrap_or(i);
        if n.submit(at, env(tx)) {
            return true;
        }
        n.run_for(Duration::from_millis(100));
    }
    false
}

fn no_errors(n: &SimNet) -> Result<(), String> {
    for i in 0..n.len() {
        if let Some(e) = n.errored(i) {
            return Err(format!("node {i}'s chain failed: {e}"));
        }
    }
    Ok(())
}

fn contract(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    crate::canary::run(&s.plugin, s.signer.clone())
        .map_err(|e| format!("canary (handle-chain, start, halt on a one-consenter channel): {}", e.reason))?;
    let mut n = net(s, SimConfig::default())?;
    n.run_for(Duration::from_secs(5));
    for k in 0..30 {
        let at = k % n.len();
        if !submit_retrying(&mut n, at, &format!("c-{k}"), 50) {
            return Err(format!("no node accepted c-{k} within 5 s of virtual time on a healthy network"));
        }
        n.run_for(Duration::from_millis(20));
    }
    n.run_for(Duration::from_secs(3));
    no_errors(&n)?;
    n.check_safety()?;
    for i in 0..n.len() {
        let refused = n.resources(i).map(|r| r.refusals).unwrap_or(0);
        if refused > 0 {
            return Err(format!("node {i}: {refused} import calls were refused on the happy path (see the log)"));
        }
    }
    Ok(format!(
        "world {}: handle-chain, start, halt in order; {} nodes ordered 30 envelopes with no import call refused",
        s.plugin.world().name(),
        n.len()
    ))
}

fn seed(s: &Suite) -> u64 {
    s.opts.replay.unwrap_or(s.opts.seed)
}

fn ordering(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    let mut rng = SimRng::new(seed(s));
    let mut n = net(s, SimConfig { seed: seed(s), ..SimConfig::default() })?;
    n.run_for(Duration::from_secs(5));
    // One client stream per node (a Broadcast stream goes to one node).
    let streams = n.len().min(3);
    let mut accepted = Vec::new();
    for k in 0..300 {
        let st = rng.below(streams as u64) as usize;
        let tx = format!("s{st}-{k}");
        if n.submit(st, env(&tx)) {
            accepted.push(tx);
        }
        n.run_for(Duration::from_millis(rng.below(20)));
        if k == 150 {
            let cfg = n.config(0).ok_or("node 0 has no config")?;
            let u = update::batch_size(&cfg, 7, cfg.batch_size.preferred_max_bytes);
            match n.submit_config_update(0, u) {
                Ok(true) => {}
                Ok(false) => return Err("node 0 did not accept a config update on a healthy network".into()),
                Err(e) => return Err(format!("a config update was refused: {e}")),
            }
        }
    }
    n.run_for(Duration::from_secs(5));
    no_errors(&n)?;
    n.check_safety()?;
    if accepted.len() < 290 {
        return Err(format!("only {} of 300 envelopes were accepted on a healthy network", accepted.len()));
    }
    for i in 0..n.len() {
        let ids = ordered_ids(&n.blocks(i));
        check_ordered(&accepted, &ids).map_err(|e| format!("node {i}: {e}"))?;
        let configs = ids.iter().filter(|t| *t == "<config>").count();
        if configs != 1 {
            return Err(format!("node {i}: 1 config update was accepted but {configs} config envelopes are in blocks"));
        }
    }
    Ok(format!(
        "{} envelopes on {streams} client streams (one per node) each in exactly one block on all {} nodes, in stream \
         order; one config envelope alone; ledgers identical",
        accepted.len(),
        n.len()
    ))
}

fn restart(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    let mut n = net(s, SimConfig { seed: seed(s) ^ 7, ..SimConfig::default() })?;
    let len = n.len();
    if len < 3 {
        return Err(format!("the restart check needs at least 3 nodes (--nodes {len})"));
    }
    n.run_for(Duration::from_secs(5));
    let mut all = Vec::new();
    let rounds = 2 * len;
    for round in 0..rounds {
        let victim = round % len;
        n.crash(victim);
        // A majority stays up: what it accepts must not be lost.
        n.run_for(Duration::from_secs(4));
        let mut accepted = Vec::new();
        for k in 0..20 {
            let tx = format!("r{round}-{k}");
            let at = (victim + 1 + k % (len - 1)) % len;
            if n.submit(at, env(&tx)) {
                accepted.push(tx);
            }
            n.run_for(Duration::from_millis(10));
        }
        n.run_for(Duration::from_secs(2));
        let survivor = (victim + 1) % len;
        let ids = ordered_ids(&n.blocks(survivor));
        if let Some(t) = accepted.iter().find(|t| !ids.contains(t)) {
            return Err(format!("round {round}: node {victim} down, {} up: {t} was accepted but not ordered", len - 1));
        }
        all.extend(accepted);
        n.restart(victim).map_err(|e| format!("round {round}: node {victim} did not restart: {e}"))?;
        n.run_for(Duration::from_secs(4));
        n.check_safety().map_err(|e| format!("round {round}: {e}"))?;
        no_errors(&n).map_err(|e| format!("round {round}: {e}"))?;
        if n.height(victim) != n.height(survivor) {
            return Err(format!(
                "round {round}: node {victim} restarted at height {} but did not catch up to {}",
                n.height(victim),
                n.height(survivor)
            ));
        }
    }
    for i in 0..len {
        check_ordered(&all, &ordered_ids(&n.blocks(i))).map_err(|e| format!("node {i}: {e}"))?;
    }
    Ok(format!(
        "{rounds} crashes (kill -9, each node in turn): {} envelopes accepted with a majority up, none lost or \
         duplicated; every restarted node caught up",
        all.len()
    ))
}

fn nodes(n: usize) -> String {
    if n == 1 { "1 node".into() } else { format!("{n} nodes") }
}

/// A rolling live upgrade on a healthy network while envelopes flow: each
/// node in turn (a leader too) switches to another instance of the plugin
/// between two events, as a node does when an operator installs a new
/// build (`SimNet::upgrade`: `handover.export-state` or `halt`, then
/// `handle-chain` with the last block's metadata, `import-state`, `start`,
/// the envelopes handed over). Every node must keep one chain with no
/// duplicate and no chain may err; a plugin that exports `handover` must
/// lose nothing it accepted. Without the export, what was lost is reported
/// (what an instance held in its memory dies with it, as at a restart).
pub(crate) fn upgrade(s: &Suite, out: &mut Outcome) -> Result<String, String> {
    let mut n = net(s, SimConfig { seed: seed(s) ^ 11, ..SimConfig::default() })?;
    let len = n.len();
    n.run_for(Duration::from_secs(5));
    let mut accepted = Vec::new();
    let mut handed = 0;
    let submit = |n: &mut SimNet, round: usize, accepted: &mut Vec<String>| {
        // Not a multiple of the batch size: envelopes are pending in the
        // cutter at each switch.
        for k in 0..37 {
            let tx = format!("u{round}-{k}");
            if n.submit(k % len, env(&tx)) {
                accepted.push(tx);
            }
            n.run_for(Duration::from_millis(10));
        }
    };
    submit(&mut n, 0, &mut accepted);
    for i in 0..len {
        match n.upgrade(i, &s.plugin) {
            Ok(Some(h)) => handed += h,
            Ok(None) => return Err(format!("node {i} was down at its upgrade on a healthy network")),
            Err(e) => return Err(format!("node {i}: the new instance did not start: {e}")),
        }
        submit(&mut n, i + 1, &mut accepted);
    }
    n.run_for(Duration::from_secs(5));
    no_errors(&n)?;
    n.check_safety()?;
    let ids = ordered_ids(&n.blocks(0));
    for i in 0..len {
        let other = ordered_ids(&n.blocks(i));
        if other != ids {
            return Err(format!("node {i} ordered other envelopes than node 0 after the upgrades"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(d) = ids.iter().find(|t| !t.starts_with('<') && !seen.insert(*t)) {
        return Err(format!("{d} is in two blocks after the upgrades"));
    }
    let lost: Vec<&String> = accepted.iter().filter(|t| !ids.contains(t)).collect();
    out.figures.insert("handed_over".into(), handed as f64);
    out.figures.insert("lost".into(), lost.len() as f64);
    if s.plugin.has_handover() {
        if let Some(t) = lost.first() {
            return Err(format!(
                "{} of {} envelopes accepted during the upgrades are in no block (first: {t}), though the plugin \
                 exports handover",
                lost.len(),
                accepted.len()
            ));
        }
        return Ok(format!(
            "{} upgraded live in turn under load: {} envelopes accepted, each ordered once on every node; {handed} \
             handed over",
            nodes(len),
            accepted.len()
        ));
    }
    Ok(format!(
        "{} upgraded live in turn under load: one chain, no duplicate, {handed} envelopes handed over; {} of {} \
         accepted envelopes lost (the plugin does not export handover: what an instance holds in its memory dies \
         with it)",
        nodes(len),
        lost.len(),
        accepted.len()
    ))
}

/// A live consensus-type swap on the simulated network, driven by the
/// config block: the channel's type is changed by config update to the
/// plugin under test registered as a second type (`<type>-swapped`), then
/// back, while load runs. Each swap starts the plugin mid-chain as a
/// swap does (`handle-chain` with empty metadata, Fabric's rule after a
/// type change; fresh storage; the envelopes handed over), so the check
/// shows that the plugin can take over a running channel from another
/// clustered consenter. Every node must swap at the same block (a node
/// that misses the switch catches up by pulling blocks), keep one chain
/// with no duplicate and no error, and lose nothing it accepted.
fn swap(s: &Suite, out: &mut Outcome) -> Result<String, String> {
    let ty = s.opts.consensus_type.clone().unwrap_or_else(|| "etcdraft".into());
    let other = s.plugin.with_name(&format!("{ty}-swapped"));
    let len = s.opts.nodes.max(1);
    let cfg = SimConfig { seed: seed(s) ^ 13, nodes: len, consensus_type: ty.clone(), ..SimConfig::default() };
    let genesis = crate::simnet::sim_template(&cfg).genesis_block();
    let this = s.plugin.with_name(&ty);
    let plugins = [other.clone(), this.clone()];
    let mut n = SimNet::start_with_types(&this, &plugins, s.signer.clone(), cfg, genesis)
        .map_err(|e| format!("the network did not start: {e}"))?;
    n.run_for(Duration::from_secs(5));
    let mut accepted = Vec::new();
    let submit = |n: &mut SimNet, round: &str, accepted: &mut Vec<String>| {
        for k in 0..37 {
            let tx = format!("w{round}-{k}");
            if n.submit(k % len, env(&tx)) {
                accepted.push(tx);
            }
            n.run_for(Duration::from_millis(10));
        }
    };
    submit(&mut n, "before", &mut accepted);
    let mut heights = Vec::new();
    for (k, to) in [other.name().to_string(), ty.clone()].into_iter().enumerate() {
        let config = n.config(0).ok_or("node 0 has no config")?;
        let update = update::consensus_type(&config, &to);
        match n.submit_config_update(0, update) {
            Ok(true) => {}
            Ok(false) => return Err(format!("node 0 refused the config update to {to}")),
            Err(e) => return Err(format!("the config update to {to} was refused: {e}")),
        }
        n.run_for(Duration::from_secs(1));
        submit(&mut n, &to, &mut accepted);
        n.run_for(Duration::from_secs(20));
        let at: Vec<Option<u64>> = (0..len).map(|i| n.swaps(i).get(k).map(|w| w.0)).collect();
        match at.first().copied().flatten() {
            Some(h) if at.iter().all(|a| *a == Some(h)) => heights.push(h),
            _ => return Err(format!("the nodes did not all swap to {to} at one block: heights {at:?}")),
        }
        no_errors(&n)?;
    }
    n.check_safety()?;
    let ids = ordered_ids(&n.blocks(0));
    for i in 0..len {
        if ordered_ids(&n.blocks(i)) != ids {
            return Err(format!("node {i} ordered other envelopes than node 0 across the swaps"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(d) = ids.iter().find(|t| !t.starts_with('<') && !seen.insert(*t)) {
        return Err(format!("{d} is in two blocks after the swaps"));
    }
    let lost: Vec<&String> = accepted.iter().filter(|t| !ids.contains(t)).collect();
    out.figures.insert("lost".into(), lost.len() as f64);
    if let Some(t) = lost.first() {
        return Err(format!("{} of {} accepted envelopes are in no block (first: {t})", lost.len(), accepted.len()));
    }
    Ok(format!(
        "{} swapped by config update to {} at block {} and back at block {} under load: one chain, {} envelopes \
         accepted, each ordered once",
        nodes(len),
        other.name(),
        heights[0].saturating_sub(1),
        heights[1].saturating_sub(1),
        accepted.len()
    ))
}

fn determinism(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    let p = plan(seed(s), s.opts.nodes.max(1));
    let a = execute(s, &p, false);
    let b = execute(s, &p, false);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            if a.shapes != b.shapes {
                let node = (0..a.shapes.len()).find(|i| a.shapes[*i] != b.shapes[*i]).unwrap_or(0);
                return Err(format!("schedule {}: the same seed gave different blocks on node {node}", p.seed));
            }
            if a.events != b.events {
                return Err(format!(
                    "schedule {}: the same seed handled {} events once and {} the second time",
                    p.seed, a.events, b.events
                ));
            }
            Ok(format!(
                "schedule {} twice: the same {} blocks on every node and the same {} events",
                p.seed,
                a.shapes.first().map(Vec::len).unwrap_or(0),
                a.events
            ))
        }
        (Err(e), _) | (_, Err(e)) => Err(format!("schedule {} failed: {e}", p.seed)),
    }
}

/// One step of a fault schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Crash a node (kill -9), if it is up and a majority stays up.
    Crash(usize),
    /// Restart every node that is down.
    RestartAll,
    /// Crash a node and restart it at once (kill -9 and a supervisor's
    /// restart), if a majority stays up meanwhile.
    Reboot(usize),
    /// Cut the link between two nodes (both ways).
    Cut(usize, usize),
    /// Heal every cut link.
    HealPartitions,
    /// A client submits an envelope at a node (the next one up if that
    /// node is down).
    Submit(usize, String),
    /// Virtual time passes (ms).
    Run(u64),
    /// A config update adds a consenter (the next node); once a node up
    /// has its config block, the new node joins from it (`channel join`
    /// with that block).
    AddConsenter,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Crash(i) => write!(f, "crash node {i}"),
            Action::RestartAll => write!(f, "restart the nodes that are down"),
            Action::Reboot(i) => write!(f, "reboot node {i}"),
            Action::Cut(a, b) => write!(f, "cut {a} <-> {b}"),
            Action::HealPartitions => write!(f, "heal partitions"),
            Action::Submit(i, tx) => write!(f, "submit {tx} at node {i}"),
            Action::Run(ms) => write!(f, "run {ms} ms"),
            Action::AddConsenter => write!(f, "add a consenter by config update"),
        }
    }
}

/// A fault schedule: the network's faults and the actions, from a seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The network (faults, delays, snapshot interval).
    pub cfg: SimConfig,
    /// The actions before the fixed end.
    pub actions: Vec<Action>,
}

/// The schedule of `seed` on `nodes` nodes.
pub fn plan(seed: u64, nodes: usize) -> Plan {
    let mut rng = SimRng::new(seed);
    let cfg = SimConfig {
        nodes,
        seed,
        drop: rng.unit() * 0.2,
        duplicate: rng.unit() * 0.1,
        max_delay: Duration::from_millis(1 + rng.below(30)),
        snapshot_interval_size: if rng.below(2) == 0 { 4096 } else { 16 << 20 },
        ..SimConfig::default()
    };
    let mut actions = vec![Action::Run(3000)];
    let n = nodes as u64;
    for step in 0..8 {
        match rng.below(5) {
            0 => actions.push(Action::Crash(rng.below(n) as usize)),
            4 => actions.push(Action::Reboot(rng.below(n) as usize)),
            1 => actions.push(Action::RestartAll),
            2 => {
                let (a, b) = (rng.below(n) as usize, rng.below(n) as usize);
                if a != b {
                    actions.push(Action::Cut(a, b));
                }
            }
            _ => actions.push(Action::HealPartitions),
        }
        for k in 0..5 {
            actions.push(Action::Submit(rng.below(n) as usize, format!("s{seed}.{step}.{k}")));
            actions.push(Action::Run(rng.below(50)));
        }
        actions.push(Action::Run(rng.below(2000)));
    }
    // A quarter of the schedules of three nodes or more also grow the
    // consenter set by one, at a step of their own (drawn apart, so the
    // faults of a seed stay what they were).
    let mut grow = SimRng::new(seed ^ 0x6772_6f77);
    if nodes >= 3 && grow.below(4) == 0 {
        let at = 1 + grow.below(actions.len() as u64 - 1) as usize;
        actions.insert(at, Action::AddConsenter);
    }
    Plan { seed, cfg, actions }
}

/// What one schedule did.
#[derive(Debug, Clone, Default)]
pub struct Ran {
    /// Events the simulator handled.
    pub events: u64,
    /// Virtual time simulated.
    pub virtual_time: Duration,
    /// Envelopes accepted while faults were on, and how many of those were
    /// not ordered (lost with a crash, a dropped forward or a deposed
    /// leader's batch; clients resubmit, as with Fabric).
    pub accepted_in_faults: usize,
    /// See `accepted_in_faults`.
    pub lost_in_faults: usize,
    /// Per node, per block, transaction ids.
    pub shapes: Vec<Vec<Vec<String>>>,
    /// The trace, if asked for.
    pub trace: Vec<String>,
}

/// Runs `plan` with the fixed end; Err says what failed, and when.
pub fn execute(s: &Suite, p: &Plan, trace: bool) -> Result<Ran, String> {
    execute_traced(s, p, trace).map_err(|(e, _)| e)
}

fn execute_traced(s: &Suite, p: &Plan, trace: bool) -> Result<Ran, (String, Vec<String>)> {
    let mut lines = Vec::new();
    let mut n = match net(s, p.cfg.clone()) {
        Ok(n) => n,
        Err(e) => return Err((e, lines)),
    };
    let len = n.len();
    let max_down = len.saturating_sub(1) / 2;
    // Nodes of the schedule that are down (a joined consenter is never
    // crashed).
    let down = |n: &SimNet| (0..len).filter(|j| !n.is_up(*j)).count();
    let mut accepted = Vec::new();
    // A consenter added by config update and not joined yet: its index.
    let mut to_join: Option<usize> = None;
    macro_rules! fail {
        ($($t:tt)*) => {{
            let e = format!($($t)*);
            if trace {
                lines.push(format!("FAIL: {e}"));
            }
            return Err((e, lines));
        }};
    }
    for (k, a) in p.actions.iter().enumerate() {
        let outcome = match a {
            Action::Crash(i) => {
                if n.is_up(*i) && down(&n) < max_down {
                    n.crash(*i);
                    "done".to_string()
                } else {
                    "skipped (down already, or a majority must stay up)".into()
                }
            }
            Action::Reboot(i) => {
                // One node alone reboots too (what it had pending is lost).
                if n.is_up(*i) && (down(&n) < max_down || len == 1) {
                    n.crash(*i);
                    if let Err(e) = n.restart(*i) {
                        fail!("action {k} ({a}): node {i} did not restart: {e}");
                    }
                    "done".to_string()
                } else {
                    "skipped (down, or a majority must stay up)".into()
                }
            }
            Action::RestartAll => {
                let mut restarted = Vec::new();
                for i in 0..len {
                    if !n.is_up(i) {
                        if let Err(e) = n.restart(i) {
                            fail!("action {k} ({a}): node {i} did not restart: {e}");
                        }
                        restarted.push(i);
                    }
                }
                format!("restarted {restarted:?}")
            }
            Action::Cut(x, y) => {
                n.partition(*x, *y, true);
                "done".into()
            }
            Action::HealPartitions => {
                n.heal_partitions();
                "done".into()
            }
            Action::Submit(i, tx) => {
                let at = (0..len).map(|d| (i + d) % len).find(|j| n.is_up(*j)).unwrap_or(*i);
                if n.submit(at, env(tx)) {
                    accepted.push(tx.clone());
                    format!("accepted by node {at}")
                } else {
                    format!("refused by node {at}")
                }
            }
            Action::Run(ms) => {
                n.run_for(Duration::from_millis(*ms));
                if let Err(e) = n.check_safety() {
                    fail!("safety, after action {k} ({a}): {e}");
                }
                let joined = match join_when_configured(&mut n, &mut to_join) {
                    Ok(j) => j,
                    Err(e) => fail!("action {k} ({a}): {e}"),
                };
                let heights: Vec<u64> = (0..n.len()).map(|i| n.height(i)).collect();
                format!("heights {heights:?}{joined}")
            }
            Action::AddConsenter => match add_consenter(&mut n, len) {
                Ok(Some(at)) => {
                    to_join = Some(len);
                    format!("update accepted by node {at}")
                }
                Ok(None) => "skipped (no node up takes it)".into(),
                Err(e) => fail!("action {k} ({a}): {e}"),
            },
        };
        if trace {
            lines.push(format!("t={:>8.3}s  {k:>3} {a}: {outcome}", n.elapsed().as_secs_f64()));
        }
    }
    // The fixed end: every fault heals, every node runs.
    n.heal();
    for i in 0..len {
        if !n.is_up(i)
            && let Err(e) = n.restart(i)
        {
            fail!("the end: node {i} did not restart: {e}");
        }
    }
    n.run_for(Duration::from_secs(5));
    // A consenter whose config block came only now joins now (the update
    // may also have been lost with a crash or a deposed leader: the set
    // stays as it was, and a client would submit it again).
    match join_when_configured(&mut n, &mut to_join) {
        Err(e) => fail!("the end: {e}"),
        Ok(joined) if !joined.is_empty() => n.run_for(Duration::from_secs(5)),
        Ok(_) => {}
    }
    let healed_at = n.elapsed();
    let mut last = Vec::new();
    for k in 0..10 {
        let tx = format!("s{}.end.{k}", p.seed);
        if !submit_retrying(&mut n, k % len, &tx, 100) {
            fail!("liveness: 15 s after every fault healed, no node accepts {tx}");
        }
        last.push(tx);
    }
    n.run_for(Duration::from_secs(5));
    if trace {
        let heights: Vec<u64> = (0..n.len()).map(|i| n.height(i)).collect();
        lines.push(format!(
            "t={:>8.3}s  end: healed at {:.3}s, 10 envelopes submitted: heights {heights:?}",
            n.elapsed().as_secs_f64(),
            healed_at.as_secs_f64()
        ));
    }
    if let Err(e) = n.check_safety() {
        fail!("safety, at the end: {e}");
    }
    if let Err(e) = no_errors(&n) {
        fail!("{e}");
    }
    for i in 0..n.len() {
        let ids = ordered_ids(&n.blocks(i));
        if let Err(e) = check_ordered(&last, &ids) {
            fail!("liveness and no loss after healing, node {i}: {e}");
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(d) = ids.iter().find(|t| !t.starts_with('<') && !seen.insert(*t)) {
            fail!("node {i}: {d} is in two blocks");
        }
    }
    let ids = ordered_ids(&n.blocks(0));
    let lost = accepted.iter().filter(|t| !ids.contains(t)).count();
    Ok(Ran {
        events: n.handled,
        virtual_time: n.elapsed(),
        accepted_in_faults: accepted.len(),
        lost_in_faults: lost,
        shapes: n.shapes(),
        trace: lines,
    })
}

/// Submits, at the first node up, a config update whose consenters are
/// nodes `0..=len` (node `len` is new); the node it went to, if one was up
/// and took it.
fn add_consenter(n: &mut SimNet, len: usize) -> Result<Option<usize>, String> {
    let Some(at) = (0..len).find(|j| n.is_up(*j)) else { return Ok(None) };
    let cfg = n.config(at).ok_or("the node has no config")?;
    let entries = (0..=len).map(SimNet::consenter_entry).collect();
    match n.submit_config_update(at, update::consenters(&cfg, entries)) {
        Ok(true) => Ok(Some(at)),
        Ok(false) => Ok(None),
        Err(e) => Err(format!("the consenter update was refused: {e}")),
    }
}

/// Joins the node a config update added, once a node up holds the config
/// block that names it; ", node N joined" when it did.
fn join_when_configured(n: &mut SimNet, to_join: &mut Option<usize>) -> Result<String, String> {
    let Some(new) = *to_join else { return Ok(String::new()) };
    let from = (0..new).find(|j| n.is_up(*j) && n.config(*j).is_some_and(|c| c.consenters.len() > new));
    let Some(from) = from else { return Ok(String::new()) };
    let i = n.join(from).map_err(|e| format!("node {new} did not join: {e}"))?;
    *to_join = None;
    Ok(format!(", node {i} joined from node {from}"))
}

/// Removes actions from a failing plan while it still fails, within
/// `budget` reruns: first every submission at once, then each fault
/// action, then runs of actions ever smaller; then merges consecutive
/// waits. A shortest plan that fails (greedy, not minimal).
pub fn shrink(s: &Suite, p: &Plan, budget: usize) -> Plan {
    let mut best = p.clone();
    let mut runs = 0;
    let try_plan = |cand: Plan, runs: &mut usize| -> Option<Plan> {
        *runs += 1;
        execute(s, &cand, false).is_err().then_some(cand)
    };
    // Every submission at once (the end submits its own).
    let mut cand = best.clone();
    cand.actions.retain(|a| !matches!(a, Action::Submit(..)));
    if cand.actions.len() < best.actions.len()
        && let Some(c) = try_plan(cand, &mut runs)
    {
        best = c;
    }
    // Each fault action on its own.
    let mut i = 0;
    while i < best.actions.len() && runs < budget {
        if matches!(best.actions[i], Action::Run(_)) {
            i += 1;
            continue;
        }
        let mut cand = best.clone();
        cand.actions.remove(i);
        match try_plan(cand, &mut runs) {
            Some(c) => best = c,
            None => i += 1,
        }
    }
    // Chunks, halving.
    let mut chunk = (best.actions.len() / 2).max(1);
    loop {
        let mut i = 0;
        while i < best.actions.len() && runs < budget {
            let mut cand = best.clone();
            let end = (i + chunk).min(cand.actions.len());
            cand.actions.drain(i..end);
            match try_plan(cand, &mut runs) {
                Some(c) => best = c,
                None => i += chunk,
            }
        }
        if chunk == 1 || runs >= budget {
            break;
        }
        chunk /= 2;
    }
    // Consecutive waits as one.
    let mut merged: Vec<Action> = Vec::new();
    for a in &best.actions {
        match (merged.last_mut(), a) {
            (Some(Action::Run(x)), Action::Run(y)) => *x += y,
            _ => merged.push(a.clone()),
        }
    }
    if merged.len() < best.actions.len() && runs < budget + 1 {
        let cand = Plan { actions: merged, ..best.clone() };
        if let Some(c) = try_plan(cand, &mut runs) {
            best = c;
        }
    }
    best
}

/// The `schedules` check (also run for single-node plugins, on one node).
pub(crate) fn schedules(s: &Suite, out: &mut Outcome) -> Result<String, String> {
    let nodes = if s.plugin.world().is_clustered() { s.opts.nodes.max(1) } else { 1 };
    if let Some(seed) = s.opts.replay {
        let p = plan(seed, nodes);
        out.details.push(format!(
            "schedule {seed}: {nodes} nodes, drop {:.3}, duplicate {:.3}, delay {}..{} ms, snapshot every {} B",
            p.cfg.drop,
            p.cfg.duplicate,
            p.cfg.min_delay.as_millis(),
            p.cfg.max_delay.as_millis(),
            p.cfg.snapshot_interval_size
        ));
        let p = if s.plugin.world().is_clustered() { p } else { plan(seed, 1) };
        return match execute_traced(s, &p, true) {
            Ok(r) => {
                out.details.extend(r.trace);
                Ok(format!(
                    "schedule {seed} passed: {} events, {:.1} s virtual",
                    r.events,
                    r.virtual_time.as_secs_f64()
                ))
            }
            Err((e, trace)) => {
                out.details.extend(trace);
                Err(format!("schedule {seed}: {e}"))
            }
        };
    }
    let seeds: Vec<u64> = (s.opts.seed..s.opts.seed + s.opts.schedules).collect();
    let threads = s.opts.threads.clamp(1, 16).min(seeds.len().max(1));
    let started = Instant::now();
    let results: Vec<(u64, Result<Ran, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<u64> = seeds.iter().copied().skip(t).step_by(threads).collect();
                scope.spawn(move || {
                    mine.into_iter().map(|seed| (seed, execute(s, &plan(seed, nodes), false))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect::<Vec<_>>()
    });
    let took = started.elapsed().as_secs_f64();
    let mut failures: Vec<(u64, String)> =
        results.iter().filter_map(|(seed, r)| r.as_ref().err().map(|e| (*seed, e.clone()))).collect();
    failures.sort();
    let ok: Vec<&Ran> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let events: u64 = ok.iter().map(|r| r.events).sum();
    let virt: f64 = ok.iter().map(|r| r.virtual_time.as_secs_f64()).sum();
    out.figures.insert("schedules_per_second".into(), results.len() as f64 / took);
    out.figures.insert("events_per_second".into(), events as f64 / took);
    out.figures.insert("virtual_seconds_per_wall_second".into(), virt / took);
    out.figures.insert("threads".into(), threads as f64);
    let in_faults: usize = ok.iter().map(|r| r.accepted_in_faults).sum();
    let lost: usize = ok.iter().map(|r| r.lost_in_faults).sum();
    out.figures.insert("accepted_during_faults".into(), in_faults as f64);
    out.figures.insert("lost_during_faults".into(), lost as f64);
    if let Some((seed, e)) = failures.first() {
        // The first failure, shrunk to a shortest trace.
        let p = plan(*seed, nodes);
        let short = shrink(s, &p, 60);
        out.details.push(format!("schedule {seed} failed: {e}"));
        out.details.push(format!(
            "shortest failing trace ({} of {} actions; `--replay {seed}` reruns the whole schedule):",
            short.actions.len(),
            p.actions.len()
        ));
        match execute_traced(s, &short, true) {
            Err((_, trace)) => out.details.extend(trace),
            Ok(_) => {
                out.details.push("(the shortened plan passed when traced: the failure is not deterministic)".into())
            }
        }
        for (seed, e) in failures.iter().skip(1).take(9) {
            out.details.push(format!("schedule {seed} failed: {e}"));
        }
        return Err(format!("{} of {} schedules failed; first: schedule {seed}: {e}", failures.len(), results.len()));
    }
    Ok(format!(
        "{} seeded schedules ({}..{}) on {nodes} node{}: no fork, every ledger verifies, everything submitted after \
         healing ordered once ({lost} of {in_faults} envelopes accepted during faults were lost, as Fabric may)",
        results.len(),
        s.opts.seed,
        s.opts.seed + s.opts.schedules.saturating_sub(1),
        if nodes == 1 { "" } else { "s" }
    ))
}

fn resources(s: &Suite, out: &mut Outcome) -> Result<String, String> {
    let mut n = net(s, SimConfig { seed: seed(s) ^ 0x5E, snapshot_interval_size: 64 << 10, ..SimConfig::default() })?;
    n.run_for(Duration::from_secs(5));
    let total = (s.opts.long_run / 5).max(1_000);
    let mut samples = Vec::new();
    let started = Instant::now();
    let events0 = n.handled;
    for k in 0..total {
        let tx = format!("l-{k}");
        let at = k % n.len();
        submit_retrying(&mut n, at, &tx, 20);
        n.run_for(Duration::from_millis(2));
        if k % 250 == 249 {
            n.run_for(Duration::from_secs(2));
            let r: Vec<_> = (0..n.len()).map(|i| n.resources(i).unwrap_or_default()).collect();
            let st: Vec<u64> = (0..n.len()).map(|i| n.storage_bytes(i)).collect();
            samples.push((r, st));
        }
    }
    n.run_for(Duration::from_secs(2));
    no_errors(&n)?;
    n.check_safety()?;
    let took = started.elapsed();
    out.figures.insert("us_per_envelope_all_nodes".into(), took.as_secs_f64() * 1e6 / total as f64);
    out.figures.insert("events".into(), (n.handled - events0) as f64);
    let (first, last) = match (samples.get(1).or(samples.first()), samples.last()) {
        (Some(f), Some(l)) => (f.clone(), l.clone()),
        _ => return Err("no sample was taken".into()),
    };
    let max_storage = samples.iter().flat_map(|(_, st)| st.iter().copied()).max().unwrap_or(0);
    out.figures.insert("max_storage_kib".into(), max_storage as f64 / 1024.0);
    for i in 0..n.len() {
        let (a, b) = (first.0[i], last.0[i]);
        if b.handles > a.handles || b.held_bytes > a.held_bytes || b.timers > a.timers {
            return Err(format!(
                "node {i}: what the plugin holds grows with the run: idle it held {} handles, {} bytes, {} timers, \
                 then {} handles, {} bytes, {} timers",
                a.handles, a.held_bytes, a.timers, b.handles, b.held_bytes, b.timers
            ));
        }
        // The log is compacted once its blocks are in the ledger: storage
        // must not grow with the chain (a factor of 4 of slack).
        if last.1[i] > 4 * first.1[i].max(64 << 10) {
            return Err(format!(
                "node {i}: the plugin's storage grows with the chain: {} B after 500 envelopes, {} B after {total}",
                first.1[i], last.1[i]
            ));
        }
    }
    Ok(format!(
        "{total} envelopes over {} nodes: handles, held bytes and timers idle as after the first 500; storage at most \
         {} KiB (compacted)",
        n.len(),
        max_storage / 1024
    ))
}
