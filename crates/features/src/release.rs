//! Release health: firmware versions judged by the terminals that took them,
//! each against the rates it showed on the version it ran before.
//!
//! A terminal whose newest report names another version than before
//! *switched*; for `PROBATION_MS` after that it is on probation: its own
//! rates (crashes, reboots, failed transactions, memory climb, p95
//! latency) stop learning and stay those of the version it ran before, and
//! what it does on the new version is evidence about that version. Each
//! version (`MODEL/FIRMWARE`) sums, with a day's memory, what its
//! probation terminals showed and what their own baselines expected: the
//! surprise of the count at twice the expected rate ([`RATE_TESTED`])
//! weighs exposure as it should, so two canary terminals crashing ten
//! times as often are telling within hours, a small excess over a whole
//! cohort never is, and an update's own reboot (the first
//! `UPDATE_GRACE_MS` of a version) or a new memory level (a step across a
//! reboot, not a climb) is no evidence at all.
//!
//! A terminal that has no history before its version (first seen on it)
//! gives no evidence: there is nothing to compare it with; nor does one
//! going back to the version it ran before (a rollback).

use std::collections::HashMap;

use compact_str::CompactString;

use serde::{Deserialize, Serialize};

use crate::stats::{FNV_OFFSET, Spread, fnv1a, poisson_surprise};

/// How long after switching a terminal's evidence counts for its new
/// version, and its own rates are held at those of the version before.
pub const PROBATION_MS: i64 = 7 * 86_400_000;
/// Reboots in a version's first half hour on a terminal are the update's.
pub const UPDATE_GRACE_MS: i64 = 30 * 60_000;
/// Memory of a version's evidence, in windows (a day at 5-minute windows).
const RELEASE_MEMORY_WINDOWS: f64 = 288.0;
/// Memory of a terminal's own rates, in its windows with reports (a week at
/// 5-minute windows).
const OWN_MEMORY_WINDOWS: f32 = 2016.0;
/// A terminal's own rates are shrunk towards its model's pooled rate with
/// the weight of this many minutes of its own: a day.
const PRIOR_MINUTES: f64 = 1440.0;
/// Floors: one crash or reboot a week, one failure per thousand
/// transactions. They stand for what a fleet's history can tell apart from
/// zero, not for any fleet.
const EVENT_RATE_FLOOR_PER_MINUTE: f64 = 1.0 / (7.0 * 1440.0);
const FAILED_RATE_FLOOR: f64 = 0.001;
/// Windows of no change a version's mean p95 z-score is shrunk with: two
/// canaries' first hour says little about their latency.
const P95_PRIOR_WINDOWS: f64 = 24.0;
/// A version's crashes, reboots and failures are tested against this many
/// times what its terminals' own rates expect: a version is a regression
/// worth halting a rollout for when it at least doubles a rate. Tested
/// against the rate itself, a benign version's day-long counts, judged
/// every window of its week on probation, reach a one-in-ten tail every
/// few days (a canary's quiet week before it, a busy hour, a blip);
/// against twice the rate they do not, and a regression that crashes
/// several times as often is still plain after a few events.
const RATE_TESTED: f64 = 2.0;
/// Hours of no climb a version's memory climb is shrunk with.
const CLIMB_PRIOR_HOURS: f64 = 4.0;
/// Memory pairs further apart than this are not a climb (the terminal was
/// off, or reports were lost).
const MAX_PAIR_GAP_S: i64 = 3600;
/// Versions and models tracked at most: a flood of invented firmware
/// strings is refused and counted beyond these.
pub const MAX_RELEASES: usize = 10_000;
const MAX_MODELS: usize = 1_000;
/// A version not seen for this many windows (and with no evidence left) is
/// forgotten.
const FORGET_AFTER_WINDOWS: i64 = 7 * 288;
/// A version is checked for terminals still running it for this many
/// windows after its latest row (a day: by then its alert is stale anyway).
const RETIRE_WITHIN_WINDOWS: i64 = 288;

/// A model's key, from its name's [`key`]: 32 bits, enough for a fleet's
/// few models and 4 bytes less per terminal.
pub fn model_key(model: u64) -> u32 {
    (model >> 32) as u32 | 1
}

/// A version's key, from its model's and its firmware's [`key`]s: so a
/// batch hashes each distinct name once, not each report.
pub fn version_key(model: u64, firmware: u64) -> u64 {
    (model.rotate_left(31) ^ firmware).wrapping_mul(0x9e37_79b9_7f4a_7c15).max(1)
}

/// Crashes per run of windows with crashes, from a model's pooled sums,
/// shrunk towards 1 (crashes that come alone) with the weight of this many
/// runs: a few crashes say little about how they cluster.
const CRASH_CLUSTER_PRIOR_RUNS: f64 = 10.0;

/// How many crashes a model's terminals off probation have per run of
/// windows with crashes. Crash surprise is counted in runs, not crashes: a
/// glitch that crashes the application in each of the three reports it
/// spans is one event, and a Poisson count of events must not count it
/// thrice (a version whose canaries had two such glitches looked six
/// times unlucky). Divided by the fleet's own figure, not a constant: where
/// crashes come alone it is 1 and nothing changes; a crash loop on a
/// canary is still as many crashes beyond what the fleet's runs hold.
pub(crate) fn crash_cluster(crashes: f64, runs: f64) -> f64 {
    ((crashes + CRASH_CLUSTER_PRIOR_RUNS) / (runs + CRASH_CLUSTER_PRIOR_RUNS)).max(1.0)
}

/// No memory reading: not NaN, so that states compare equal to their copies.
pub(crate) const NO_MEM: f32 = -1.0;

/// A stable key of a name (FNV-1a, 64 bits): the same in every process,
/// so a terminal's versions need no renumbering when it moves between
/// replicas or is restored. 0 means none.
pub fn key(name: &str) -> u64 {
    fnv1a(FNV_OFFSET, name.as_bytes()).max(1)
}

/// One terminal's release state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TerminalRelease {
    /// Key of the model ([`model_key`]).
    pub model: u32,
    /// Its version as of its newest report.
    pub now: Judged,
    /// Decayed sums over its windows off probation: crashes, reboots (not
    /// an update's), failed transactions, transactions, minutes covered,
    /// memory rise (points) and the hours it rose over.
    pub sums: [f32; 7],
    /// ln of its p95 transaction latency, off probation.
    pub p95_log: Spread,
    /// Its newest report's memory use ([`NO_MEM`] when unknown) and uptime,
    /// for the next climb.
    pub last_mem: f32,
    pub last_uptime_s: u32,
    /// Switches its windows may not all have been judged past yet: when
    /// each came (the switching report's time) and what held before it,
    /// oldest first, at most [`MAX_EARLIER`]. A window is judged by the
    /// version of its end, however many reports arrived since: a rollback
    /// read before the canary's last windows closed (a replay reads hours
    /// ahead of the windows it closes) must not take them from the version
    /// they ran.
    pub earlier: Vec<(i64, Judged)>,
    /// Its latest window with reports had a crash: a crash in the next one
    /// continues that run rather than starting one ([`crash_cluster`]).
    pub crashing: bool,
}

