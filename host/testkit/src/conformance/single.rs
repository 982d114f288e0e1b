//! The checks for plugins of the single-node world (`consenter`), on the
//! test host: the real runtime and support, a hand-moved clock, blocks in
//! memory. Each check starts its own chain.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::reference::{self, Event, Settings};
use super::{CheckFn, Outcome, Suite, check_ordered, ordered_ids, test_envelope, update, verify_ledger};
use crate::channel::ChannelTemplate;
use crate::envelope::Envelope;
use crate::simnet::SimRng;
use crate::testhost::TestHost;

/// The channel every check's chain is made on.
pub const CHANNEL: &str = "conformance";

pub(crate) fn checks() -> Vec<(&'static str, CheckFn)> {
    vec![
        ("contract", contract),
        ("ordering", ordering),
        ("revalidation", revalidation),
        ("cutter", cutter),
        ("restart", restart),
        ("upgrade", super::clustered::upgrade),
        ("determinism", determinism),
        ("schedules", super::clustered::schedules),
        ("resources", resources),
    ]
}

fn template(s: &Suite, st: Settings) -> ChannelTemplate {
    let mut t = ChannelTemplate::solo(CHANNEL);
    t.consensus_type = s.consensus_type();
    t.consensus_metadata = s.opts.metadata.clone();
    t.batch_size.max_message_count = st.max_message_count;
    t.batch_size.preferred_max_bytes = st.preferred_max_bytes;
    t.batch_timeout = st.batch_timeout;
    t
}

const DEFAULT: Settings =
    Settings { max_message_count: 10, preferred_max_bytes: 16 * 1024, batch_timeout: Duration::from_millis(200) };

/// A chain under test with what was accepted and the last events (for a
/// failure's reason).
struct Driver {
    host: TestHost,
    settings: Settings,
    accepted: Vec<String>,
    events: u64,
    recent: VecDeque<String>,
    /// Wall time spent in calls into the plugin.
    in_calls: Duration,
}

impl Driver {
    fn start(s: &Suite, st: Settings) -> Result<Driver, String> {
        let host = TestHost::start(&s.plugin, &template(s, st), s.signer.clone())
            .map_err(|e| format!("the chain did not start: {e}"))?;
        Ok(Driver {
            host,
            settings: st,
            accepted: Vec::new(),
            events: 0,
            recent: VecDeque::new(),
            in_calls: Duration::ZERO,
        })
    }

    fn note(&mut self, what: String) -> Result<(), String> {
        self.events += 1;
        if self.recent.len() == 8 {
            self.recent.pop_front();
        }
        self.recent.push_back(what);
        match self.host.errored() {
            Some(reason) => Err(format!(
                "the chain failed at event {} ({}): {reason}",
                self.events,
                self.recent.back().map(String::as_str).unwrap_or("")
            )),
            None => Ok(()),
        }
    }

    fn submit(&mut self, tx: &str, size: usize) -> Result<bool, String> {
        let t = Instant::now();
        let ok = self.host.enqueue(test_envelope(CHANNEL, tx, size)).is_ok();
        self.in_calls += t.elapsed();
        if ok {
            self.accepted.push(tx.to_string());
        }
        self.note(format!("enqueue {tx} ({size} B): {}", if ok { "accepted" } else { "refused" }))?;
        Ok(ok)
    }

    fn submit_many(&mut self, txs: &[(String, usize)]) -> Result<(), String> {
        let envs = txs.iter().map(|(tx, size)| test_envelope(CHANNEL, tx, *size)).collect();
        let t = Instant::now();
        let answers = self.host.enqueue_many(envs);
        self.in_calls += t.elapsed();
        for ((tx, _), a) in txs.iter().zip(&answers) {
            if a.is_ok() {
                self.accepted.push(tx.clone());
            }
        }
        let ok = answers.iter().filter(|a| a.is_ok()).count();
        self.note(format!("enqueue-many of {} ({ok} accepted)", txs.len()))
    }

    fn advance(&mut self, d: Duration) -> Result<(), String> {
        let t = Instant::now();
        self.host.advance(d);
        self.in_calls += t.elapsed();
        self.note(format!("advance {} ms", d.as_millis()))
    }

