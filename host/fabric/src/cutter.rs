//! Fabric's block cutter (orderer/common/blockcutter) with its exact rules.
//! A pure state machine: no I/O, no clock (the batch timer belongs to the
//! plugin, through the host's timers). May touch nothing.

use crate::proto::orderer::BatchSize;

/// Anything with a size as the block cutter counts it.
pub trait MessageSize {
    /// len(payload) + len(signature) of the envelope.
    fn message_size(&self) -> u32;
}

/// The pending batch and Fabric's cutting rules.
#[derive(Debug)]
pub struct BlockCutter<T> {
    pending: Vec<T>,
    pending_bytes: u64,
}

impl<T> Default for BlockCutter<T> {
    fn default() -> Self {
        BlockCutter { pending: Vec::new(), pending_bytes: 0 }
    }
}

/// Result of `ordered`: up to two batches to write now, and whether
/// messages remain pending.
#[derive(Debug)]
pub struct Ordered<T> {
    pub batches: Vec<Vec<T>>,
    pub pending: bool,
}

impl<T: MessageSize> BlockCutter<T> {
    /// Fabric's `Ordered(msg)` under `batch` (read per call, since a config
    /// update may change it):
    /// 1. size > PreferredMaxBytes: cut the pending batch (if any); the
    ///    message is a batch alone; nothing pending.
    /// 2. pending bytes + size > PreferredMaxBytes: cut pending first.
    /// 3. add; if count >= MaxMessageCount: cut.
    pub fn ordered(&mut self, msg: T, batch: &BatchSize) -> Ordered<T> {
        let size = u64::from(msg.message_size());
        let preferred = u64::from(batch.preferred_max_bytes);
        let mut batches = Vec::new();
        if size > preferred {
            if !self.pending.is_empty() {
                batches.push(self.cut());
            }
            batches.push(vec![msg]);
            return Ordered { batches, pending: false };
        }
        if self.pending_bytes + size > preferred {
            batches.push(self.cut());
        }
        self.pending.push(msg);
        self.pending_bytes += size;
        let mut pending = true;
        if self.pending.len() as u64 >= u64::from(batch.max_message_count) {
            batches.push(self.cut());
            pending = false;
        }
        Ordered { batches, pending }
    }

    /// Fabric's `Cut()`: the pending batch (empty if nothing is pending).
    pub fn cut(&mut self) -> Vec<T> {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }

    /// Number of pending messages.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct M(u32, &'static str);
    impl MessageSize for M {
        fn message_size(&self) -> u32 {
            self.0
        }
    }

    fn bs(count: u32, preferred: u32) -> BatchSize {
        BatchSize { max_message_count: count, absolute_max_bytes: 10 * 1024 * 1024, preferred_max_bytes: preferred }
    }

    /// (name, batch size, messages offered in order, expected batches (by
    /// label) after the last offer, expected pending flag of the last
    /// offer, expected labels left pending).
    type Case = (&'static str, BatchSize, Vec<M>, Vec<Vec<&'static str>>, bool, Vec<&'static str>);

    fn labels(b: &[M]) -> Vec<&'static str> {
        b.iter().map(|m| m.1).collect()
    }

    #[test]
    fn fabric_rules_table() {
        let cases: Vec<Case> = vec![
            ("first small message pends", bs(3, 100), vec![M(10, "a")], vec![], true, vec!["a"]),
            (
                "count reached cuts",
                bs(3, 100),
                vec![M(10, "a"), M(10, "b"), M(10, "c")],
                vec![vec!["a", "b", "c"]],
                false,
                vec![],
            ),
            ("count 1 cuts every message", bs(1, 100), vec![M(10, "a")], vec![vec!["a"]], false, vec![]),
            (
                "overflowing preferred cuts pending first, new one pends",
                bs(10, 100),
                vec![M(60, "a"), M(50, "b")],
                vec![vec!["a"]],
                true,
                vec!["b"],
            ),
            (
                "exactly preferred does not overflow",
                bs(10, 100),
                vec![M(60, "a"), M(40, "b")],
                vec![],
                true,
                vec!["a", "b"],
            ),
            ("message equal to preferred is not oversized", bs(10, 100), vec![M(100, "a")], vec![], true, vec!["a"]),
            (
                "oversized alone with nothing pending",
                bs(10, 100),
                vec![M(101, "big")],
                vec![vec!["big"]],
                false,
                vec![],
            ),
            (
                "oversized cuts pending then goes alone (two batches)",
                bs(10, 100),
                vec![M(10, "a"), M(101, "big")],
                vec![vec!["a"], vec!["big"]],
                false,
                vec![],
            ),
            (
                "pending resumes after a count cut",
                bs(2, 100),
                vec![M(1, "a"), M(1, "b"), M(1, "c")],
                vec![],
                true,
                vec!["c"],
            ),
            ("zero-size messages count", bs(2, 100), vec![M(0, "a"), M(0, "b")], vec![vec!["a", "b"]], false, vec![]),
        ];
        for (name, batch, msgs, want_batches, want_pending, want_left) in cases {
            let mut c = BlockCutter::default();
            let mut last = None;
            for m in msgs {
                last = Some(c.ordered(m, &batch));
            }
            let r = last.unwrap();
            let got: Vec<Vec<&str>> = r.batches.iter().map(|b| labels(b)).collect();
            assert_eq!(got, want_batches, "{name}: batches");
            assert_eq!(r.pending, want_pending, "{name}: pending flag");
            assert_eq!(labels(&c.cut()), want_left, "{name}: left pending");
        }
    }

    #[test]
    fn overflow_and_count_cut_in_same_call() {
        // pending [a(60)], then b(50) with max count 1 → cut [a] for bytes,
        // add b, count 1 >= 1 → cut [b]: the two-batch maximum.
        let mut c = BlockCutter::default();
        let b = bs(2, 100);
        assert!(c.ordered(M(60, "a"), &b).batches.is_empty());
        let r = c.ordered(M(50, "b"), &bs(1, 100));
        assert_eq!(r.batches.iter().map(|x| labels(x)).collect::<Vec<_>>(), vec![vec!["a"], vec!["b"]]);
        assert!(!r.pending);
    }

    #[test]
    fn cut_resets_bytes_and_empty_cut_is_empty() {
        let mut c = BlockCutter::default();
        let b = bs(10, 100);
        assert!(c.cut().is_empty());
        c.ordered(M(90, "a"), &b);
        assert_eq!(labels(&c.cut()), vec!["a"]);
        // Had pending bytes not been reset, 90 + 20 > 100 would cut here.
        let r = c.ordered(M(20, "b"), &b);
        assert!(r.batches.is_empty());
        assert_eq!(c.pending_len(), 1);
    }

    #[test]
    fn batch_size_change_applies_to_next_offer() {
        let mut c = BlockCutter::default();
        for l in ["a", "b"] {
            assert!(c.ordered(M(1, l), &bs(5, 100)).batches.is_empty());
        }
        let r = c.ordered(M(1, "c"), &bs(3, 100));
        assert_eq!(r.batches.iter().map(|x| labels(x)).collect::<Vec<_>>(), vec![vec!["a", "b", "c"]]);
    }
}
