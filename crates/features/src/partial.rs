//! Site and region features of one window as *mergeable partials*: what a
//! subset of a site's or a region's terminals contributes, such that the
//! partials of any split of the terminals, merged in any order, give the
//! features of all of them, bit for bit. One process builds one partial per
//! entity from all its terminals and finalises it ([`FeatureEngine`]'s window
//! close does exactly that); replicas that each hold some of the terminals
//! can publish theirs and let one stage merge them (docs/two-stages.md).
//!
//! Exact because every merge is a count, a maximum or a multiset: a site
//! keeps the two largest of each terminal feature (the second-worst rule),
//! and a region keeps each terminal's contribution, which the final step
//! orders by terminal id before taking medians and sums, so floating-point
//! sums add up in the order one process adds them.
//!
//! [`FeatureEngine`]: crate::FeatureEngine

use std::collections::{BTreeMap, BTreeSet, HashMap};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use termwatch_telemetry::alerts::{AlertKind, Scope};

use crate::engine::{CohortRates, CohortState, FeatureConfig, MIN_REGION_TERMINALS};
use crate::release::{ReleaseLessons, ReleasePartial, ReleaseRow, Releases};
use crate::stats::median;

/// The two largest values pushed; `-inf` where fewer were.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TopTwo(pub [f64; 2]);

impl Default for TopTwo {
    fn default() -> Self {
        TopTwo([f64::NEG_INFINITY; 2])
    }
}

impl TopTwo {
    pub fn push(&mut self, x: f64) {
        // -0.0 and 0.0 compare equal, so which one a tie kept would depend
        // on the order of the pushes: kept as 0.0, the result does not.
        let x = x + 0.0;
        if x > self.0[0] {
            self.0 = [x, self.0[0]];
        } else if x > self.0[1] {
            self.0[1] = x;
        }
    }

    /// The two largest of both: the two largest of the union.
    pub fn merge(&mut self, other: &TopTwo) {
        for x in other.0 {
            self.push(x);
        }
    }

    /// The second largest; with one value pushed, that value (a one-terminal
    /// site is that terminal, and its terminal detector speaks for it).
    pub fn second(&self) -> f64 {
        if self.0[1].is_finite() { self.0[1] } else { self.0[0] }
    }
}

/// What some of a site's terminals contribute to its voltage row in one
/// window. A site's mains reach every terminal at once and one failing power
/// supply reaches one, so a site feature is its second-worst terminal's.
/// It keeps no terminal ids: merged partials must hold disjoint terminals
/// (each terminal's reports are in one Kafka partition; a terminal counted
/// by two sources in one window, as when the topic is repartitioned, counts
/// twice at its site for that window).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SitePartial {
    /// The site's region, for the site's alerts (empty until an engine
    /// names it when it publishes; merged, the least name wins, so that a
    /// site whose terminals disagree gets one region whatever the order).
    pub region: Box<str>,
    /// Terminals with a voltage reading in the window.
    pub voltage_n: u32,
    /// Of those, terminals whose window was out of their own line.
    pub unstable: u32,
    /// `v_std_z`, `v_mean_drop_z`, `sag_surprise`, `reboot_surprise`: the
    /// two worst terminals of each.
    pub worst: [TopTwo; 4],
}

impl SitePartial {
    /// One terminal's window: its voltage features (in the order of
    /// `names::TERMINAL_VOLTAGE`) and whether it was out of line.
    pub fn add_terminal(&mut self, features: &[f64; 6], unstable: bool) {
        self.voltage_n += 1;
        self.unstable += u32::from(unstable);
        for (top, f) in self.worst.iter_mut().zip([features[0], features[1], features[3], features[4]]) {
            top.push(f);
        }
    }

    pub fn merge(&mut self, other: &SitePartial) {
        if self.region.is_empty() || (!other.region.is_empty() && other.region < self.region) {
            self.region.clone_from(&other.region);
        }
        self.voltage_n = self.voltage_n.saturating_add(other.voltage_n);
        self.unstable = self.unstable.saturating_add(other.unstable);
        for (a, b) in self.worst.iter_mut().zip(&other.worst) {
            a.merge(b);
        }
    }

    /// The site's voltage features (`names::SITE_VOLTAGE`), or `None` when no
    /// terminal had a voltage reading.
    pub fn features(&self) -> Option<[f64; 6]> {
        if self.voltage_n == 0 {
            return None;
        }
        let n = f64::from(self.voltage_n);
        let [std, drop, sags, reboots] = self.worst.map(|t| t.second());
        Some([std, drop, sags, f64::from(self.unstable) / n, reboots, n])
    }
}

/// One terminal's contribution to its region's network row: only terminals
/// with network baselines of their own contribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionTerminal {
    /// The `terminal_id`: the order in which sums add up. Inline (ids
    /// are short): a partial holds one per terminal, and the merging stage
    /// decodes every replica's, which would be two allocations each.
    pub terminal: CompactString,
    /// The `site_id`: a region's share of degraded sites.
    pub site: CompactString,
    /// Round trip or loss more than a few of its own deviations out.
    pub degraded: bool,
    pub rtt_z: f64,
    pub loss_z: f64,
    /// Surprise of its reconnects and timeouts at its own rates, nats.
    pub reconnects: f64,
    pub timeouts: f64,
}

/// What some of a region's terminals contribute to its network row in one
/// window: each terminal's values, since a median needs them all and a sum
/// must add up in one order to be the same however the terminals were split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionPartial {
    pub terminals: Vec<RegionTerminal>,
}

/// A region's network row for one window, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum RegionWindow {
    /// No terminal with a baseline reported network figures.
    Empty,
    /// Fewer than [`MIN_REGION_TERMINALS`] did: not scored (and counted):
    /// a region asleep at night is not a region degrading.
    Thin,
    /// The features, in the order of `names::NETWORK`.
    Features([f64; 7]),
}

impl RegionPartial {
    pub fn add_terminal(&mut self, terminal: RegionTerminal) {
        self.terminals.push(terminal);
    }

    /// Takes the other's terminals. A terminal present in both is kept
    /// once, the same copy whichever was merged first: Kafka keys reports by
    /// `terminal_id`, so a terminal is in one partition's partial unless the
    /// topic was repartitioned during the window.
    pub fn merge(&mut self, other: &RegionPartial) {
        self.terminals.extend(other.terminals.iter().cloned());
        self.settle();
    }

    /// [`RegionPartial::merge`] of a partial given away: its terminals move
    /// in, and are put in order once, when the features are taken.
    pub fn absorb(&mut self, other: RegionPartial) {
        if self.terminals.is_empty() {
            self.terminals = other.terminals;
        } else {
            self.terminals.extend(other.terminals);
        }
    }

    /// In terminal-id order, each terminal once.
    fn settle(&mut self) {
        if !self.terminals.is_sorted_by(|a, b| a.terminal < b.terminal) {
            // Copies of one terminal in a total order of their values, so
            // the one kept does not depend on the order of the merges.
            let key = |t: &RegionTerminal| {
                (t.degraded, t.rtt_z.to_bits(), t.loss_z.to_bits(), t.reconnects.to_bits(), t.timeouts.to_bits())
            };
            self.terminals.sort_by(|a, b| a.terminal.cmp(&b.terminal).then_with(|| key(a).cmp(&key(b))));
            self.terminals.dedup_by(|a, b| a.terminal == b.terminal);
        }
    }