    /// A config update of BatchSize (MaxMessageCount, PreferredMaxBytes);
    /// the batch timeout stays.
    fn configure(&mut self, st: Settings) -> Result<(), String> {
        let cfg = self.host.config().ok_or("the chain has no config")?;
        let u = update::batch_size(&cfg, st.max_message_count, st.preferred_max_bytes);
        let st = Settings { batch_timeout: self.settings.batch_timeout, ..st };
        let t = Instant::now();
        let r = self.host.submit_config_update(u);
        self.in_calls += t.elapsed();
        r.map_err(|e| format!("a config update was not accepted: {e}"))?;
        self.settings = st;
        self.note(format!("config update to {st:?}"))
    }

    /// Waits out the batch timeout twice: whatever was pending is written.
    fn flush(&mut self) -> Result<(), String> {
        let d = self.settings.batch_timeout * 2 + Duration::from_millis(1);
        self.advance(d)?;
        self.advance(d)
    }

    fn verify(&self) -> Result<(), String> {
        let blocks = self.host.blocks();
        verify_ledger(&blocks).map_err(|e| format!("the ledger does not verify: {e}"))?;
        check_ordered(&self.accepted, &ordered_ids(&blocks))
    }
}

fn contract(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    crate::canary::run_on(&s.plugin, s.signer.clone(), &template(s, DEFAULT))
        .map_err(|e| format!("canary (handle-chain, start, halt on a new chain): {}", e.reason))?;
    let mut d = Driver::start(s, DEFAULT)?;
    for k in 0..25 {
        d.submit(&format!("c-{k}"), 300)?;
    }
    d.flush()?;
    d.configure(Settings { max_message_count: 5, ..DEFAULT })?;
    for k in 25..30 {
        d.submit(&format!("c-{k}"), 300)?;
    }
    d.flush()?;
    d.verify()?;
    let refused = d.host.resources().map(|r| r.refusals).unwrap_or(0);
    if refused > 0 {
        return Err(format!("{refused} import calls were refused on the happy path (see the log for which)"));
    }
    d.host.halt();
    Ok(format!(
        "world {}: handle-chain, start, halt in order; 30 envelopes and a config update with no import call refused",
        s.plugin.world().name()
    ))
}

fn seed(s: &Suite) -> u64 {
    s.opts.seed
}

fn ordering(s: &Suite, out: &mut Outcome) -> Result<String, String> {
    let seed = seed(s);
    let mut rng = SimRng::new(seed);
    let mut d = Driver::start(s, DEFAULT)?;
    let streams = ["a", "b", "c"];
    let mut next = [0usize; 3];
    let total = 3_600;
    let mut sent = 0;
    let mut configs = 0;
    let r = (|| -> Result<(), String> {
        while sent < total {
            let group = if rng.below(10) < 3 { 2 + rng.below(5) as usize } else { 1 };
            let mut txs = Vec::new();
            for _ in 0..group.min(total - sent) {
                let st = rng.below(3) as usize;
                txs.push((format!("{}-{}", streams[st], next[st]), 100 + rng.below(1900) as usize));
                next[st] += 1;
                sent += 1;
            }
            if txs.len() == 1 {
                let (tx, size) = &txs[0];
                d.submit(tx, *size)?;
            } else {
                d.submit_many(&txs)?;
            }
            d.advance(Duration::from_millis(rng.below(300)))?;
            if configs < 2 && sent >= total * (configs + 1) / 3 {
                configs += 1;
                let st = if configs == 1 {
                    Settings { max_message_count: 7, preferred_max_bytes: 12 * 1024, ..DEFAULT }
                } else {
                    Settings { max_message_count: 13, preferred_max_bytes: 20 * 1024, ..DEFAULT }
                };
                d.configure(st)?;
            }
        }
        d.flush()?;
        d.verify()
    })();
    if let Err(e) = r {
        out.details.push(format!("seed {seed} (`--seed {seed} --only ordering` reruns it); the last events:"));
        out.details.extend(d.recent.iter().cloned());
        return Err(e);
    }
    let blocks = d.host.blocks();
    let config_blocks = ordered_ids(&blocks).iter().filter(|t| *t == "<config>").count();
    if config_blocks != 2 {
        return Err(format!("2 config updates were accepted but {config_blocks} config envelopes are in blocks"));
    }
    Ok(format!(
        "{} envelopes on 3 streams (seed {seed}) each in exactly one block, in stream order; {} blocks link; 2 \
         config envelopes alone in config blocks",
        d.accepted.len(),
        blocks.len()
    ))
}