/// Switches remembered for windows still to close: a terminal that
/// changes version more often than this within its open windows has the
/// oldest judged by the next.
const MAX_EARLIER: usize = 4;

/// A terminal's version at some time, as its windows are judged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Judged {
    /// Key of the version (0 before any report names one).
    pub current: u64,
    /// Key of the version it ran before `current` (0: none seen). Going
    /// back to it is a rollback, not a new version to judge.
    pub before: u64,
    /// When `current` replaced another while it was tracked (`i64::MIN`:
    /// never, it has no version before to be compared with).
    pub since: i64,
}

impl Default for Judged {
    fn default() -> Self {
        Judged { current: 0, before: 0, since: i64::MIN }
    }
}

impl Judged {
    /// Whether a window ending at `ts` counts as evidence for the version.
    /// A window that ended before the switch is the version before's, even
    /// when it closes after the switching report arrived: so the answer
    /// does not depend on which came first.
    pub fn on_probation(&self, ts: i64) -> bool {
        self.since != i64::MIN && ts >= self.since && ts.saturating_sub(self.since) < PROBATION_MS
    }
}

impl Default for TerminalRelease {
    fn default() -> Self {
        TerminalRelease {
            model: 0,
            now: Judged::default(),
            sums: [0.0; 7],
            p95_log: Spread::default(),
            last_mem: NO_MEM,
            last_uptime_s: 0,
            earlier: Vec::new(),
            crashing: false,
        }
    }
}

const CRASHES: usize = 0;
const REBOOTS: usize = 1;
const FAILED: usize = 2;
const TXN: usize = 3;
const MINUTES: usize = 4;
const RISE: usize = 5;
const RISE_HOURS: usize = 6;

impl TerminalRelease {
    /// Its version as a window ending at `end_ms` is judged: what held
    /// before the first switch after that end, or now (a window ending at
    /// a switch is the new version's, as it always was).
    pub fn at(&self, end_ms: i64) -> Judged {
        self.earlier.iter().find(|(at, _)| end_ms < *at).map_or(self.now, |(_, j)| *j)
    }

    /// Switches to `current` at `ts` (the newest report), remembering what
    /// held before for the windows still to close.
    pub fn switch(&mut self, ts: i64, current: u64, since: i64) {
        if self.earlier.len() == MAX_EARLIER {
            self.earlier.remove(0);
        }
        self.earlier.push((ts, self.now));
        self.now = Judged { current, before: self.now.current, since };
    }

    /// Forgets the switches no window still to close can end before: the
    /// one ending at `end_ms` has closed, the later ones end later.
    pub fn settle(&mut self, end_ms: i64) {
        self.earlier.retain(|(at, _)| *at > end_ms);
    }
}

/// What one terminal's window adds to release health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct WindowCounts {
    pub minutes: f64,
    pub crashes: u32,
    /// It had crashes and the terminal's window with reports before it had
    /// none: a run of windows with crashes starts.
    pub crash_run_starts: bool,
    /// Reboots, less those of an update.
    pub reboots: u32,
    pub failed: u32,
    pub txn: u32,
    pub mem_rise: f64,
    pub mem_hours: f64,
    /// Mean ln p95 latency over the window's reports that had one.
    pub p95_log: Option<f64>,
    /// The terminal's own round trip, loss or reconnects, or its card
    /// reader's errors, were out of line: its failures and latency are the
    /// network's or the reader's, not evidence about its firmware (nor part
    /// of its peers' reference).
    pub trouble: bool,
}

/// A model's pooled rates over its terminals off probation: the prior of a
/// terminal with little history of its own.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct ModelPool {
    /// Crashes, reboots, failed transactions, transactions, minutes, and
    /// runs of windows with crashes (a run starts at a window with a crash
    /// after one with reports and none).
    sums: [f64; 6],
    /// The latest window it learnt ([`Releases::learn_pools`]).
    window: i64,
}

const CRASH_RUNS: usize = 5;
/// What a model's pool keeps of its sums per window: it remembers about a
/// week, however many terminals the fleet has.
const POOL_KEEP_PER_WINDOW: f64 = 1.0 - 1.0 / OWN_MEMORY_WINDOWS as f64;

/// What one window teaches every engine's release health: what its
/// terminals off probation add to their models' pools, and the versions
/// terminals switched to. A model's terminals are spread over every
/// partition, and every engine must judge a terminal against the same
/// pool: so a pool learns once per window, from every engine's sums of
/// that window (one engine holding every terminal learns its own), never
/// terminal by terminal as they close. And every engine tracks every
/// version some terminal switched to, so that each says which of them its
/// terminals still run (a version no terminal runs is retired).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseLessons {
    /// By model key ([`model_key`]), ascending.
    models: Vec<(u32, [f64; 6])>,
    /// (version key, `MODEL/FIRMWARE`, window of the switch), by key
    /// ascending, the latest window of each.
    switched: Vec<(u64, CompactString, i64)>,
}

impl ReleaseLessons {
    /// Refuses pool sums that are not finite.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.models.iter().find(|(_, sums)| !sums.iter().all(|x| x.is_finite())) {
            Some((model, _)) => Err(format!("model key {model}: pool sums not finite")),
            None => Ok(()),
        }
    }

    fn add(&mut self, model: u32, adds: [f64; 6]) {
        let i = match self.models.binary_search_by_key(&model, |m| m.0) {
            Ok(i) => i,
            Err(i) => {
                if self.models.len() >= MAX_MODELS {
                    return;
                }
                self.models.insert(i, (model, [0.0; 6]));
                i
            }
        };
        for (x, a) in self.models[i].1.iter_mut().zip(adds) {
            *x += a;
        }
    }

    /// Adds another engine's sums of the same window. The sums are of
    /// counts and of each terminal's minutes (an `f32`), which add exactly
    /// in any order while a window's sum spans fewer than 53 bits (100,000
    /// terminals' minutes span at most 49): so the merge of every engine's
    /// is one engine's holding them all, bit for bit.
    pub fn merge(&mut self, other: &ReleaseLessons) {
        for &(m, adds) in &other.models {
            self.add(m, adds);
        }
        for (k, name, window) in &other.switched {
            self.switch(*k, name, *window);
        }
    }

    fn switch(&mut self, key: u64, name: &str, window: i64) {
        match self.switched.binary_search_by_key(&key, |s| s.0) {
            Ok(i) => self.switched[i].2 = self.switched[i].2.max(window),
            Err(i) if self.switched.len() < MAX_RELEASES => self.switched.insert(i, (key, name.into(), window)),
            Err(_) => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.switched.is_empty()
    }
}

/// What a terminal's own history expects of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Expected {
    /// Crashes, reboots, failed transactions.
    pub counts: [f64; 3],
    /// Crashes per run of windows with crashes, on the terminal's model
    /// ([`crash_cluster`]): at least 1.
    pub crash_cluster: f64,
    /// Memory points gained within one boot.
    pub rise: f64,
    /// p95 latency in the terminal's own standard deviations.
    pub p95_z: Option<f64>,
}