    /// The region's network features.
    pub fn features(&mut self) -> RegionWindow {
        self.settle();
        let terminals = &self.terminals;
        if terminals.is_empty() {
            return RegionWindow::Empty;
        }
        if terminals.len() < MIN_REGION_TERMINALS as usize {
            return RegionWindow::Thin;
        }
        let n = terminals.len() as f64;
        // The shares leave out the terminal most out of line (degraded
        // first, then by the larger of its round-trip and loss z; the
        // first in id order on a tie): a region's trouble is shared, and
        // one terminal's spike in a region of three reporting (a night, a
        // small region) is a third of it. On drawn physics with two
        // unlabelled blips per terminal-day, most of network's false
        // alerts were that (docs/model-history.md, `-60`).
        let out_of_line = |t: &RegionTerminal| (t.degraded, t.rtt_z.max(t.loss_z));
        let trimmed_out = terminals
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| {
                let (da, za) = out_of_line(a);
                let (db, zb) = out_of_line(b);
                da.cmp(&db).then(za.total_cmp(&zb)).then(j.cmp(i))
            })
            .map(|(i, _)| i);
        let (mut reconnects_sum, mut timeouts_sum, mut reconnects_max, mut timeouts_max) = (0.0, 0.0, 0.0f64, 0.0f64);
        let mut sites: HashMap<&str, (u32, u32)> = HashMap::new();
        let mut degraded = 0u32;
        for (i, t) in terminals.iter().enumerate() {
            reconnects_sum += t.reconnects;
            timeouts_sum += t.timeouts;
            reconnects_max = reconnects_max.max(t.reconnects);
            timeouts_max = timeouts_max.max(t.timeouts);
            if Some(i) == trimmed_out {
                continue;
            }
            let s = sites.entry(&t.site).or_default();
            s.0 += 1;
            s.1 += u32::from(t.degraded);
            degraded += u32::from(t.degraded);
        }
        let mut rtt_z: Vec<f64> = terminals.iter().map(|t| t.rtt_z).collect();
        let mut loss_z: Vec<f64> = terminals.iter().map(|t| t.loss_z).collect();
        // Medians in standard errors: the median of n healthy z-scores
        // has a standard deviation of about 1.2533 / sqrt(n), so a
        // region of ten terminals and one of a hundred are judged on
        // one scale (a small region's median wanders more).
        let median_se = n.sqrt() / 1.2533;
        // Without the largest contribution: a region's trouble is
        // shared, and one terminal's burst of timeouts is that terminal's.
        // (A region has at least MIN_REGION_TERMINALS here.)
        let trimmed = |sum: f64, max: f64| (sum - max).max(0.0) / (n - 1.0).max(1.0);
        let sites_degraded = sites.values().filter(|s| 2 * s.1 > s.0).count() as f64;
        RegionWindow::Features([
            sites_degraded / (sites.len().max(1) as f64),
            f64::from(degraded) / (n - 1.0).max(1.0),
            median(&mut rtt_z).unwrap_or(0.0) * median_se,
            median(&mut loss_z).unwrap_or(0.0) * median_se,
            trimmed(reconnects_sum, reconnects_max),
            trimmed(timeouts_sum, timeouts_max),
            n,
        ])
    }
}

/// What a terminal's quiet window teaches a voltage baseline (its own, and
/// its cohort's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct VoltageLesson {
    pub(crate) std_log: f64,
    pub(crate) v_mean: f64,
    pub(crate) range_log: f64,
    pub(crate) gap: f64,
    /// Sags and reboots per minute.
    pub(crate) sags: f64,
    pub(crate) reboots: f64,
    /// How far `std_log`, `v_mean`, `range_log` and `gap` lie from the
    /// terminal's own levels before it learnt them
    /// ([`crate::stats::Spread::within_deviation`]); none before it has one.
    pub(crate) within: [Option<f64>; 4],
}

/// What one terminal's window teaches its cohort.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) enum Lesson {
    Voltage(VoltageLesson),
    /// Card reader errors and reads of a window without evidence of wear.
    Reader {
        errors: u32,
        attempts: u32,
    },
    /// Printer errors and jobs, likewise.
    Printer {
        errors: u32,
        attempts: u32,
    },
}

/// What one window's terminals taught their cohorts (`MODEL|FIRMWARE`),
/// terminal by terminal. A cohort learns from every terminal of it, and
/// the terminals of a cohort are spread over every partition: engines that
/// share their cohorts hand these out, and each learns the merge of every
/// engine's, so that all of them (and one engine holding every terminal)
/// judge a young terminal against the same cohort. Lessons are applied in
/// terminal-id order, as one engine applies its own; the terminals of two
/// engines' lessons are disjoint, as a partitioning by `terminal_id` gives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortLessons {
    /// (terminal id, cohort, lesson), in terminal-id order; a terminal's
    /// own lessons in the order it taught them.
    lessons: Vec<(CompactString, CompactString, Lesson)>,
    /// What the window's terminals off probation add to their models'
    /// pooled release rates: merged by summing.
    pub(crate) release: ReleaseLessons,
}

impl CohortLessons {
    /// From lessons already in terminal-id order (one engine's window).
    pub(crate) fn from_sorted(
        lessons: impl IntoIterator<Item = (CompactString, CompactString, Lesson)>,
    ) -> CohortLessons {
        CohortLessons { lessons: lessons.into_iter().collect(), release: ReleaseLessons::default() }
    }

    /// Adds another engine's lessons of the same window, in terminal-id
    /// order after it (ties keep ours first).
    pub fn merge(&mut self, other: &CohortLessons) {
        self.absorb(other.clone());
        self.settle();
    }

    /// Takes another engine's lessons of the same window in, to be put in
    /// order once every source's are in ([`CohortLessons::settle`]): one
    /// sort of a few runs, rather than a merge (and its checks) a source.
    fn absorb(&mut self, other: CohortLessons) {
        self.release.merge(&other.release);
        if self.lessons.is_empty() {
            self.lessons = other.lessons;
        } else {
            self.lessons.extend(other.lessons);
        }
    }

    /// Terminal-id order, each terminal's lessons in the order it taught
    /// them and ties in the order taken: a stable sort, which merges lists
    /// already in order (what engines publish) in one pass each, and still
    /// orders any that are not (read from a topic, they may not be).
    fn settle(&mut self) {
        self.lessons.sort_by(|a, b| a.0.cmp(&b.0));
    }

    pub fn len(&self) -> usize {
        self.lessons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lessons.is_empty() && self.release.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Lesson)> {
        self.lessons.iter().map(|(_, c, l)| (&**c, l))
    }
}

/// What a merged window taught the cohorts, as every stage-1 engine takes
/// it: the state of each cohort a lesson of the window reached, learnt by
/// the merging stage from every engine's lessons in terminal-id order (as
/// one engine holding every terminal learns its own), by name; and the
/// models' pool sums. A few hundred bytes a cohort, whatever the fleet,
/// where the lessons are about fifty bytes a terminal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortStates {
    states: Vec<(CompactString, CohortState)>,
    pub(crate) release: ReleaseLessons,
}

