//! The reference run of the `cutter` check: Fabric's solo chain
//! (orderer/consensus/solo, `main`) over Fabric's block cutter
//! (orderer/common/blockcutter, `Ordered` and `Cut`), written out natively
//! from Fabric's code so that a plugin's blocks can be compared with it
//! block by block, event by event. Pure: no runtime, no clock but the one
//! the events carry.

use std::time::Duration;

/// One event of a cutter scenario.
#[derive(Debug, Clone)]
pub enum Event {
    /// A normal envelope: its transaction id and its size as the cutter
    /// counts it (payload and signature bytes).
    Normal { tx: String, size: u32 },
    /// A config envelope (a CONFIG_UPDATE the host turned into one); the
    /// new batch settings take effect after its block.
    Config { settings: Settings },
    /// Virtual time passes.
    Advance(Duration),
}

/// The batch settings of the channel (Fabric's `BatchSize`, `BatchTimeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `MaxMessageCount`.
    pub max_message_count: u32,
    /// `PreferredMaxBytes`.
    pub preferred_max_bytes: u32,
    /// `BatchTimeout`.
    pub batch_timeout: Duration,
}

/// A block of the reference run: after which event (its index) it was
/// written, and its transaction ids (`<config>` for a config block).
pub type Written = (usize, Vec<String>);

/// Fabric's solo over Fabric's cutter.
struct Solo {
    settings: Settings,
    pending: Vec<String>,
    pending_bytes: u32,
    /// When the batch timer fires, in virtual time since the start.
    timer: Option<Duration>,
    now: Duration,
}

impl Solo {
    /// `blockcutter.Ordered`: the batches cut, and whether a batch is
    /// pending afterwards.
    fn ordered(&mut self, tx: String, size: u32) -> (Vec<Vec<String>>, bool) {
        let mut batches = Vec::new();
        if size > self.settings.preferred_max_bytes {
            if !self.pending.is_empty() {
                batches.push(self.cut());
            }
            batches.push(vec![tx]);
            return (batches, false);
        }
        if self.pending_bytes + size > self.settings.preferred_max_bytes {
            batches.push(self.cut());
        }
        self.pending.push(tx);
        self.pending_bytes += size;
        if self.pending.len() as u32 >= self.settings.max_message_count {
            batches.push(self.cut());
            return (batches, false);
        }
        (batches, true)
    }

    fn cut(&mut self) -> Vec<String> {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }
}

/// Runs `events` through Fabric's solo with `settings` at the start; the
/// blocks written, each with the index of the event after which it was.
pub fn run(settings: Settings, events: &[Event]) -> Vec<Written> {
    let mut s = Solo { settings, pending: Vec::new(), pending_bytes: 0, timer: None, now: Duration::ZERO };
    let mut out = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        match ev {
            Event::Normal { tx, size } => {
                let (batches, pending) = s.ordered(tx.clone(), *size);
                for b in batches {
                    out.push((i, b));
                }
                match (s.timer.is_some(), pending) {
                    (true, false) => s.timer = None,
                    (false, true) => s.timer = Some(s.now + s.settings.batch_timeout),
                    _ => {}
                }
            }
            Event::Config { settings } => {
                let batch = s.cut();
                if !batch.is_empty() {
                    out.push((i, batch));
                }
                out.push((i, vec!["<config>".into()]));
                s.settings = *settings;
                s.timer = None;
            }
            Event::Advance(d) => {
                let until = s.now + *d;
                if let Some(t) = s.timer
                    && t <= until
                {
                    s.now = t;
                    s.timer = None;
                    let batch = s.cut();
                    if !batch.is_empty() {
                        out.push((i, batch));
                    }
                }
                s.now = until;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(tx: &str, size: u32) -> Event {
        Event::Normal { tx: tx.into(), size }
    }

    const S: Settings =
        Settings { max_message_count: 3, preferred_max_bytes: 100, batch_timeout: Duration::from_millis(500) };

    #[test]
    fn count_bytes_oversize_timeout_and_config_cut_as_fabric() {
        let ms = Duration::from_millis;
        let events = vec![
            n("a", 10),
            n("b", 10),
            n("c", 10), // count: [a b c] after event 2
            n("d", 60),
            n("e", 60),              // bytes: [d] after event 4, e pending
            n("big", 200),           // oversized: [e], [big]
            n("f", 10),              // pending, timer at now + 500 ms
            Event::Advance(ms(499)), // not yet
            Event::Advance(ms(1)),   // [f] by the timer after event 8
            n("g", 10),
            Event::Config { settings: S }, // [g], [<config>]
            Event::Advance(ms(1000)),      // nothing pending
        ];
        let got = run(S, &events);
        let want: Vec<Written> = vec![
            (2, vec!["a".into(), "b".into(), "c".into()]),
            (4, vec!["d".into()]),
            (5, vec!["e".into()]),
            (5, vec!["big".into()]),
            (8, vec!["f".into()]),
            (10, vec!["g".into()]),
            (10, vec!["<config>".into()]),
        ];
        assert_eq!(got, want);
    }
}