/// What the terminals off probation of one region showed in one window,
/// against their own expectations: the contemporaneous control.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Peers {
    observed: [f64; 3],
    expected: [f64; 3],
    /// What the counts are per: minutes (crashes, reboots), transactions.
    minutes: f64,
    txn: f64,
    rise: f64,
    hours: f64,
    p95_z: f64,
    p95_n: u32,
}

/// Peers' climb replaces the terminal's own from this many hours of pairs.
const MIN_PEER_HOURS: f64 = 0.5;
/// Peers' latency counts from this many of them.
const MIN_PEERS: u32 = 3;

impl Peers {
    pub fn add(&mut self, w: &WindowCounts, e: &Expected) {
        let counted = if w.trouble { 2 } else { 3 };
        for (i, k) in [w.crashes, w.reboots, w.failed].into_iter().enumerate().take(counted) {
            self.observed[i] += f64::from(k);
            self.expected[i] += e.counts[i];
        }
        self.minutes += w.minutes;
        self.rise += w.mem_rise;
        self.hours += w.mem_hours;
        if w.trouble {
            return;
        }
        self.txn += f64::from(w.txn);
        if let Some(z) = e.p95_z {
            self.p95_z += z;
            self.p95_n += 1;
        }
    }

    /// Adds another engine's peers of the same region and window. Sums of
    /// floats in another order than one engine's: equal to its to about
    /// 1e-15 relative, not bit for bit.
    fn merge(&mut self, other: &Peers) {
        for i in 0..3 {
            self.observed[i] += other.observed[i];
            self.expected[i] += other.expected[i];
        }
        self.minutes += other.minutes;
        self.txn += other.txn;
        self.rise += other.rise;
        self.hours += other.hours;
        self.p95_z += other.p95_z;
        self.p95_n = self.p95_n.saturating_add(other.p95_n);
    }

    /// What the peers saw of count `i` beyond their expectation, per
    /// minute (crashes, reboots) or per transaction (failures), in a window
    /// of `w`: what the region adds to every terminal's count, the
    /// version's included. Never negative: a quiet region does not excuse
    /// a version.
    fn excess(&self, i: usize, w: &WindowCounts) -> f64 {
        let (per, of) = if i == 2 { (self.txn, f64::from(w.txn)) } else { (self.minutes, w.minutes) };
        if per <= 0.0 {
            return 0.0;
        }
        (self.observed[i] - self.expected[i]).max(0.0) / per * of
    }

    fn climb(&self) -> Option<f64> {
        (self.hours >= MIN_PEER_HOURS).then(|| self.rise / self.hours)
    }

    fn p95_z(&self) -> Option<f64> {
        (self.p95_n >= MIN_PEERS).then(|| self.p95_z / f64::from(self.p95_n))
    }
}

/// One version's evidence: decayed sums over its probation terminals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Version {
    /// `MODEL/FIRMWARE`, the alert's entity.
    name: Box<str>,
    /// Observed and expected: crashes, reboots, failed transactions;
    /// memory rise (points) observed and expected and its hours; sum and
    /// count of p95 z-scores; minutes covered; crashes observed and
    /// expected, each divided by its terminal's model's crashes per run
    /// (what the crash surprise is of).
    sums: [f64; 14],
    /// Probation terminals that reported in the window being closed.
    terminals_now: u32,
    last_window: i64,
    /// The versions its terminals ran before (keys) and how many of their
    /// windows each gave as evidence: the most common is the baseline its
    /// alert names. A few at most: a rollout comes from one or two.
    from: Vec<(u64, u32)>,
    /// The latest window it had a row in (`i64::MIN`: none yet).
    last_row: i64,
    /// No terminal ran it at the end of a window after its latest row (its
    /// rollback is done): said once, until it has a row again.
    retired: bool,
}

/// Versions a version's terminals came from, counted at most.
const MAX_FROM: usize = 4;

/// Release health of every version seen switching to.
///
/// An engine's keeps the versions tracked, each terminal's expectations
/// and the models' pools; the stage that has every engine's terminals (the
/// engine itself when it holds them all, the merging stage otherwise)
/// judges the versions from the engines' [`ReleasePartial`]s: a version's
/// terminals, and their peers in each region, are spread over every
/// partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Releases {
    versions: HashMap<u64, Version>,
    models: HashMap<u32, ModelPool>,
    /// `MODEL/FIRMWARE` of the versions terminals were first seen on or
    /// switched to, so that an alert can name the version its terminals ran
    /// before. At most `MAX_RELEASES`; when full, the names no version
    /// being judged refers to are forgotten.
    names: HashMap<u64, Box<str>>,
    /// Versions refused at `MAX_RELEASES`.
    pub refused: u64,
    /// Switches and names this engine's reports brought since its last
    /// closed window, for the stage that judges (bounded as the versions
    /// and names are).
    pending: ReleaseLessons,
    pending_names: Vec<(u64, CompactString)>,
}

/// One terminal's probation window: evidence for its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Probation {
    terminal: CompactString,
    region: CompactString,
    judged: Judged,
    counts: WindowCounts,
    expected: Expected,
}

/// What one engine's closed window tells the stage that judges versions:
/// merged from every engine's, it is what one engine holding every
/// terminal judges with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleasePartial {
    /// The window's index.
    window: i64,
    /// Versions terminals were first seen on, by key: named as the version
    /// a version's terminals ran before.
    named: Vec<(u64, CompactString)>,
    /// Each region's terminals off probation, by region name.
    peers: Vec<(CompactString, Peers)>,
    /// Probation windows, by terminal id.
    probation: Vec<Probation>,
    /// The versions tracked that its terminals ran at the window's end,
    /// ascending.
    running: Vec<u64>,
}

impl ReleasePartial {
    /// Adds another engine's partial of the same window.
    pub fn absorb(&mut self, other: ReleasePartial) {
        self.window = self.window.max(other.window);
        if !other.named.is_empty() {
            self.named.extend(other.named);
            self.named.sort_by_key(|n| n.0);
            self.named.dedup_by_key(|n| n.0);
        }
        for (region, p) in other.peers {
            match self.peers.binary_search_by(|q| q.0.cmp(&region)) {
                Ok(i) => self.peers[i].1.merge(&p),
                Err(i) => self.peers.insert(i, (region, p)),
            }
        }
        if self.probation.is_empty() {
            self.probation = other.probation;
        } else if !other.probation.is_empty() {
            self.probation.extend(other.probation);
            // Stable: a terminal is in one engine, so ids do not tie.
            self.probation.sort_by(|a, b| a.terminal.cmp(&b.terminal));
        }
        if !other.running.is_empty() {
            self.running.extend(other.running);
            self.running.sort_unstable();
            self.running.dedup();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.peers.is_empty() && self.probation.is_empty() && self.running.is_empty()
    }
}

/// One version's release-health features in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRow {
    /// `MODEL/FIRMWARE`.
    pub entity: Box<str>,
    pub features: [f64; 5],
    /// What the features were measured against: expected crash runs,
    /// reboots and failures (decayed counts), expected climb per hour, 0
    /// (z-scores are against each terminal's own level).
    pub baselines: [f64; 5],
    /// Its terminals on probation that reported in the window. Not a
    /// feature: how far a rollout has gone says nothing of the version.
    pub terminals: u32,
    /// `MODEL/FIRMWARE` most of its evidence's terminals ran before: what
    /// it is compared with (None when that name was never seen, or
    /// forgotten under a flood of versions).
    pub baseline_version: Option<Box<str>>,
    /// Release health for dashboards: crashes per terminal-day on the
    /// version, and what the same terminals' own rates expect (a day's
    /// decayed sums).
    pub crashes_per_terminal_day: f64,
    pub expected_crashes_per_terminal_day: f64,
}

