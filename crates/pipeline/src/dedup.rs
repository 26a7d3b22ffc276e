//! Duplicate reports: at-least-once delivery replays records after a crash or
//! a rebalance, and a terminal may resend a report it thinks was lost. A
//! report is identified by its terminal and its event time (`ts`); the
//! second copy must not reach the sinks, or it would count twice downstream.
//!
//! Each terminal keeps its latest event time and a 64-bit map of which of the
//! 64 reporting slots before it have been seen, a slot being one reporting
//! interval on a grid anchored at the epoch (the anti-replay window of IPsec,
//! RFC 4303 §3.4.3). That is 24 bytes a terminal, whatever the history
//! length. Two consequences, both documented:
//! - two reports of one terminal in the same slot (twice within one
//!   reporting interval) are one report, unless both carry the latest `ts`
//!   exactly, which is compared in full;
//! - a report more than 64 intervals older than its terminal's latest
//!   (64 min at 60 s, 5 h 20 min at 300 s) cannot be checked and is dropped
//!   and counted as too old: it would be beyond any feature window anyway.
//!   Except after a jump: a report more than 64 intervals ahead keeps the
//!   map it left (another 24 bytes), so one report from a clock that is a
//!   day fast does not make the terminal's next reports too old to check.

use std::collections::HashMap;

const SLOTS: i64 = 64;

/// What to do with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: pass it on.
    New,
    /// Seen before: drop it.
    Duplicate,
    /// Too old to tell: drop it.
    TooOld,
}

/// Which of the 64 reporting slots up to a latest report have been seen.
#[derive(Debug, Clone, Copy)]
struct Slots {
    latest_ts: i64,
    /// Bit i: the slot `slot(latest_ts) - i` has been seen.
    bits: u64,
}

impl Slots {
    fn new(ts: i64) -> Slots {
        Slots { latest_ts: ts, bits: 1 }
    }