impl CohortStates {
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.release.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &CohortState)> {
        self.states.iter().map(|(c, s)| (&**c, s))
    }

    /// Refuses states the merging stage would never have sent (a record
    /// of a topic is not checksummed): a cohort's state that is not finite,
    /// or a model's pool sums that are not.
    pub fn check(&self) -> Result<(), String> {
        if let Some((cohort, _)) = self.states.iter().find(|(_, s)| !s.is_sound()) {
            return Err(format!("cohort {cohort:?}: a state no learning leaves (not finite, or below zero)"));
        }
        self.release.check()
    }

    #[cfg(test)]
    pub(crate) fn of(states: Vec<(CompactString, CohortState)>) -> CohortStates {
        CohortStates { states, release: ReleaseLessons::default() }
    }
}

/// The merging stage's cohorts: each learnt from every engine's lessons,
/// as one engine learns its own. A cohort no lesson reached for
/// [`FORGET_COHORT_MS`] is forgotten; at [`MAX_COHORTS`] a new one is
/// refused and counted (cohorts come from the data).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortTeacher {
    /// None until [`WindowMerger::teaching`]: a merger that only merges.
    rates: Option<CohortRates>,
    /// By name: the state, and the end (epoch ms) of the last window a
    /// lesson reached it in.
    cohorts: BTreeMap<CompactString, (CohortState, i64)>,
    refused: u64,
}

/// Cohorts the merging stage learns at most.
pub const MAX_COHORTS: usize = 100_000;
/// Four weeks: longer than a terminal is held idle
/// (`limits.idle_terminal_days`, 14 by default), so a cohort is not
/// forgotten while a held terminal may still come back to it.
const FORGET_COHORT_MS: i64 = 28 * 86_400_000;

impl CohortTeacher {
    /// Learns at `config`'s rates.
    pub fn new(config: &FeatureConfig) -> CohortTeacher {
        CohortTeacher { rates: Some(CohortRates::of(config)), ..CohortTeacher::default() }
    }

    /// Learns the merged lessons (in terminal-id order) of the window
    /// ending at `end_ms`; returns the states of the cohorts they reached,
    /// by name.
    pub fn learn(&mut self, end_ms: i64, lessons: &CohortLessons) -> CohortStates {
        let mut out = CohortStates { states: Vec::new(), release: lessons.release.clone() };
        let Some(rates) = self.rates else { return out };
        let mut reached: BTreeSet<&str> = BTreeSet::new();
        for (cohort, lesson) in lessons.iter() {
            if !self.cohorts.contains_key(cohort) {
                if self.cohorts.len() >= MAX_COHORTS {
                    self.refused += 1;
                    continue;
                }
                self.cohorts.insert(cohort.into(), (CohortState::default(), end_ms));
            }
            if let Some((state, last)) = self.cohorts.get_mut(cohort) {
                state.learn(lesson, rates);
                *last = end_ms;
                reached.insert(cohort);
            }
        }
        out.states = reached
            .into_iter()
            .filter_map(|c| self.cohorts.get(c).map(|(state, _)| (CompactString::from(c), *state)))
            .collect();
        self.cohorts.retain(|_, (_, last)| end_ms.saturating_sub(*last) < FORGET_COHORT_MS);
        out
    }
}

/// What one stage-1 engine publishes for one of its closed windows: its
/// source partition's partials, by `site_id` and region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowPartials {
    pub end_ms: i64,
    pub sites: Vec<(Box<str>, SitePartial)>,
    pub regions: Vec<(Box<str>, RegionPartial)>,
    /// With cohorts shared: what the window taught them.
    pub cohorts: CohortLessons,
    /// What its terminals tell release health.
    pub release: ReleasePartial,
}

/// One source's scores of the terminal detectors in one window, counted per
/// bin of the fleet calibration's histogram (`termwatch_alerts::calibration`
/// bins them): what the merging stage's calibration of those detectors
/// adds, every source's summed, as one process adds every terminal's.
/// A terminal is scored only once its window's lessons are back (its
/// site's verdict, the thresholds), so a source publishes these after the
/// window and before its progress passes the next one, and the merger
/// hands them out with the next window it closes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowScores {
    pub end_ms: i64,
    pub detectors: Vec<DetectorScores>,
}

/// One detector's scores of a window: (bin, scores in it), bins ascending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorScores {
    pub kind: AlertKind,
    pub scope: Scope,
    pub bins: Vec<(u16, u32)>,
    /// The daily peaks of the source's terminals whose day this window
    /// ended (its first of a day), binned alike; empty in the others.
    pub peaks: Vec<(u16, u32)>,
}

impl WindowScores {
    /// Adds another source's scores of the same window.
    pub fn merge(&mut self, other: &WindowScores) {
        for theirs in &other.detectors {
            let i = match self.detectors.iter().position(|d| (d.kind, d.scope) == (theirs.kind, theirs.scope)) {
                Some(i) => i,
                None => {
                    self.detectors.push(DetectorScores {
                        kind: theirs.kind,
                        scope: theirs.scope,
                        bins: Vec::new(),
                        peaks: Vec::new(),
                    });
                    self.detectors.len() - 1
                }
            };
            let mine = &mut self.detectors[i];
            mine.bins = summed(&mine.bins, &theirs.bins);
            mine.peaks = summed(&mine.peaks, &theirs.peaks);
        }
    }
}

/// Two sources' counts per bin, summed.
fn summed(mine: &[(u16, u32)], theirs: &[(u16, u32)]) -> Vec<(u16, u32)> {
    let mut bins: BTreeMap<u16, u32> = mine.iter().copied().collect();
    for &(bin, n) in theirs {
        let c = bins.entry(bin).or_default();
        *c = c.saturating_add(n);
    }
    bins.into_iter().collect()
}

/// A site's voltage row, merged.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedSite {
    pub site: Box<str>,
    pub region: Box<str>,
    /// `names::SITE_VOLTAGE`.
    pub features: [f64; 6],
}

/// A window closed by the merging stage: every site's and region's row from
/// the partials of all source partitions.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedWindow {
    pub end_ms: i64,
    /// Site voltage rows, by `site_id`, in name order.
    pub sites: Vec<MergedSite>,
    /// Region network rows, by region, in name order.
    pub regions: Vec<(Box<str>, RegionWindow)>,
    /// What the window taught the cohorts, every source's merged.
    pub cohorts: CohortLessons,
    /// The cohorts' states after those lessons (with a merger
    /// [`WindowMerger::teaching`]): what each engine takes before it
    /// closes the next window.
    pub cohort_states: CohortStates,
    /// Release health of each version with probation terminals in the
    /// window, and the versions no terminal runs any more (as one engine
    /// gives them in [`crate::WindowRows`]).
    pub firmware: Vec<ReleaseRow>,
    pub firmware_retired: Vec<Box<str>>,
    /// Source partitions whose partials were not in when it closed (the
    /// allowed lateness passed, or the open windows reached their bound).
    pub missing: Vec<Box<str>>,
    /// The terminal detectors' scores of the windows before it not handed
    /// out yet, every source's merged, oldest first: what the fleet
    /// calibration adds before it gives the thresholds for this window.
    pub scores: Vec<WindowScores>,
}