impl Releases {
    /// Notes that a terminal switched to the version `key` named `name`;
    /// false when the version cannot be tracked (too many).
    pub fn switched(&mut self, key: u64, name: impl FnOnce() -> String, window: i64) -> bool {
        if !self.track(key, name, window) {
            return false;
        }
        if let Some(v) = self.versions.get(&key) {
            self.pending.switch(key, &v.name, window);
        }
        true
    }

    /// Tracks the version `key` (a switch this engine's reports brought, or
    /// another engine's, taught); false when it cannot (too many).
    fn track(&mut self, key: u64, name: impl FnOnce() -> String, window: i64) -> bool {
        if let Some(v) = self.versions.get_mut(&key) {
            v.last_window = v.last_window.max(window);
            return true;
        }
        if self.versions.len() >= MAX_RELEASES {
            self.refused += 1;
            return false;
        }
        let name: Box<str> = name().into();
        // Named with the switch itself wherever it is judged.
        if self.names.len() < MAX_RELEASES {
            self.names.entry(key).or_insert_with(|| name.clone());
        }
        self.versions.insert(
            key,
            Version {
                name,
                sums: [0.0; 14],
                terminals_now: 0,
                last_window: window,
                from: Vec::new(),
                last_row: i64::MIN,
                retired: false,
            },
        );
        true
    }

    /// Notes the name of a version a terminal was first seen on: the
    /// version its terminals ran before, should it switch.
    pub fn remember(&mut self, key: u64, name: impl FnOnce() -> String) {
        if self.names.len() < MAX_RELEASES && !self.names.contains_key(&key) {
            let name: Box<str> = name().into();
            if self.pending_names.len() < MAX_RELEASES {
                self.pending_names.push((key, CompactString::from(&*name)));
            }
            self.names.insert(key, name);
        }
    }

    /// Learns what a window taught every engine: the models' pools, and
    /// the versions switched to.
    pub fn learn_lessons(&mut self, window: i64, lessons: &ReleaseLessons) {
        self.learn_pools(window, lessons);
        for (k, name, at) in &lessons.switched {
            self.track(*k, || name.to_string(), *at);
        }
    }

    /// The switches this engine's reports brought since it last asked.
    pub fn take_switched(&mut self) -> ReleaseLessons {
        std::mem::take(&mut self.pending)
    }

    /// A terminal's window is evidence for `key` (judged elsewhere): the
    /// version is kept as long as where it is judged keeps it.
    pub fn note_evidence(&mut self, key: u64, window: i64) {
        if let Some(v) = self.versions.get_mut(&key) {
            v.last_window = v.last_window.max(window);
        }
    }