    /// Checks and remembers a report; `None` when it is older than the map reaches.
    fn check(&mut self, ts: i64, interval_ms: i64) -> Option<Seen> {
        let (latest_slot, slot) = (self.latest_ts.div_euclid(interval_ms), ts.div_euclid(interval_ms));
        if ts > self.latest_ts {
            // A later ts in the latest slot (shift 0) is a new report too:
            // the latest ts is compared exactly.
            let shift = slot - latest_slot;
            self.bits = if shift >= SLOTS { 1 } else { (self.bits << shift) | 1 };
            self.latest_ts = ts;
            return Some(Seen::New);
        }
        if ts == self.latest_ts {
            return Some(Seen::Duplicate);
        }
        let age = latest_slot - slot;
        if age >= SLOTS {
            return None;
        }
        let bit = 1u64 << age;
        if self.bits & bit != 0 {
            Some(Seen::Duplicate)
        } else {
            self.bits |= bit;
            Some(Seen::New)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    now: Slots,
    /// The map a jump of more than 64 slots ahead left behind. A report
    /// whose clock is a day fast must not make its terminal's next, right
    /// reports too old to check: they are checked here instead.
    before: Option<Slots>,
    interval_ms: i64,
}

/// Per-terminal record of recently seen reports.
#[derive(Debug, Default)]
pub struct Dedup {
    terminals: HashMap<Box<str>, Window>,
}

impl Dedup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Terminals tracked.
    pub fn len(&self) -> usize {
        self.terminals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.terminals.is_empty()
    }

    /// Forgets a terminal (its partition went to another replica).
    pub fn remove(&mut self, terminal: &str) {
        self.terminals.remove(terminal);
    }

    /// Forgets the `n` terminals whose latest report is oldest, and returns
    /// them. A flood of one-off terminal ids would otherwise grow this map
    /// for ever. A report of a forgotten terminal is new again: it could
    /// pass twice only if it is replayed after its terminal went silent
    /// longest of all, when the feature engine has long closed its window
    /// and drops it as late.
    pub fn forget_longest_silent(&mut self, n: usize) -> Vec<Box<str>> {
        if n == 0 || self.terminals.is_empty() {
            return Vec::new();
        }
        if n >= self.terminals.len() {
            return self.terminals.drain().map(|(t, _)| t).collect();
        }
        let mut latest: Vec<i64> = self.terminals.values().map(|w| w.now.latest_ts).collect();
        let (_, &mut cut, _) = latest.select_nth_unstable(n - 1);
        // Strictly older first, then ties at the cut until n are gone.
        let mut gone = Vec::with_capacity(n);
        let mut at_cut = n - latest[..n].iter().filter(|&&t| t < cut).count();
        self.terminals.retain(|t, w| {
            let go = w.now.latest_ts < cut
                || (w.now.latest_ts == cut && at_cut > 0 && {
                    at_cut -= 1;
                    true
                });
            if go {
                gone.push(t.clone());
            }
            !go
        });
        gone
    }

    /// Checks a report and remembers it if new.
    pub fn check(&mut self, terminal: &str, ts: i64, interval_s: u32) -> Seen {
        let interval_ms = i64::from(interval_s.max(1)) * 1000;
        let Some(w) = self.terminals.get_mut(terminal) else {
            self.terminals.insert(terminal.into(), Window { now: Slots::new(ts), before: None, interval_ms });
            return Seen::New;
        };
        if interval_ms != w.interval_ms {
            // The terminal changed its reporting interval: slots on the old
            // grid say nothing about the new one. Keep only the exact latest.
            if ts == w.now.latest_ts {
                return Seen::Duplicate;
            }
            if ts < w.now.latest_ts {
                return Seen::TooOld;
            }
            *w = Window { now: Slots::new(ts), before: None, interval_ms };
            return Seen::New;
        }
        let jump = ts.div_euclid(interval_ms) - w.now.latest_ts.div_euclid(interval_ms);
        if jump >= SLOTS {
            w.before = Some(w.now);
            w.now = Slots::new(ts);
            return Seen::New;
        }
        match w.now.check(ts, interval_ms) {
            Some(seen) => seen,
            None => w.before.as_mut().and_then(|b| b.check(ts, interval_ms)).unwrap_or(Seen::TooOld),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_795_514_460_000 - 1_795_514_460_000 % MIN;

    #[test]
    fn forgets_the_longest_silent_terminals_first() {
        let mut d = Dedup::new();
        for (i, t) in ["T-1", "T-2", "T-3", "T-4", "T-5"].iter().enumerate() {
            assert_eq!(d.check(t, T0 + i as i64 * MIN, 60), Seen::New);
        }
        // T-2 and T-4 tie at the cut's time: one of them goes.
        assert_eq!(d.check("T-2", T0 + 10 * MIN, 60), Seen::New);
        assert_eq!(d.check("T-4", T0 + 10 * MIN, 60), Seen::New);
        let mut gone = d.forget_longest_silent(2);
        gone.sort();
        assert_eq!(gone, vec![Box::from("T-1"), Box::from("T-3")]);
        assert_eq!(d.len(), 3);
        assert_eq!(d.forget_longest_silent(2).len(), 2);
        assert_eq!(d.len(), 1);
        // A forgotten terminal's report is new again.
        assert_eq!(d.check("T-1", T0, 60), Seen::New);
        assert_eq!(d.forget_longest_silent(10).len(), 2);
        assert!(d.is_empty());
    }

    #[test]
    fn passes_new_reports_and_drops_exact_repeats() {
        let mut d = Dedup::new();
        for i in 0..10 {
            assert_eq!(d.check("T-1", T0 + i * MIN, 60), Seen::New);
        }
        for i in 0..10 {
            assert_eq!(d.check("T-1", T0 + i * MIN, 60), Seen::Duplicate, "replayed report {i}");
        }
        assert_eq!(d.check("T-2", T0, 60), Seen::New, "terminals are independent");
    }

    #[test]
    fn accepts_late_reports_once_within_the_horizon() {
        let mut d = Dedup::new();
        d.check("T-1", T0 + 30 * MIN, 60);
        assert_eq!(d.check("T-1", T0 + 20 * MIN, 60), Seen::New, "late but new");
        assert_eq!(d.check("T-1", T0 + 20 * MIN, 60), Seen::Duplicate);
        assert_eq!(d.check("T-1", T0 + 30 * MIN - 63 * MIN, 60), Seen::New, "63 slots back is inside");
        assert_eq!(d.check("T-1", T0 + 30 * MIN - 64 * MIN, 60), Seen::TooOld);
    }

    #[test]
    fn a_long_gap_starts_a_new_map() {
        let mut d = Dedup::new();
        d.check("T-1", T0, 60);
        assert_eq!(d.check("T-1", T0 + 1000 * MIN, 60), Seen::New);
        assert_eq!(d.check("T-1", T0 + 999 * MIN, 60), Seen::New);
        assert_eq!(d.check("T-1", T0 + 1000 * MIN - 64 * MIN, 60), Seen::New, "between the two maps: new");
        assert_eq!(d.check("T-1", T0 - 64 * MIN, 60), Seen::TooOld, "older than both maps reach");
    }

    #[test]
    fn one_report_a_day_fast_leaves_the_next_reports_checkable() {
        let mut d = Dedup::new();
        for i in 0..10 {
            assert_eq!(d.check("T-1", T0 + i * MIN, 60), Seen::New);
        }
        assert_eq!(d.check("T-1", T0 + 10 * MIN + 1439 * MIN, 60), Seen::New, "the clock jumps a day ahead, once");
        for i in 10..200 {
            assert_eq!(d.check("T-1", T0 + i * MIN, 60), Seen::New, "its right reports after the jump: {i}");
        }
        assert_eq!(d.check("T-1", T0 + 150 * MIN, 60), Seen::Duplicate, "and their copies are still caught");
        assert_eq!(d.check("T-1", T0 + 10 * MIN + 1439 * MIN, 60), Seen::Duplicate);
    }

    #[test]
    fn off_grid_timestamps_compare_the_latest_exactly() {
        let mut d = Dedup::new();
        assert_eq!(d.check("T-1", T0 + 1_500, 60), Seen::New);
        assert_eq!(d.check("T-1", T0 + 1_500, 60), Seen::Duplicate);
        assert_eq!(d.check("T-1", T0 + 2_000, 60), Seen::New, "same slot, later exact ts");
    }

    #[test]
    fn a_changed_interval_keeps_the_exact_latest() {
        let mut d = Dedup::new();
        d.check("T-1", T0, 60);
        assert_eq!(d.check("T-1", T0 + 5 * MIN, 300), Seen::New);
        assert_eq!(d.check("T-1", T0 + 5 * MIN, 300), Seen::Duplicate);
        assert_eq!(d.check("T-1", T0 + 10 * MIN, 300), Seen::New);
    }
}