fn revalidation(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    let mut d = Driver::start(s, DEFAULT)?;
    // Validated under sequence 0, offered after a config update (sequence
    // 1) that does not change who may write: they pass revalidation and
    // must be ordered.
    let stale = |tx: &str, seq: u64| -> Result<Envelope, String> {
        let mut e = Envelope::parse(test_envelope(CHANNEL, tx, 200)).map_err(|e| e.to_string())?;
        e.config_seq = seq;
        Ok(e)
    };
    for k in 0..3 {
        d.submit(&format!("fresh-{k}"), 200)?;
    }
    d.configure(Settings { max_message_count: 8, ..DEFAULT })?;
    for k in 0..5 {
        let tx = format!("passes-{k}");
        if d.host.enqueue_validated(stale(&tx, 0)?).is_ok() {
            d.accepted.push(tx.clone());
        }
        d.note(format!("enqueue {tx} validated under sequence 0"))?;
    }
    d.flush()?;
    d.verify().map_err(|e| format!("envelopes that pass revalidation: {e}"))?;
    // Then Writers becomes a policy nobody satisfies: what was validated
    // before fails revalidation and must be dropped, not written (the host
    // refuses a block holding an envelope not revalidated).
    let cfg = d.host.config().ok_or("no config")?;
    let before = d.host.sequence();
    d.host.submit_config_update(update::writers_nobody(&cfg)).map_err(|e| format!("the Writers update: {e}"))?;
    d.note("config update: Writers nobody satisfies".into())?;
    d.flush()?;
    if d.host.sequence() != before + 1 {
        return Err("the Writers update was accepted but no config block was written".into());
    }
    for k in 0..5 {
        let tx = format!("fails-{k}");
        let _ = d.host.enqueue_validated(stale(&tx, before)?);
        d.note(format!("enqueue {tx} validated under sequence {before}"))?;
    }
    d.flush()?;
    let ordered = ordered_ids(&d.host.blocks());
    if let Some(t) = ordered.iter().find(|t| t.starts_with("fails-")) {
        return Err(format!("{t}, validated before Writers changed, was written without passing revalidation"));
    }
    d.verify()?;
    Ok("5 envelopes from an older sequence revalidated and ordered; 5 that no longer pass Writers dropped".into())
}

/// One cutter scenario: settings, events, and a name.
struct Scenario {
    name: &'static str,
    settings: Settings,
    events: Vec<Event>,
}

/// A normal event whose envelope carries `data` bytes; the tx id's last
/// part after `/` is that size, so the driver can rebuild the same bytes.
fn normal(tx: &str, data: usize) -> Event {
    let tx = format!("{tx}/{data}");
    let size = Envelope::parse(test_envelope(CHANNEL, &tx, data)).map(|e| e.size).unwrap_or(0);
    Event::Normal { tx, size }
}