    /// The versions tracked, ascending.
    pub fn tracked(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self.versions.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    /// A partial of window `window`: the names this engine's reports
    /// brought since it last asked, and the rest as given.
    pub fn partial(&mut self, window: i64, running: Vec<u64>) -> ReleasePartial {
        let mut named = std::mem::take(&mut self.pending_names);
        named.sort_by_key(|n| n.0);
        named.dedup_by_key(|n| n.0);
        ReleasePartial { window, named, running, ..ReleasePartial::default() }
    }

    /// Adds a region's peers to a partial (regions in any order).
    pub fn add_peers(partial: &mut ReleasePartial, region: &str, peers: Peers) {
        partial.absorb(ReleasePartial { peers: vec![(region.into(), peers)], ..ReleasePartial::default() });
    }

    /// Adds a probation window to a partial, terminals in id order.
    pub fn add_probation(
        partial: &mut ReleasePartial,
        terminal: &str,
        region: &str,
        judged: Judged,
        counts: WindowCounts,
        expected: Expected,
    ) {
        partial.probation.push(Probation {
            terminal: terminal.into(),
            region: region.into(),
            judged,
            counts,
            expected,
        });
    }

    /// Judges the partial's window from every engine's partial and lessons
    /// of it: each version's evidence, then its row; and the versions no
    /// terminal runs any more, retired.
    pub fn judge(&mut self, lessons: &ReleaseLessons, partial: ReleasePartial) -> (Vec<ReleaseRow>, Vec<Box<str>>) {
        let window = partial.window;
        for (k, name, at) in &lessons.switched {
            self.track(*k, || name.to_string(), *at);
        }
        for (k, name) in &partial.named {
            if self.names.len() < MAX_RELEASES {
                self.names.entry(*k).or_insert_with(|| Box::from(&**name));
            }
        }
        for p in &partial.probation {
            let peers = partial
                .peers
                .binary_search_by(|q| q.0.cmp(&p.region))
                .map_or_else(|_| Peers::default(), |i| partial.peers[i].1);
            self.evidence(&p.judged, &p.counts, &p.expected, &peers, window);
        }
        let quiet = self.quiet(window);
        let gone: Vec<u64> = quiet.into_iter().filter(|k| partial.running.binary_search(k).is_err()).collect();
        let retired = if gone.is_empty() { Vec::new() } else { self.retire(&gone) };
        (self.close(window), retired)
    }

    /// Forgets what [`Releases::close`] forgets, for an engine that does
    /// not judge.
    pub fn keep(&mut self, window: i64) {
        self.versions.retain(|_, v| window.saturating_sub(v.last_window) < FORGET_AFTER_WINDOWS);
        self.prune_names();
    }

    fn prune_names(&mut self) {
        if self.names.len() >= MAX_RELEASES {
            let kept: std::collections::HashSet<u64> =
                self.versions.iter().flat_map(|(k, v)| std::iter::once(*k).chain(v.from.iter().map(|f| f.0))).collect();
            self.names.retain(|k, _| kept.contains(k));
        }
    }

    /// Names remembered (bounded by `MAX_RELEASES`).
    #[cfg(test)]
    pub fn names(&self) -> usize {
        self.names.len()
    }

    /// Whether the version `key` is tracked.
    pub fn knows(&self, key: u64) -> bool {
        self.versions.contains_key(&key)
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Whether a terminal's window is evidence for its version (it is on
    /// probation on a version tracked) rather than a window to learn from.
    pub fn is_evidence(&self, t: &Judged, end_ms: i64) -> bool {
        t.on_probation(end_ms) && self.versions.contains_key(&t.current)
    }

    /// What a terminal's own rates (shrunk towards its model's) expect of a
    /// window, and its p95 latency in its own standard deviations.
    pub fn expectation(&self, t: &TerminalRelease, w: &WindowCounts, warmup: f32) -> Expected {
        let pool = self.models.get(&t.model).map(|p| p.sums);
        let s = t.sums;
        let prior = |i: usize, per: usize, floor: f64| {
            let pooled = pool.map_or(floor, |p| if p[per] > 0.0 { p[i] / p[per] } else { floor }).max(floor);
            // Own rate shrunk towards the model's; never below the floor.
            ((f64::from(s[i]) + PRIOR_MINUTES * pooled) / (f64::from(s[per]) + PRIOR_MINUTES)).max(floor)
        };
        // Failures per transaction: the prior weight, in minutes elsewhere,
        // is in transactions here.
        let fail_rate = if pool.is_some_and(|p| p[TXN] > 0.0) || s[TXN] > 0.0 {
            prior(FAILED, TXN, FAILED_RATE_FLOOR)
        } else {
            FAILED_RATE_FLOOR
        };
        let climb = if s[RISE_HOURS] > 1.0 { f64::from(s[RISE] / s[RISE_HOURS]) } else { 0.0 };
        Expected {
            crash_cluster: pool.map_or(1.0, |p| crash_cluster(p[CRASHES], p[CRASH_RUNS])),
            counts: [
                prior(CRASHES, MINUTES, EVENT_RATE_FLOOR_PER_MINUTE) * w.minutes,
                prior(REBOOTS, MINUTES, EVENT_RATE_FLOOR_PER_MINUTE) * w.minutes,
                fail_rate * f64::from(w.txn),
            ],
            rise: climb * w.mem_hours,
            p95_z: w
                .p95_log
                .and_then(|p| t.p95_log.z(p, crate::engine::LOG_SD_FLOOR, warmup))
                .map(|z| z.clamp(-crate::engine::Z_CAP, crate::engine::Z_CAP)),
        }
    }

    /// A window off probation: the terminal's own rates learn, and what it
    /// adds to its model's pool goes to the window's `pools`.
    pub fn learn(t: &mut TerminalRelease, w: &WindowCounts, pools: &mut ReleaseLessons) {
        let keep = 1.0 - 1.0 / OWN_MEMORY_WINDOWS;
        for x in &mut t.sums {
            *x *= keep;
        }
        let add = [
            f64::from(w.crashes),
            f64::from(w.reboots),
            f64::from(w.failed),
            f64::from(w.txn),
            w.minutes,
            w.mem_rise,
            w.mem_hours,
        ];
        for (x, a) in t.sums.iter_mut().zip(add) {
            *x += a as f32;
        }
        if let Some(p) = w.p95_log {
            t.p95_log.learn(p, 1.0 / f64::from(OWN_MEMORY_WINDOWS), crate::engine::LOG_SD_FLOOR);
        }
        if t.model != 0 {
            let run_started = f64::from(u8::from(w.crash_run_starts));
            pools.add(t.model, [add[0], add[1], add[2], add[3], add[4], run_started]);
        }
    }

    /// Each model's pool learns what window `window`'s terminals off
    /// probation added, every engine's: its sums decay by the windows since
    /// it last learnt, then take them. A model beyond `MAX_MODELS` is not
    /// pooled (its terminals' prior is the floor).
    pub fn learn_pools(&mut self, window: i64, lessons: &ReleaseLessons) {
        for &(m, adds) in &lessons.models {
            if !self.models.contains_key(&m) && self.models.len() >= MAX_MODELS {
                continue;
            }
            let pool = self.models.entry(m).or_insert(ModelPool { sums: [0.0; 6], window });
            // A window learnt twice, or out of order, is not decayed back.
            let gap = window.saturating_sub(pool.window).clamp(0, i64::from(i32::MAX)) as i32;
            let keep = POOL_KEEP_PER_WINDOW.powi(gap);
            for (x, a) in pool.sums.iter_mut().zip(adds) {
                *x = *x * keep + a;
            }
            pool.window = pool.window.max(window);
        }
    }

    /// A probation window: evidence for the terminal's version, against its
    /// own expectation moved by what its peers (terminals off probation in
    /// its region, in the same window) show against theirs. A regional
    /// network problem raises every terminal's failures and latency, and a
    /// busy morning every terminal's memory: the version is only blamed for
    /// what its terminals do beyond their peers.
    pub fn evidence(&mut self, t: &Judged, w: &WindowCounts, e: &Expected, peers: &Peers, window: i64) {
        let Some(v) = self.versions.get_mut(&t.current) else { return };
        let x = &mut v.sums;
        let observed = [w.crashes, w.reboots, w.failed];
        let counted = if w.trouble { 2 } else { 3 };
        for (i, (k, mu)) in observed.iter().zip(e.counts).enumerate().take(counted) {
            x[2 * i] += f64::from(*k);
            x[2 * i + 1] += mu + peers.excess(i, w);
        }
        let cluster = e.crash_cluster.max(1.0);
        x[12] += f64::from(w.crashes) / cluster;
        x[13] += (e.counts[0] + peers.excess(0, w)) / cluster;
        x[6] += w.mem_rise;
        x[7] += match peers.climb() {
            Some(rate) => rate * w.mem_hours,
            None => e.rise,
        };
        x[8] += w.mem_hours;
        if let Some(z) = e.p95_z.filter(|_| !w.trouble) {
            x[9] += z - peers.p95_z().unwrap_or(0.0).max(0.0);
            x[10] += 1.0;
        }
        x[11] += w.minutes;
        v.terminals_now += 1;
        v.last_window = v.last_window.max(window);
        if let Some(f) = v.from.iter_mut().find(|f| f.0 == t.before) {
            f.1 = f.1.saturating_add(1);
        } else if v.from.len() < MAX_FROM {
            v.from.push((t.before, 1));
        }
    }

    /// Versions with no row in `window` that had one within a day and were
    /// not retired: those that may have no terminal left on them. Called
    /// once the window's evidence is in, before [`Releases::close`].
    pub fn quiet(&self, window: i64) -> Vec<u64> {
        let mut quiet: Vec<u64> = self
            .versions
            .iter()
            .filter(|(_, v)| {
                !v.retired
                    && v.terminals_now == 0
                    && v.last_row != i64::MIN
                    && window.saturating_sub(v.last_row) <= RETIRE_WITHIN_WINDOWS
            })
            .map(|(k, _)| *k)
            .collect();
        quiet.sort_unstable();
        quiet
    }

    /// Marks the versions `gone` (no terminal ran them at the window's end)
    /// retired; returns their names, sorted.
    pub fn retire(&mut self, gone: &[u64]) -> Vec<Box<str>> {
        let mut names = Vec::with_capacity(gone.len());
        for k in gone {
            if let Some(v) = self.versions.get_mut(k) {
                v.retired = true;
                names.push(v.name.clone());
            }
        }
        names.sort();
        names
    }

    /// The rows of the window closing at `end_ms`: one per version with a
    /// probation terminal reporting in it. Then every version's evidence
    /// decays by a window, and versions long gone are forgotten.
    pub fn close(&mut self, window: i64) -> Vec<ReleaseRow> {
        let mut rows: Vec<ReleaseRow> = self
            .versions
            .values()
            .filter(|v| v.terminals_now > 0)
            .map(|v| {
                let x = &v.sums;
                // One event is never evidence: a version's first crash on a
                // canary's first hour is as likely bad luck as a bad build,
                // and with every version judged every window, bad luck
                // somewhere is certain. The surprise is that of the events
                // beyond the first.
                let count = |k: f64| (k.floor().clamp(0.0, f64::from(u32::MAX)) as u32).saturating_sub(1);
                // The climb shrunk towards none by a few hours' worth: a
                // morning's load on two canaries is not a leak.
                let hours = x[8] + CLIMB_PRIOR_HOURS;
                let days = (x[11] / 1440.0).max(1e-9);
                ReleaseRow {
                    entity: v.name.clone(),
                    features: [
                        poisson_surprise(count(x[12]), RATE_TESTED * x[13]),
                        poisson_surprise(count(x[2]), RATE_TESTED * x[3]),
                        poisson_surprise(count(x[4]), RATE_TESTED * x[5]),
                        (x[6] - x[7]) / hours,
                        x[9] / (x[10] + P95_PRIOR_WINDOWS),
                    ],
                    baselines: [x[13], x[3], x[5], x[7] / hours, 0.0],
                    terminals: v.terminals_now,
                    // Ties go to the smaller key: the same whatever the order.
                    baseline_version: v
                        .from
                        .iter()
                        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                        .and_then(|f| self.names.get(&f.0).cloned()),
                    crashes_per_terminal_day: x[0] / days,
                    expected_crashes_per_terminal_day: x[1] / days,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.entity.cmp(&b.entity));
        let keep = 1.0 - 1.0 / RELEASE_MEMORY_WINDOWS;
        self.versions.retain(|_, v| {
            if v.terminals_now > 0 {
                v.last_row = window;
                v.retired = false;
            }
            v.terminals_now = 0;
            for x in &mut v.sums {
                *x *= keep;
            }
            window.saturating_sub(v.last_window) < FORGET_AFTER_WINDOWS
        });
        self.prune_names();
        rows
    }
}

/// The memory climb between two consecutive reports of one boot: points and
/// hours, or None when they are not of one boot (a reboot, a crash, an
/// uptime that does not cover the gap) or too far apart.
pub(crate) fn climb(last: (f32, u32, i64), now: (f64, u64, i64), reboots: u32, crashes: u32) -> Option<(f64, f64)> {
    let (last_mem, last_up, last_ts) = last;
    let (mem, up, ts) = now;
    let gap_s = ts.saturating_sub(last_ts) / 1000;
    if !last_mem.is_finite() || last_mem < 0.0 || reboots > 0 || crashes > 0 || gap_s <= 0 || gap_s > MAX_PAIR_GAP_S {
        return None;
    }
    // Uptime must have grown by about the gap: otherwise it restarted.
    let grew = up as i64 - i64::from(last_up);
    if (grew - gap_s).abs() > gap_s / 4 + 60 {
        return None;
    }
    Some((mem - f64::from(last_mem), gap_s as f64 / 3600.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_climb_needs_one_boot_and_a_short_gap() {
        let t0 = 1_000_000;
        assert_eq!(climb((50.0, 1000, t0), (51.0, 1300, t0 + 300_000), 0, 0), Some((1.0, 300.0 / 3600.0)));
        assert_eq!(climb((50.0, 1000, t0), (51.0, 20, t0 + 300_000), 0, 0), None, "uptime went back: a restart");
        assert_eq!(climb((50.0, 1000, t0), (51.0, 1300, t0 + 300_000), 1, 0), None, "a reboot");
        assert_eq!(climb((50.0, 1000, t0), (51.0, 1300, t0 + 300_000), 0, 1), None, "a crash");
        assert_eq!(climb((NO_MEM, 1000, t0), (51.0, 1300, t0 + 300_000), 0, 0), None);
        assert_eq!(climb((50.0, 1000, t0), (51.0, 8200, t0 + 7_200_000), 0, 0), None, "two hours apart");
    }

    fn version(model: &str, firmware: &str) -> u64 {
        version_key(key(model), key(firmware))
    }

    #[test]
    fn keys_are_stable_and_never_zero() {
        assert_eq!(version("P200", "6.0.0"), version("P200", "6.0.0"));
        assert_ne!(version("P200", "6.0.0"), version("P200", "6.0.1"));
        assert_ne!(version("P20", "06.0.0"), version("P200", "6.0.0"));
        assert_ne!(version("6.0.0", "P200"), version("P200", "6.0.0"));
        assert_ne!(key(""), 0);
    }

    fn terminal(since: i64) -> TerminalRelease {
        TerminalRelease {
            model: model_key(key("P200")),
            now: Judged { current: version("P200", "6.0.0"), since, before: 0 },
            ..Default::default()
        }
    }

    fn window(crashes: u32) -> WindowCounts {
        WindowCounts { minutes: 5.0, crashes, txn: 2, ..Default::default() }
    }

    /// A window of a terminal, as the engine handles it: evidence on
    /// probation, learning otherwise.
    fn window_of(r: &mut Releases, t: &mut TerminalRelease, w: &WindowCounts, end_ms: i64, peers: &Peers) {
        let e = r.expectation(t, w, 24.0);
        if r.is_evidence(&t.at(end_ms), end_ms) {
            r.evidence(&t.at(end_ms), w, &e, peers, end_ms / 300_000);
        } else {
            let mut pools = ReleaseLessons::default();
            Releases::learn(t, w, &mut pools);
            r.learn_pools(end_ms / 300_000, &pools);
        }
    }

    #[test]
    fn a_windows_pools_merged_from_any_split_are_one_engines_bit_for_bit() {
        // 3,000 terminals of two models, each window's minutes an f32 sum
        // of report intervals (as the engine keeps them), counts of all
        // sizes.
        let terminals: Vec<(TerminalRelease, WindowCounts)> = (0..3000u32)
            .map(|i| {
                let model = if i % 3 == 0 { "P200" } else { "P400" };
                let t = TerminalRelease { model: model_key(key(model)), ..Default::default() };
                let reports = 1 + i % 7;
                let minutes: f32 = (0..reports).map(|r| ((17 + (i * 31 + r * 7) % 300) as f32) / 60.0).sum();
                let w = WindowCounts {
                    minutes: f64::from(minutes),
                    crashes: i % 5 / 4,
                    crash_run_starts: i % 5 == 4,
                    reboots: i % 11 / 10,
                    failed: i % 4,
                    txn: i % 40,
                    ..Default::default()
                };
                (t, w)
            })
            .collect();
        let learn = |part: &mut dyn Iterator<Item = &(TerminalRelease, WindowCounts)>| {
            let mut pools = ReleaseLessons::default();
            for (t, w) in part {
                Releases::learn(&mut t.clone(), w, &mut pools);
            }
            pools
        };
        let whole = learn(&mut terminals.iter());
        // Split by a hash of the id as Kafka does (every third and the
        // rest), or in runs; merged in any order.
        let splits: [Vec<ReleaseLessons>; 2] = [
            (0..3).map(|k| learn(&mut terminals.iter().skip(k).step_by(3))).collect(),
            terminals.chunks(700).map(|c| learn(&mut c.iter())).collect(),
        ];
        for parts in splits {
            for order in [false, true] {
                let mut merged = ReleaseLessons::default();
                let parts: Vec<&ReleaseLessons> =
                    if order { parts.iter().rev().collect() } else { parts.iter().collect() };
                for p in parts {
                    merged.merge(p);
                }
                assert_eq!(merged, whole);
            }
        }
        // A pool decays by the windows since it learnt, not by how many
        // terminals taught it: a fleet ten times the size keeps as long.
        let mut r = Releases::default();
        r.learn_pools(0, &whole);
        r.learn_pools(288, &whole);
        let m = model_key(key("P400"));
        let once = whole.models.iter().find(|p| p.0 == m).map(|p| p.1).expect("P400 pooled");
        let pool = r.models[&m].sums;
        // (`powi` of constants is folded at compile time, to other bits.)
        let gap = std::hint::black_box(288);
        assert_eq!(pool[4], once[4] * POOL_KEEP_PER_WINDOW.powi(gap) + once[4]);
        // An older window learnt late is added, and decays nothing.
        r.learn_pools(100, &whole);
        assert_eq!((r.models[&m].sums[4], r.models[&m].window), (pool[4] + once[4], 288));
    }

    #[test]
    fn two_canaries_crashing_often_are_evidence_and_a_terminal_off_probation_is_not() {
        let mut r = Releases::default();
        let v = version("P200", "6.0.0");
        let quiet = Peers::default();
        // A day of history on the version before: about one crash a day.
        let mut learnt = TerminalRelease { model: model_key(key("P200")), ..Default::default() };
        for w in 0..288 {
            window_of(&mut r, &mut learnt, &window(u32::from(w == 100)), w * 300_000, &quiet);
        }
        assert!(r.close(288).is_empty(), "no version on probation, no rows");
        assert!(r.switched(v, || "P200/6.0.0".into(), 300));
        let canary = TerminalRelease { now: Judged { since: 300 * 300_000, current: v, ..learnt.now }, ..learnt };
        let mut canaries = [canary.clone(), canary];
        let mut rows = Vec::new();
        for w in 300..372 {
            for c in &mut canaries {
                // A crash every half hour: about 50 times the rate before.
                window_of(&mut r, c, &window(u32::from(w % 6 == 0)), (w + 1) * 300_000, &quiet);
            }
            rows = r.close(w);
        }
        let row = rows.first().expect("a row for the version");
        assert_eq!(&*row.entity, "P200/6.0.0");
        assert!(row.features[0] > 10.0, "crash surprise {:?}", row.features);
        assert_eq!(row.terminals, 2);
        // A week later they are off probation: they learn, and give no row.
        let mut late = terminal(0);
        window_of(&mut r, &mut late, &window(1), PROBATION_MS + 1, &quiet);
        assert!(r.close(400).is_empty());
        assert!(late.sums[MINUTES] > 0.0);
    }

    /// The crash surprise of a version whose two canaries crash in
    /// `canary(window)`'s pattern for six hours, after a day and a half of
    /// history of eight terminals on the version before crashing in
    /// `before`'s: each a
    /// window's crashes and whether a run of windows with crashes starts.
    fn crash_surprise(before: impl Fn(i64) -> (u32, bool), canary: impl Fn(i64) -> (u32, bool)) -> f64 {
        let mut r = Releases::default();
        let v = version("P200", "6.0.0");
        let quiet = Peers::default();
        let counts = |(crashes, crash_run_starts): (u32, bool)| WindowCounts {
            minutes: 5.0,
            crashes,
            crash_run_starts,
            txn: 2,
            ..Default::default()
        };
        // Eight terminals of the model: its pool learns how crashes cluster.
        let mut fleet = vec![TerminalRelease { model: model_key(key("P200")), ..Default::default() }; 8];
        for w in 0..432 {
            for t in &mut fleet {
                window_of(&mut r, t, &counts(before(w)), w * 300_000, &quiet);
            }
        }
        let learnt = fleet.swap_remove(0);
        assert!(r.switched(v, || "P200/6.0.0".into(), 432));
        let canary_state = TerminalRelease { now: Judged { since: 432 * 300_000, current: v, ..learnt.now }, ..learnt };
        let mut canaries = [canary_state.clone(), canary_state];
        let mut rows = Vec::new();
        for w in 432..504 {
            for c in &mut canaries {
                window_of(&mut r, c, &counts(canary(w)), (w + 1) * 300_000, &quiet);
            }
            rows = r.close(w);
        }
        rows.first().map_or(f64::NAN, |row| row.features[0])
    }

    #[test]
    fn crashes_that_come_in_runs_are_counted_in_runs() {
        // The fleet's crashes come in pairs of windows (a glitch spanning
        // two reports), or alone at the same rate: one every 25 windows.
        let pairs = |w: i64| (u32::from(w % 50 <= 1), w % 50 == 0);
        let alone = |w: i64| (u32::from(w % 25 == 0), w % 25 == 0);
        // Canaries with such a glitch every half hour: eight times the
        // crashes before (a version is tested for doubling them).
        let glitches = |w: i64| (u32::from(w % 6 <= 1), w % 6 == 0);
        let in_runs = crash_surprise(pairs, glitches);
        let counted_alone = crash_surprise(alone, glitches);
        // Where the fleet's crashes come in pairs the canaries' are half as
        // many events: still evidence, less of it.
        assert!(in_runs > 3.0 && in_runs < 0.6 * counted_alone, "in runs {in_runs}, as if alone {counted_alone}");
        // A crash loop on the canaries is still evidence where crashes come in runs.
        let looping = |w: i64| (1, w == 432);
        assert!(crash_surprise(pairs, looping) > 10.0, "{}", crash_surprise(pairs, looping));
        assert_eq!(crash_cluster(0.0, 0.0), 1.0);
        assert_eq!(crash_cluster(30.0, 10.0), 2.0);
        assert_eq!(crash_cluster(5.0, 10.0), 1.0, "never below one crash a run");
    }

    #[test]
    fn a_version_without_rows_is_asked_after_for_a_day_and_retired_once() {
        let mut r = Releases::default();
        let v = version("P200", "6.0.0");
        r.switched(v, || "P200/6.0.0".into(), 0);
        assert!(r.quiet(0).is_empty(), "never had a row: nothing to retire");
        let t = terminal(0);
        let w = window(0);
        for i in 0..3 {
            let e = r.expectation(&t, &w, 24.0);
            r.evidence(&t.now, &w, &e, &Peers::default(), i);
            assert!(r.quiet(i).is_empty(), "a row in window {i}");
            assert_eq!(r.close(i).len(), 1);
        }
        assert_eq!(r.quiet(3), [v], "no row in window 3: does anyone still run it?");
        assert_eq!(r.retire(&[v]), vec![Box::<str>::from("P200/6.0.0")]);
        assert!(r.close(3).is_empty());
        assert!(r.quiet(4).is_empty(), "retired once");
        // A terminal takes it again: it has rows, and can be retired again.
        let e = r.expectation(&t, &w, 24.0);
        r.evidence(&t.now, &w, &e, &Peers::default(), 5);
        r.close(5);
        assert_eq!(r.quiet(6), [v]);
        // A day after its latest row it is no longer asked after (its alert,
        // if any, has gone stale by then).
        assert_eq!(r.quiet(5 + RETIRE_WITHIN_WINDOWS), [v]);
        assert!(r.quiet(6 + RETIRE_WITHIN_WINDOWS).is_empty());
    }

    /// The crash surprise of a version after a day on eight canaries that
    /// crashed every `canary_every` windows, after two days of history in
    /// which they crashed every 144 (twice a day).
    fn day_of_canaries(canary_every: i64) -> f64 {
        let mut r = Releases::default();
        let v = version("P200", "6.0.0");
        let quiet = Peers::default();
        let crash = |w: i64, every: i64, t: i64| {
            let c = u32::from((w + t * 17) % every == 0);
            WindowCounts { minutes: 5.0, crashes: c, crash_run_starts: c > 0, txn: 2, ..Default::default() }
        };
        let mut fleet = vec![TerminalRelease { model: model_key(key("P200")), ..Default::default() }; 8];
        for w in 0..576 {
            for (i, t) in fleet.iter_mut().enumerate() {
                window_of(&mut r, t, &crash(w, 144, i as i64), w * 300_000, &quiet);
            }
        }
        assert!(r.switched(v, || "P200/6.0.0".into(), 576));
        for t in &mut fleet {
            t.now = Judged { since: 576 * 300_000, current: v, ..t.now };
        }
        let mut rows = Vec::new();
        for w in 576..864 {
            for (i, t) in fleet.iter_mut().enumerate() {
                window_of(&mut r, t, &crash(w, canary_every, i as i64), (w + 1) * 300_000, &quiet);
            }
            rows = r.close(w);
        }
        rows.first().map_or(f64::NAN, |row| row.features[0])
    }

    #[test]
    fn a_version_is_tested_for_doubling_a_rate_not_for_any_excess() {
        // Half as often again: 24 crashes where 16 were due. Tested
        // against the rate itself that is a surprise of 1.9 (a tail of one
        // in seven), which a benign version judged every window reaches
        // every few days.
        let a_little = day_of_canaries(96);
        assert!(a_little < 0.5, "half as often again: {a_little}");
        // Five times as often is plain.
        let five_times = day_of_canaries(29);
        assert!(five_times > 10.0, "five times as often: {five_times}");
    }

    #[test]
    fn one_crash_on_a_canary_is_no_evidence_and_two_are_some() {
        let surprise = |crashes: u32| {
            let mut r = Releases::default();
            let v = version("P200", "6.0.0");
            r.switched(v, || "P200/6.0.0".into(), 0);
            let t = terminal(0);
            let w = WindowCounts { minutes: 5.0, crashes, ..Default::default() };
            let e = r.expectation(&t, &w, 24.0);
            r.evidence(&t.now, &w, &e, &Peers::default(), 1);
            r.close(1).remove(0).features[0]
        };
        assert_eq!(surprise(1), 0.0);
        assert!(surprise(2) > 5.0, "{}", surprise(2));
    }

    #[test]
    fn what_the_peers_of_a_region_also_show_is_not_the_versions() {
        // Failures and latency up at every terminal of the region (its
        // network), and on the version's canaries just as much.
        let run = |peers_too: bool| {
            let mut r = Releases::default();
            let v = version("P200", "6.0.0");
            r.switched(v, || "P200/6.0.0".into(), 0);
            let mut t = terminal(0);
            for w in 0..2000 {
                let mut pools = ReleaseLessons::default();
                let quiet = WindowCounts { minutes: 5.0, txn: 10, failed: 0, p95_log: Some(6.0), ..Default::default() };
                Releases::learn(&mut t, &quiet, &mut pools);
                r.learn_pools(w, &pools);
            }
            let bad = WindowCounts { minutes: 5.0, txn: 10, failed: 4, p95_log: Some(7.0), ..Default::default() };
            let mut peers = Peers::default();
            if peers_too {
                for _ in 0..10 {
                    peers.add(&bad, &r.expectation(&t, &bad, 24.0));
                }
            }
            for w in 0..12 {
                let e = r.expectation(&t, &bad, 24.0);
                r.evidence(&t.now, &bad, &e, &peers, w);
            }
            r.close(12).remove(0).features
        };
        let (alone, with_peers) = (run(false), run(true));
        assert!(alone[2] > 20.0 && alone[4] > 3.0, "the version alone fails and slows: {alone:?}");
        assert!(with_peers[2] < alone[2] / 2.0, "failures: {with_peers:?} against {alone:?}");
        assert!(with_peers[4] < 0.5, "latency: {with_peers:?}");
    }

    #[test]
    fn a_versions_row_names_the_version_most_of_its_terminals_ran_before() {
        let mut r = Releases::default();
        let (old, other, new) = (version("P200", "5.1.0"), version("P200", "5.0.9"), version("P200", "6.0.0"));
        r.remember(old, || "P200/5.1.0".into());
        r.remember(other, || "P200/5.0.9".into());
        r.remember(old, || unreachable!("a name is formatted once"));
        assert!(r.switched(new, || "P200/6.0.0".into(), 0));
        let w = window(0);
        for (before, n) in [(other, 1), (old, 3)] {
            let t = TerminalRelease { now: Judged { before, ..terminal(0).now }, ..terminal(0) };
            for _ in 0..n {
                let e = r.expectation(&t, &w, 24.0);
                r.evidence(&t.now, &w, &e, &Peers::default(), 1);
            }
        }
        let row = r.close(1).remove(0);
        assert_eq!(row.baseline_version.as_deref(), Some("P200/5.1.0"));
        // A version whose name was never seen is not invented.
        let mut r = Releases::default();
        r.switched(new, || "P200/6.0.0".into(), 0);
        let t = TerminalRelease { now: Judged { before: old, ..terminal(0).now }, ..terminal(0) };
        let e = r.expectation(&t, &w, 24.0);
        r.evidence(&t.now, &w, &e, &Peers::default(), 1);
        assert_eq!(r.close(1).remove(0).baseline_version, None);
    }

    #[test]
    fn names_are_bounded_and_a_full_map_keeps_those_in_use() {
        let mut r = Releases::default();
        let new = version("P200", "6.0.0");
        r.switched(new, || "P200/6.0.0".into(), 0);
        let before = version("P200", "5.1.0");
        r.remember(before, || "P200/5.1.0".into());
        for i in 0..2 * MAX_RELEASES as u64 {
            r.remember(i + 7, || format!("M/{i}"));
        }
        assert_eq!(r.names(), MAX_RELEASES);
        let t = TerminalRelease { now: Judged { before, ..terminal(0).now }, ..terminal(0) };
        let e = r.expectation(&t, &window(0), 24.0);
        r.evidence(&t.now, &window(0), &e, &Peers::default(), 1);
        let row = r.close(1).remove(0);
        assert_eq!(row.baseline_version.as_deref(), Some("P200/5.1.0"));
        assert_eq!(r.names(), 2, "only the names a judged version refers to are kept");
    }

    #[test]
    fn versions_are_bounded() {
        let mut r = Releases::default();
        for i in 0..MAX_RELEASES as u64 + 5 {
            r.switched(i + 1, || format!("M/{i}"), 0);
        }
        assert_eq!(r.len(), MAX_RELEASES);
        assert_eq!(r.refused, 5);
    }
}