/// What the merging stage dropped or closed early, since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergerCounts {
    /// A (window, source) partial, or terminal scores, already taken: a
    /// stage-1 replica republishing after a restart. Ignored.
    pub duplicate_partials: u64,
    /// A partial for a window already closed. Dropped.
    pub late_partials: u64,
    /// Partials or progress from a source not assigned. Dropped.
    pub unknown_source: u64,
    /// Windows closed without every source's partials.
    pub incomplete_windows: u64,
    /// Scores of a window whose next window had closed (and taken the
    /// scores then in), or pushed out by the bound. Dropped.
    pub late_scores: u64,
    /// Region windows merged with too few terminals to score
    /// ([`RegionWindow::Thin`]), as one engine counts them.
    pub thin_region_windows: u64,
    /// Switches to a version release health could not track (at
    /// `MAX_RELEASES`), as one engine counts them. Kept in the state.
    pub refused_releases: u64,
    /// Cohorts not learnt because [`MAX_COHORTS`] were. Kept in the state.
    pub refused_cohorts: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct OpenWindow {
    /// Sources whose partials are merged in.
    from: BTreeSet<Box<str>>,
    sites: BTreeMap<Box<str>, SitePartial>,
    regions: BTreeMap<Box<str>, RegionPartial>,
    cohorts: CohortLessons,
    release: ReleasePartial,
}

impl OpenWindow {
    /// Merges a source's partials, unless that source's are in already.
    fn take(&mut self, source: &str, window: WindowPartials) -> bool {
        if !self.from.insert(source.into()) {
            return false;
        }
        for (s, p) in window.sites {
            self.sites.entry(s).or_default().merge(&p);
        }
        for (r, p) in window.regions {
            self.regions.entry(r).or_default().absorb(p);
        }
        self.cohorts.absorb(window.cohorts);
        self.release.absorb(window.release);
        true
    }
}

/// The merging stage's windows: partials from every source partition of the
/// telemetry topic, each window merged once every source has closed it (its
/// progress is past the window's end) or once the newest source's progress
/// is `allowed_lateness_ms` past it (a stuck partition must not hold every
/// site and region; counted). A source with no terminal in a window
/// publishes its progress alone, so an idle partition advances the merge.
/// A (window, source) partial is taken once. A source publishes a window's
/// partials before the progress that passes it: a partial for a window at
/// or before its own source's progress is a replay (a restarted replica).
/// It serialises whole (what a stage snapshot keeps, besides the counts);
/// [`WindowMerger::check`] a state read back before use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowMerger {
    /// Every window ending at or before this, per source, has been
    /// published by it.
    progress: BTreeMap<Box<str>, i64>,
    /// Sources that have ended for now (a history read to its end): they
    /// hold no window open and do not make others' windows overdue.
    ended: BTreeSet<Box<str>>,
    open: BTreeMap<i64, OpenWindow>,
    /// Windows ending at or before this are closed.
    closed_through: i64,
    allowed_lateness_ms: i64,
    max_open_windows: usize,
    /// Terminal detectors' scores waiting for the next window to close, by
    /// window end: the sources in, and their sum. As bounded as `open`.
    scores: BTreeMap<i64, (BTreeSet<Box<str>>, WindowScores)>,
    /// Scores of windows ending before this have been handed out.
    scores_through: i64,
    /// Per source, the latest window whose scores were taken: one at or
    /// before it again is a replica republishing after a restore.
    scored: BTreeMap<Box<str>, i64>,
    /// Release health, judged on every source's terminals.
    releases: Releases,
    /// The cohorts, learnt once from every source's lessons.
    teacher: CohortTeacher,
    /// Process counters, for metrics: not part of the state.
    #[serde(skip)]
    counts: MergerCounts,
}

impl WindowMerger {
    /// Expects partials from `sources` (the telemetry topic's partitions).
    pub fn new(sources: &[&str], allowed_lateness_ms: i64, max_open_windows: usize) -> WindowMerger {
        WindowMerger {
            progress: sources.iter().map(|s| (Box::from(*s), i64::MIN)).collect(),
            ended: BTreeSet::new(),
            open: BTreeMap::new(),
            closed_through: i64::MIN,
            allowed_lateness_ms: allowed_lateness_ms.max(0),
            max_open_windows: max_open_windows.max(1),
            scores: BTreeMap::new(),
            scores_through: i64::MIN,
            scored: BTreeMap::new(),
            releases: Releases::default(),
            teacher: CohortTeacher::default(),
            counts: MergerCounts::default(),
        }
    }

    /// Learns the cohorts from every source's lessons at `config`'s rates,
    /// and hands out their states with each merged window
    /// ([`MergedWindow::cohort_states`]) for engines that share them.
    pub fn teaching(mut self, config: &FeatureConfig) -> WindowMerger {
        self.teacher.rates = Some(CohortRates::of(config));
        self
    }

    pub fn counts(&self) -> MergerCounts {
        MergerCounts { refused_releases: self.releases.refused, refused_cohorts: self.teacher.refused, ..self.counts }
    }