/// The data size of a scenario envelope (see [`normal`]).
fn data_size(tx: &str) -> usize {
    tx.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn scenarios(seed: u64) -> Vec<Scenario> {
    let ms = Duration::from_millis;
    let base = Settings { max_message_count: 100, preferred_max_bytes: 1 << 20, batch_timeout: ms(500) };
    let mut rng = SimRng::new(seed);
    let mut v = Vec::new();
    let mut ev: Vec<Event> = (0..25).map(|k| normal(&format!("n-{k}"), 200)).collect();
    ev.push(Event::Advance(ms(500)));
    v.push(Scenario { name: "batch count", settings: Settings { max_message_count: 10, ..base }, events: ev });
    let mut ev: Vec<Event> = (0..30).map(|k| normal(&format!("p-{k}"), 300 + rng.below(1200) as usize)).collect();
    ev.push(Event::Advance(ms(500)));
    v.push(Scenario { name: "preferred bytes", settings: Settings { preferred_max_bytes: 4096, ..base }, events: ev });
    let sizes = [200, 200, 200, 6000, 200, 200, 5000, 5000, 200];
    let mut ev: Vec<Event> = sizes.iter().enumerate().map(|(k, n)| normal(&format!("o-{k}"), *n)).collect();
    ev.push(Event::Advance(ms(500)));
    v.push(Scenario {
        name: "oversized message",
        settings: Settings { preferred_max_bytes: 4096, ..base },
        events: ev,
    });
    let ev = vec![
        normal("t-0", 100),
        Event::Advance(ms(499)),
        Event::Advance(ms(1)),
        normal("t-1", 100),
        Event::Advance(ms(200)),
        normal("t-2", 100),
        Event::Advance(ms(300)),
        Event::Advance(ms(1000)),
    ];
    v.push(Scenario { name: "batch timeout", settings: base, events: ev });
    let mut ev: Vec<Event> = (0..3).map(|k| normal(&format!("g-{k}"), 100)).collect();
    ev.push(Event::Config { settings: Settings { max_message_count: 5, ..base } });
    ev.extend((3..10).map(|k| normal(&format!("g-{k}"), 100)));
    ev.push(Event::Advance(ms(500)));
    v.push(Scenario {
        name: "config message cuts pending",
        settings: Settings { max_message_count: 10, ..base },
        events: ev,
    });
    v
}

fn describe(e: &Event) -> String {
    match e {
        Event::Normal { tx, size } => format!("{tx} of {size} B"),
        Event::Config { .. } => "a config message".into(),
        Event::Advance(d) => format!("{} ms pass", d.as_millis()),
    }
}

fn cutter(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    let mut blocks = 0;
    let list = scenarios(seed(s));
    for sc in &list {
        let want = reference::run(sc.settings, &sc.events);
        let mut d = Driver::start(s, sc.settings)?;
        let mut got = Vec::new();
        for (i, ev) in sc.events.iter().enumerate() {
            let r = match ev {
                Event::Normal { tx, .. } => d.submit(tx, data_size(tx)).map(|_| ()),
                Event::Config { settings } => d.configure(*settings),
                Event::Advance(t) => d.advance(*t),
            };
            r.map_err(|e| format!("{}: {e}", sc.name))?;
            for b in d.host.new_blocks() {
                got.push((i, super::block_txs(&b)));
            }
        }
        for k in 0..want.len().max(got.len()) {
            match (want.get(k), got.get(k)) {
                (Some(w), Some(g)) if w == g => {}
                (Some((wi, wt)), Some((gi, gt))) => {
                    return Err(format!(
                        "{}: block {} differs from Fabric's: Fabric writes {wt:?} after event {wi} ({}), the \
                         plugin wrote {gt:?} after event {gi} ({})",
                        sc.name,
                        k + 1,
                        describe(&sc.events[*wi]),
                        describe(&sc.events[*gi])
                    ));
                }
                (Some((wi, wt)), None) => {
                    return Err(format!(
                        "{}: Fabric writes block {} {wt:?} after event {wi} ({}); the plugin never wrote it",
                        sc.name,
                        k + 1,
                        describe(&sc.events[*wi])
                    ));
                }
                (None, Some((gi, gt))) => {
                    return Err(format!(
                        "{}: the plugin wrote block {} {gt:?} after event {gi} ({}), which Fabric does not write",
                        sc.name,
                        k + 1,
                        describe(&sc.events[*gi])
                    ));
                }
                (None, None) => {}
            }
        }
        blocks += want.len();
    }
    Ok(format!(
        "{} scenarios (batch count, preferred bytes, oversized message, batch timeout, config cuts pending): {blocks} \
         blocks as Fabric's solo writes them, at the same events",
        list.len()
    ))
}

fn restart(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    let mut d = Driver::start(s, DEFAULT)?;
    let mut restarts = 0;
    for round in 0..3 {
        // 153: three are pending when the timer must cut them.
        for k in 0..153 {
            d.submit(&format!("r{round}-{k}"), 400)?;
            if k % 7 == 0 {
                d.advance(Duration::from_millis(30))?;
            }
        }
        d.flush()?;
        let height = d.host.blocks().len();
        d.host.restart().map_err(|e| format!("round {round}: a new instance did not start from the ledger: {e}"))?;
        restarts += 1;
        d.note(format!("restart at height {height}"))?;
    }
    for k in 0..50 {
        d.submit(&format!("last-{k}"), 400)?;
    }
    d.flush()?;
    d.verify().map_err(|e| format!("after {restarts} restarts: {e}"))?;
    Ok(format!(
        "{restarts} restarts from the last block's consenter metadata: {} envelopes, none lost or duplicated, {} \
         blocks link",
        d.accepted.len(),
        d.host.blocks().len()
    ))
}

/// Blocks' shape: tx ids and consenter metadata per block.
type Shape = Vec<(Vec<String>, Vec<u8>)>;

fn determinism(s: &Suite, _: &mut Outcome) -> Result<String, String> {
    let run = || -> Result<Shape, String> {
        let mut rng = SimRng::new(seed(s) ^ 0xD5);
        let mut d = Driver::start(s, DEFAULT)?;
        for k in 0..300 {
            d.submit(&format!("d-{k}"), 100 + rng.below(3000) as usize)?;
            d.advance(Duration::from_millis(rng.below(120)))?;
            if k == 150 {
                d.configure(Settings { max_message_count: 4, ..DEFAULT })?;
            }
        }
        d.flush()?;
        let blocks = d.host.blocks();
        Ok(blocks.iter().map(|b| (super::block_txs(b), crate::block::last_config_and_metadata(b).1)).collect())
    };
    let (a, b) = (run()?, run()?);
    if let Some(h) = (0..a.len().max(b.len())).find(|h| a.get(*h) != b.get(*h)) {
        return Err(format!(
            "the same events gave different blocks: at height {h} the first run wrote {:?}, the second {:?}",
            a.get(h),
            b.get(h)
        ));
    }
    Ok(format!("the same 300 envelopes, timers and config update gave the same {} blocks twice", a.len()))
}

fn resources(s: &Suite, out: &mut Outcome) -> Result<String, String> {
    let mut rng = SimRng::new(seed(s) ^ 0x5E);
    let mut d = Driver::start(s, DEFAULT)?;
    let n = s.opts.long_run.max(2_000);
    let mut samples = Vec::new();
    let (mut max_handles, mut max_held, mut max_timers) = (0, 0, 0);
    let mut sent = 0;
    while sent < n {
        let group = (1 + rng.below(8) as usize).min(n - sent);
        let txs: Vec<(String, usize)> = (0..group).map(|k| (format!("l-{}", sent + k), 1024)).collect();
        sent += group;
        d.submit_many(&txs)?;
        d.advance(Duration::from_millis(rng.below(50)))?;
        let r = d.host.resources().ok_or("the instance ended")?;
        max_handles = max_handles.max(r.handles);
        max_held = max_held.max(r.held_bytes);
        max_timers = max_timers.max(r.timers);
        if sent % 1000 < group {
            d.flush()?;
            samples.push(d.host.resources().ok_or("the instance ended")?);
        }
    }
    d.flush()?;
    d.verify()?;
    let last = d.host.resources().ok_or("the instance ended")?;
    let first = samples.first().copied().unwrap_or(last);
    out.figures.insert("us_per_envelope_in_plugin_calls".into(), d.in_calls.as_secs_f64() * 1e6 / n as f64);
    out.figures.insert("max_handles".into(), max_handles as f64);
    out.figures.insert("max_held_kib".into(), max_held as f64 / 1024.0);
    out.figures.insert("max_timers".into(), max_timers as f64);
    if last.handles > first.handles || last.held_bytes > first.held_bytes || last.timers > first.timers {
        return Err(format!(
            "what the plugin holds grows with the run: idle after {} envelopes it held {} handles, {} bytes, {} \
             timers; after {n}: {} handles, {} bytes, {} timers",
            1000.min(n),
            first.handles,
            first.held_bytes,
            first.timers,
            last.handles,
            last.held_bytes,
            last.timers
        ));
    }
    Ok(format!(
        "{n} envelopes: idle it holds {} handles, {} bytes, {} timers, as after the first 1,000; at most {max_handles} \
         handles and {} KiB held",
        last.handles,
        last.held_bytes,
        last.timers,
        max_held / 1024
    ))
}