    /// The sources it expects partials from, in name order.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.progress.keys().map(|s| &**s)
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Every window ending at or before this has closed (`None` before
    /// the first): how far engines sharing their cohorts may learn them.
    pub fn closed_through(&self) -> Option<i64> {
        (self.closed_through != i64::MIN).then_some(self.closed_through)
    }

    /// Refuses a state read back from a snapshot that this code would never
    /// have produced (a checksum cannot promise it): a bound or lateness out
    /// of range, more open windows than the bound, an open window already
    /// closed, or a source it does not know.
    pub fn check(&self) -> Result<(), String> {
        if self.max_open_windows == 0 || self.allowed_lateness_ms < 0 {
            return Err(format!(
                "bound {} and lateness {} ms: at least 1 and 0",
                self.max_open_windows, self.allowed_lateness_ms
            ));
        }
        if self.open.len() > self.max_open_windows || self.scores.len() > self.max_open_windows {
            return Err(format!(
                "{} open windows and {} windows of scores, bound {}",
                self.open.len(),
                self.scores.len(),
                self.max_open_windows
            ));
        }
        if let Some(&end) = self.scores.keys().next().filter(|end| **end < self.scores_through) {
            return Err(format!(
                "scores of the window ending {end} wait but those before {} are out",
                self.scores_through
            ));
        }
        if let Some((&end, _)) = self.open.first_key_value().filter(|(end, _)| **end <= self.closed_through) {
            return Err(format!("window ending {end} is open but windows through {} are closed", self.closed_through));
        }
        let mut named = self
            .ended
            .iter()
            .chain(self.open.values().flat_map(|w| &w.from))
            .chain(self.scores.values().flat_map(|(from, _)| from))
            .chain(self.scored.keys());
        if let Some(s) = named.find(|s| !self.progress.contains_key(*s)) {
            return Err(format!("source {s:?} is not one of the merger's"));
        }
        if let Some(r) =
            self.teacher.rates.filter(|r| !(r.alpha > 0.0 && r.alpha <= 1.0 && r.long > 0.0 && r.long <= 1.0))
        {
            return Err(format!("cohort rates {} and {}: each in (0, 1]", r.alpha, r.long));
        }
        if self.teacher.cohorts.len() > MAX_COHORTS {
            return Err(format!("{} cohorts, at most {MAX_COHORTS}", self.teacher.cohorts.len()));
        }
        Ok(())
    }

    /// Takes a source's partials of one closed window. Returns the windows
    /// that closes: the oldest, when a new window would pass the bound.
    pub fn offer(&mut self, source: &str, window: WindowPartials) -> Vec<MergedWindow> {
        let Some(&progress) = self.progress.get(source) else {
            self.counts.unknown_source += 1;
            return Vec::new();
        };
        if window.end_ms <= progress {
            // Published before, by the protocol: a replay after a restart.
            self.counts.duplicate_partials += 1;
            return Vec::new();
        }
        if window.end_ms <= self.closed_through {
            self.counts.late_partials += 1;
            return Vec::new();
        }
        let is_new = !self.open.contains_key(&window.end_ms);
        let oldest_kept = self.open.first_key_value().map(|(&o, _)| o);
        let mut closed = Vec::new();
        if is_new && self.open.len() >= self.max_open_windows && oldest_kept.is_some_and(|o| window.end_ms < o) {
            // Older than every window the bound keeps open: it closes at
            // once with what it has (its other sources' partials are late).
            let end_ms = window.end_ms;
            let mut w = OpenWindow::default();
            w.take(source, window);
            closed.push(self.finish(end_ms, w));
            return closed;
        }
        let open = self.open.entry(window.end_ms).or_default();
        if !open.take(source, window) {
            self.counts.duplicate_partials += 1;
            return closed;
        }
        while self.open.len() > self.max_open_windows {
            if let Some((end, w)) = self.open.pop_first() {
                closed.push(self.finish(end, w));
            }
        }
        // Every source may be past it already, or long past it.
        closed.extend(self.close_ready());
        closed
    }

    /// Takes a source's scores of the terminal detectors in one window (see
    /// [`WindowScores`]); they go out with the next window that closes.
    pub fn offer_scores(&mut self, source: &str, scores: WindowScores) {
        if !self.progress.contains_key(source) {
            self.counts.unknown_source += 1;
            return;
        }
        if self.scored.get(source).is_some_and(|&taken| scores.end_ms <= taken) {
            self.counts.duplicate_partials += 1;
            return;
        }
        if scores.end_ms < self.scores_through {
            self.counts.late_scores += 1;
            return;
        }
        let (from, sum) = self.scores.entry(scores.end_ms).or_default();
        if !from.insert(source.into()) {
            self.counts.duplicate_partials += 1;
            return;
        }
        let taken = self.scored.entry(source.into()).or_insert(i64::MIN);
        *taken = (*taken).max(scores.end_ms);
        sum.end_ms = scores.end_ms;
        sum.merge(&scores);
        // Sources that publish scores of windows far apart (a bad actor,
        // or a replica days behind) cannot grow the map: the oldest go.
        while self.scores.len() > self.max_open_windows {
            if let Some((_, (from, _))) = self.scores.pop_first() {
                self.counts.late_scores += from.len() as u64;
            }
        }
    }

    /// Hands out every source's scores still waiting for a next window:
    /// at the end of a history, when none will close. Scores of those
    /// windows that come after are late.
    pub fn take_scores(&mut self) -> Vec<WindowScores> {
        let taken = std::mem::take(&mut self.scores);
        if let Some(&last) = taken.keys().next_back() {
            self.scores_through = self.scores_through.max(last.saturating_add(1));
        }
        taken.into_values().map(|(_, s)| s).collect()
    }

    /// A source has published every window ending at or before `through_ms`.
    /// Returns the windows that closes, oldest first.
    pub fn progress(&mut self, source: &str, through_ms: i64) -> Vec<MergedWindow> {
        match self.progress.get_mut(source) {
            // An ended source is back when it moves on, not on a repeat of
            // where it was.
            Some(p) if through_ms > *p => {
                *p = through_ms;
                self.ended.remove(source);
            }
            Some(_) => {}
            None => {
                self.counts.unknown_source += 1;
                return Vec::new();
            }
        }
        self.close_ready()
    }

    /// A source has published everything it has for now: it holds no window
    /// open until it publishes progress again. Returns the windows that
    /// closes.
    pub fn end_of_source(&mut self, source: &str) -> Vec<MergedWindow> {
        if !self.progress.contains_key(source) {
            self.counts.unknown_source += 1;
            return Vec::new();
        }
        self.ended.insert(source.into());
        self.close_ready()
    }

    fn close_ready(&mut self) -> Vec<MergedWindow> {
        let active = || self.progress.iter().filter(|(s, _)| !self.ended.contains(*s)).map(|(_, p)| *p);
        // With every source ended, everything published can close.
        let all = active().min().unwrap_or(i64::MAX);
        let newest = active().max().unwrap_or(i64::MAX);
        let mut closed = Vec::new();
        while let Some((&end, _)) = self.open.first_key_value() {
            let complete = end <= all;
            let overdue = end.saturating_add(self.allowed_lateness_ms) <= newest;
            if !(complete || overdue) {
                break;
            }
            if let Some((end, w)) = self.open.pop_first() {
                closed.push(self.finish(end, w));
            }
        }
        // Windows no partial reached close too, with nothing in them (an
        // ended source may publish again: only what every active source has
        // passed is closed).
        if all != i64::MAX {
            self.closed_through = self.closed_through.max(all);
        }
        closed
    }

    fn finish(&mut self, end_ms: i64, w: OpenWindow) -> MergedWindow {
        self.closed_through = self.closed_through.max(end_ms);
        // A source past the window without a partial had no terminal in it,
        // and so had one that ended.
        let missing: Vec<Box<str>> = self
            .progress
            .iter()
            .filter(|(s, p)| **p < end_ms && !w.from.contains(*s) && !self.ended.contains(*s))
            .map(|(s, _)| s.clone())
            .collect();
        if !missing.is_empty() {
            self.counts.incomplete_windows += 1;
        }
        let later = self.scores.split_off(&end_ms);
        let scores = std::mem::replace(&mut self.scores, later).into_values().map(|(_, s)| s).collect();
        self.scores_through = self.scores_through.max(end_ms);
        let mut cohorts = w.cohorts;
        cohorts.settle();
        let cohort_states = self.teacher.learn(end_ms, &cohorts);
        let (firmware, firmware_retired) = self.releases.judge(&cohorts.release, w.release);
        MergedWindow {
            end_ms,
            sites: w
                .sites
                .into_iter()
                .filter_map(|(site, p)| Some(MergedSite { features: p.features()?, site, region: p.region }))
                .collect(),
            regions: w
                .regions
                .into_iter()
                .map(|(r, mut p)| {
                    let row = p.features();
                    if row == RegionWindow::Thin {
                        self.counts.thin_region_windows += 1;
                    }
                    (r, row)
                })
                .collect(),
            cohorts,
            cohort_states,
            firmware,
            firmware_retired,
            missing,
            scores,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_merging_stages_cohorts_are_bounded_and_forgotten_after_four_weeks() {
        let mut teacher = CohortTeacher::new(&FeatureConfig::default());
        let lessons = |names: std::ops::Range<usize>| {
            CohortLessons::from_sorted(names.map(|i| {
                (
                    CompactString::from(format!("T-{i:06}")),
                    CompactString::from(format!("M|{i}")),
                    Lesson::Reader { errors: 1, attempts: 100 },
                )
            }))
        };
        let day = 86_400_000;
        let states = teacher.learn(day, &lessons(0..MAX_COHORTS + 3));
        assert_eq!((states.len(), teacher.cohorts.len(), teacher.refused), (MAX_COHORTS, MAX_COHORTS, 3));
        // Taught again within four weeks: kept; the rest go at four weeks.
        let states = teacher.learn(20 * day, &lessons(0..2));
        assert_eq!(states.len(), 2);
        let states = teacher.learn(29 * day, &lessons(2..3));
        assert_eq!(states.len(), 1);
        assert_eq!(teacher.cohorts.len(), 3, "the cohorts taught in the last four weeks");
        // A merger that only merges learns nothing and hands out no state.
        let mut merging = CohortTeacher::default();
        assert!(merging.learn(day, &lessons(0..5)).iter().next().is_none());
    }

    fn bits<const N: usize>(f: [f64; N]) -> [u64; N] {
        f.map(f64::to_bits)
    }

    fn region_bits(w: &mut RegionPartial) -> Option<[u64; 7]> {
        match w.features() {
            RegionWindow::Features(f) => Some(bits(f)),
            _ => None,
        }
    }

    /// Values of every magnitude, so that the order of a sum shows.
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![Just(0.0), Just(-0.0), -8.0..8.0f64, (-1e15..1e15f64), Just(1e-9), Just(f64::INFINITY)]
    }

    proptest! {
        #[test]
        fn any_split_merged_in_any_order_gives_the_rows_of_the_whole(
            terminals in prop::collection::vec(
                (0..6u8, any::<bool>(), value(), value(), value(), value(), prop::array::uniform6(value()), any::<bool>()),
                0..40,
            ),
            parts in 1..5usize,
            assignment in prop::collection::vec(0..5usize, 40),
            order in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()),
        ) {
            let (mut whole_site, mut whole_region) = (SitePartial::default(), RegionPartial::default());
            let mut site_parts = vec![SitePartial::default(); parts];
            let mut region_parts = vec![RegionPartial::default(); parts];
            // Terminal ids in order, as an engine adds them.
            for (i, (site, degraded, rtt_z, loss_z, reconnects, timeouts, voltage, unstable)) in terminals.iter().enumerate() {
                let t = RegionTerminal {
                    terminal: format!("T-{i:03}").into(),
                    site: format!("S-{site}").into(),
                    degraded: *degraded,
                    rtt_z: *rtt_z,
                    loss_z: *loss_z,
                    reconnects: *reconnects,
                    timeouts: *timeouts,
                };
                let part = assignment[i] % parts;
                whole_site.add_terminal(voltage, *unstable);
                site_parts[part].add_terminal(voltage, *unstable);
                whole_region.add_terminal(t.clone());
                region_parts[part].add_terminal(t);
            }
            // Merged in an order of the seed's choosing.
            let mut idx: Vec<usize> = (0..parts).collect();
            idx.sort_by_key(|i| (order.rotate_left(*i as u32 * 7) ^ *i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (mut site, mut region) = (SitePartial::default(), RegionPartial::default());
            for i in idx {
                site.merge(&site_parts[i]);
                region.merge(&region_parts[i]);
            }
            prop_assert_eq!(site.features().map(bits), whole_site.features().map(bits));
            prop_assert_eq!(region_bits(&mut region), region_bits(&mut whole_region));
        }
    }

    proptest! {
        #[test]
        fn lessons_merged_from_any_split_in_any_order_are_one_engines_in_terminal_order(
            taught in prop::collection::vec((0..30u8, 0..3u8, 0..4u32), 0..60),
            assignment in prop::collection::vec(0..3usize, 30),
            order in prop::sample::select(vec![[0, 1, 2], [2, 0, 1], [1, 2, 0]]),
        ) {
            let lesson = |k: u32| Lesson::Reader { errors: k, attempts: 100 };
            // One engine's lessons: by terminal id, each terminal's own in
            // the order it taught them.
            let mut whole: Vec<(CompactString, CompactString, Lesson)> = taught
                .iter()
                .map(|&(t, c, k)| (format!("T{t:02}").into(), format!("C{c}").into(), lesson(k)))
                .collect();
            whole.sort_by(|a, b| a.0.cmp(&b.0));
            let mut parts = vec![Vec::new(); 3];
            for l in &whole {
                let t: usize = l.0[1..].parse().unwrap_or(0);
                parts[assignment[t]].push(l.clone());
            }
            let mut merged = CohortLessons::default();
            for i in order {
                merged.merge(&CohortLessons::from_sorted(parts[i].clone()));
            }
            prop_assert_eq!(&merged.lessons, &whole);
            // Lessons out of order (a producer that is not ours) are sorted.
            let mut shuffled = CohortLessons { lessons: whole.iter().rev().cloned().collect(), release: ReleaseLessons::default() };
            shuffled.merge(&CohortLessons::default());
            let mut expected: Vec<_> = whole.iter().rev().cloned().collect();
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(shuffled.lessons, expected);
        }
    }

    #[test]
    fn a_partial_merged_twice_counts_its_terminals_once() {
        let t = |id: &str, rtt_z: f64| RegionTerminal {
            terminal: id.into(),
            site: "S".into(),
            degraded: false,
            rtt_z,
            loss_z: 0.0,
            reconnects: 1.0,
            timeouts: 0.0,
        };
        let mut a = RegionPartial { terminals: vec![t("A", 1.0), t("B", 2.0), t("C", 3.0)] };
        let copy = a.clone();
        a.merge(&copy);
        assert_eq!(a, copy);
        assert!(matches!(a.features(), RegionWindow::Features(f) if f[6] == 3.0));
        // Two copies of a terminal that differ (a repartitioned topic): the
        // same one is kept whichever partial was merged first.
        let (x, y) = (
            RegionPartial { terminals: vec![t("A", 1.0), t("B", 2.0)] },
            RegionPartial { terminals: vec![t("A", 7.0), t("C", 3.0)] },
        );
        let (mut xy, mut yx) = (x.clone(), y.clone());
        xy.merge(&y);
        yx.merge(&x);
        assert_eq!(xy, yx);
        assert_eq!(xy.features(), yx.features());
        let mut thin = RegionPartial { terminals: vec![t("A", 1.0), t("B", 2.0)] };
        assert_eq!(thin.features(), RegionWindow::Thin);
        assert_eq!(RegionPartial::default().features(), RegionWindow::Empty);
    }

    #[test]
    fn a_regions_shares_leave_out_its_one_terminal_most_out_of_line() {
        let t = |id: &str, site: &str, rtt_z: f64, loss_z: f64| RegionTerminal {
            terminal: id.into(),
            site: site.into(),
            degraded: rtt_z > 3.0 || loss_z > 3.0,
            rtt_z,
            loss_z,
            reconnects: 0.0,
            timeouts: 0.0,
        };
        let shares = |terminals: Vec<RegionTerminal>| match (RegionPartial { terminals }).features() {
            RegionWindow::Features(f) => (f[0], f[1], f[6]),
            other => panic!("{other:?}"),
        };
        // Three reporting, one spiking: a third of the region, but one
        // terminal's; nothing is left of it.
        assert_eq!(
            shares(vec![t("A", "S1", 0.2, 0.1), t("B", "S2", 9.0, 0.0), t("C", "S3", -0.5, 0.3)]),
            (0.0, 0.0, 3.0)
        );
        // Two of four out of line: the lesser one counts, among the three
        // terminals (at two shops) left.
        assert_eq!(
            shares(vec![
                t("A", "S1", 5.0, 0.0),
                t("B", "S2", 0.0, 8.0),
                t("C", "S3", 0.1, 0.1),
                t("D", "S3", 0.0, 0.0)
            ]),
            (0.5, 1.0 / 3.0, 4.0)
        );
        // Of two alike the first in id order is left out: the other
        // still counts, and its shop is one of the two left.
        assert_eq!(
            shares(vec![t("A", "S1", 4.0, 0.0), t("B", "S1", 4.0, 0.0), t("C", "S2", 0.0, 0.0)]),
            (0.5, 0.5, 3.0)
        );
        // None out of line: the shares stay zero.
        assert_eq!(
            shares(vec![t("A", "S1", 0.0, 0.0), t("B", "S1", 1.0, 2.0), t("C", "S2", 2.9, 2.9)]),
            (0.0, 0.0, 3.0)
        );
    }

    #[test]
    fn a_region_is_thin_or_not_as_merged_and_counted_once_per_window() {
        let t = |id: &str| RegionTerminal {
            terminal: id.into(),
            site: "S".into(),
            degraded: false,
            rtt_z: 0.5,
            loss_z: 0.0,
            reconnects: 0.0,
            timeouts: 0.0,
        };
        let region = |end_ms: i64, ids: &[&str]| WindowPartials {
            end_ms,
            regions: vec![("r1".into(), RegionPartial { terminals: ids.iter().map(|i| t(i)).collect() })],
            ..WindowPartials::default()
        };
        let mut m = WindowMerger::new(&["a", "b"], 3_600_000, 100);
        // Two terminals in each source: thin in each, not merged.
        m.offer("a", region(300, &["A", "B"]));
        m.offer("b", region(300, &["C", "D"]));
        // Two terminals in all (one of them in both: a repartitioned topic).
        m.offer("a", region(600, &["A", "B"]));
        m.offer("b", region(600, &["B"]));
        m.progress("a", 600);
        let closed = m.progress("b", 600);
        let rows: Vec<&RegionWindow> = closed.iter().map(|w| &w.regions[0].1).collect();
        assert!(matches!(rows[0], RegionWindow::Features(f) if f[6] == 4.0), "{rows:?}");
        assert_eq!(rows[1], &RegionWindow::Thin);
        assert_eq!(m.counts(), MergerCounts { thin_region_windows: 1, ..MergerCounts::default() });
    }

    fn site(v: f64) -> WindowPartials {
        let mut p = SitePartial::default();
        p.add_terminal(&[v, 0.0, 0.0, 0.0, 0.0, 0.0], false);
        WindowPartials { end_ms: 0, sites: vec![("S".into(), p)], regions: Vec::new(), ..WindowPartials::default() }
    }

    fn at(end_ms: i64, mut w: WindowPartials) -> WindowPartials {
        w.end_ms = end_ms;
        w
    }

    #[test]
    fn a_window_closes_once_every_source_is_past_it_whatever_the_order() {
        let mut m = WindowMerger::new(&["a", "b"], 3_600_000, 100);
        assert!(m.offer("a", at(300, site(1.0))).is_empty());
        assert!(m.progress("a", 300).is_empty(), "b has not closed 300");
        assert!(m.offer("b", at(300, site(2.0))).is_empty());
        let closed = m.progress("b", 600);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].end_ms, 300);
        assert_eq!(closed[0].sites[0].features[0], 1.0, "second-worst of 1 and 2");
        assert!(closed[0].missing.is_empty());
        // A source with nothing in a window only moves on: it holds nothing.
        m.offer("a", at(600, site(3.0)));
        let closed = m.progress("a", 600);
        assert_eq!(closed.iter().map(|w| w.end_ms).collect::<Vec<_>>(), [600]);
        assert!(closed[0].missing.is_empty(), "b was past 600 without a partial: it had no terminal there");
        assert_eq!(m.counts(), MergerCounts::default());
    }

    fn scores(end_ms: i64, bins: &[(u16, u32)]) -> WindowScores {
        let d = DetectorScores {
            kind: AlertKind::VoltageInstability,
            scope: Scope::Terminal,
            bins: bins.to_vec(),
            peaks: Vec::new(),
        };
        WindowScores { end_ms, detectors: vec![d] }
    }

    #[test]
    fn scores_go_out_summed_with_the_next_window_once_per_source_and_late_ones_are_counted() {
        let mut m = WindowMerger::new(&["a", "b", "c"], 3_600_000, 3);
        for s in ["a", "b", "c"] {
            m.offer(s, at(300, site(1.0)));
            m.progress(s, 300);
        }
        // The lessons of 300 went out; two sources' scores of 300 come
        // back before their next window, one of them twice (a restarted
        // replica publishing again).
        m.offer_scores("a", scores(300, &[(3, 2), (7, 1)]));
        m.offer_scores("b", scores(300, &[(7, 4), (9, 1)]));
        m.offer_scores("b", scores(300, &[(7, 4), (9, 1)]));
        m.offer_scores("z", scores(300, &[(1, 1)]));
        assert_eq!((m.counts().duplicate_partials, m.counts().unknown_source), (1, 1));
        for s in ["a", "b"] {
            m.offer(s, at(600, site(1.0)));
            m.progress(s, 600);
        }
        let closed = m.progress("c", 600);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].scores, vec![scores(300, &[(3, 2), (7, 5), (9, 1)])]);
        assert!(m.check().is_ok());
        // a's scores of 300 again, once handed out: a replay still.
        m.offer_scores("a", scores(300, &[(3, 2), (7, 1)]));
        assert_eq!((m.counts().duplicate_partials, m.counts().late_scores), (2, 0));
        // c's scores of 300 now are late: the calibration has moved past them.
        m.offer_scores("c", scores(300, &[(3, 1)]));
        assert_eq!(m.counts().late_scores, 1);
        // A source publishing scores of windows far apart cannot grow the
        // map past the bound: the oldest go, counted.
        for w in 1..=5 {
            m.offer_scores("a", scores(600 * w, &[(1, 1)]));
        }
        assert_eq!(m.counts().late_scores, 3);
        assert!(m.check().is_ok());
        // At the end of a history the last scores are handed out whole.
        assert_eq!(m.take_scores().iter().map(|s| s.end_ms).collect::<Vec<_>>(), [1_800, 2_400, 3_000]);
        m.offer_scores("b", scores(3_000, &[(1, 1)]));
        assert_eq!(m.counts().late_scores, 4);
    }

    #[test]
    fn a_stuck_source_holds_windows_only_for_the_allowed_lateness_and_is_counted() {
        let mut m = WindowMerger::new(&["a", "b"], 900, 100);
        m.offer("a", at(300, site(1.0)));
        assert!(m.progress("a", 900).is_empty());
        let closed = m.progress("a", 1_200);
        assert_eq!(closed.len(), 1, "300 + 900 reached by the newest source");
        assert_eq!(closed[0].missing, vec![Box::<str>::from("b")]);
        assert_eq!(m.counts().incomplete_windows, 1);
        // b's partial, when it comes, is too late for a closed window.
        m.offer("b", at(300, site(2.0)));
        assert_eq!(m.counts().late_partials, 1);
    }

    #[test]
    fn an_ended_source_holds_nothing_until_it_publishes_again() {
        let mut m = WindowMerger::new(&["a", "b"], 3_600_000, 100);
        m.offer("a", at(300, site(1.0)));
        assert!(m.progress("a", 300).is_empty());
        let closed = m.end_of_source("b");
        assert_eq!(closed.len(), 1);
        assert!(closed[0].missing.is_empty(), "b had nothing more");
        assert_eq!(m.counts().incomplete_windows, 0);
        // Back, b holds windows open again.
        assert!(m.progress("b", 300).is_empty());
        m.offer("a", at(600, site(1.0)));
        assert!(m.progress("a", 600).is_empty(), "b is at 300");
        assert_eq!(m.progress("b", 600).len(), 1);
    }

    #[test]
    fn a_window_republished_after_its_source_moved_on_is_a_replay_not_lost_data() {
        let mut m = WindowMerger::new(&["a"], 900, 100);
        m.offer("a", at(300, site(1.0)));
        assert_eq!(m.progress("a", 300).len(), 1);
        // A restarted replica publishes 300 again.
        assert!(m.offer("a", at(300, site(1.0))).is_empty());
        assert_eq!(m.counts(), MergerCounts { duplicate_partials: 1, ..MergerCounts::default() });
    }

    #[test]
    fn a_window_offered_when_it_can_close_closes_at_once() {
        // Every source has ended.
        let mut m = WindowMerger::new(&["a", "b"], 900, 100);
        m.end_of_source("a");
        m.end_of_source("b");
        assert_eq!(m.offer("a", at(300, site(1.0))).len(), 1);
        // The newest source is past it by the allowed lateness already.
        let mut m = WindowMerger::new(&["a", "b"], 900, 100);
        m.progress("a", 2_000);
        let closed = m.offer("b", at(300, site(1.0)));
        assert_eq!(closed.len(), 1);
        assert!(closed[0].missing.is_empty(), "a passed 300 with no partial: it had no terminal there");
        assert_eq!(m.open_windows(), 0);
    }

    #[test]
    fn a_merger_read_back_from_a_snapshot_goes_on_as_if_never_stopped() {
        let feed = |m: &mut WindowMerger, range: std::ops::Range<i64>| -> Vec<MergedWindow> {
            let mut closed = Vec::new();
            for i in range {
                let end = i * 300;
                closed.extend(m.offer("a", at(end, site(i as f64))));
                closed.extend(m.progress("a", end));
                closed.extend(m.offer("b", at(end - 300, site(-(i as f64)))));
                closed.extend(m.progress("b", end - 300));
            }
            closed
        };
        let mut once = WindowMerger::new(&["a", "b"], 3_600, 8);
        let all = feed(&mut once, 1..40);
        let mut first = WindowMerger::new(&["a", "b"], 3_600, 8);
        let mut closed = feed(&mut first, 1..20);
        let bytes = postcard::to_stdvec(&first).expect("encode");
        let mut second: WindowMerger = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(second.check(), Ok(()));
        assert!(second.open_windows() > 0, "the snapshot holds open windows");
        closed.extend(feed(&mut second, 20..40));
        assert_eq!(closed, all);

        let mut bad = first.clone();
        bad.max_open_windows = 0;
        assert!(bad.check().is_err());
        let mut bad = first.clone();
        bad.closed_through = i64::MAX;
        assert!(bad.check().unwrap_err().contains("is open"));
        let mut bad = first.clone();
        bad.ended.insert("z".into());
        assert!(bad.check().unwrap_err().contains("\"z\""));
    }

    #[test]
    fn a_partial_published_again_is_taken_once_and_strangers_are_counted() {
        let mut m = WindowMerger::new(&["a"], 900, 100);
        m.offer("a", at(300, site(1.0)));
        m.offer("a", at(300, site(9.0)));
        m.offer("x", at(300, site(9.0)));
        m.progress("x", 300);
        let closed = m.progress("a", 300);
        assert_eq!(closed[0].sites[0].features[0], 1.0);
        assert_eq!(m.counts().duplicate_partials, 1);
        assert_eq!(m.counts().unknown_source, 2);
    }

    #[test]
    fn open_windows_are_bounded_and_the_oldest_closes_first() {
        let mut m = WindowMerger::new(&["a", "b"], i64::MAX / 4, 3);
        let mut closed = Vec::new();
        for end in (1..=10).map(|i| i * 300) {
            closed.extend(m.offer("a", at(end, site(1.0))));
            assert!(m.open_windows() <= 3);
        }
        assert_eq!(closed.iter().map(|w| w.end_ms).collect::<Vec<_>>(), (1..=7).map(|i| i * 300).collect::<Vec<_>>());
        assert!(closed.iter().all(|w| w.missing == [Box::<str>::from("b")]), "closed without b");
        assert_eq!(m.counts().incomplete_windows, 7);
        // Closed already: late.
        m.offer("b", at(300, site(1.0)));
        assert_eq!(m.counts().late_partials, 1);
    }

    #[test]
    fn a_window_older_than_every_window_the_bound_keeps_closes_at_once_with_what_it_has() {
        let mut m = WindowMerger::new(&["a", "b"], i64::MAX / 4, 2);
        assert!(m.offer("a", at(900, site(1.0))).is_empty());
        assert!(m.offer("a", at(1_200, site(1.0))).is_empty());
        let closed = m.offer("b", at(600, site(5.0)));
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].end_ms, closed[0].sites[0].features[0]), (600, 5.0));
        assert_eq!(closed[0].missing, vec![Box::<str>::from("a")]);
        assert_eq!(m.open_windows(), 2);
    }

    #[test]
    fn the_second_worst_of_a_union_is_the_second_worst_of_the_parts_second_worsts() {
        let mut a = TopTwo::default();
        let mut b = TopTwo::default();
        for x in [1.0, 5.0] {
            a.push(x);
        }
        for x in [4.0, 2.0] {
            b.push(x);
        }
        a.merge(&b);
        assert_eq!(a.second(), 4.0);
        let mut one = TopTwo::default();
        one.push(3.0);
        assert_eq!(one.second(), 3.0, "a one-terminal site is that terminal");
    }
}
