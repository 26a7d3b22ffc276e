//! The one feature code path. Training and scoring both feed telemetry
//! batches (the Arrow schema of `termwatch-telemetry`) into a
//! [`FeatureEngine`], which keeps per-terminal, per-site and per-region state
//! in event time and emits, for every closed window, one row of features per
//! entity that reported in it. Training collects the rows; the service scores
//! them. Nothing else computes features, so the two cannot drift apart.
//!
//! Windows are tumbling, `window_ms` long, on a grid anchored at the epoch;
//! the row of window `[start, end)` carries `end` as its time.
//!
//! Event time is kept per input (a Kafka partition, a history file): each
//! input's watermark is how far in event time its recent reports have come
//! (the lower median of its last 8, never going back). A window closes once
//! every input that is not idle has passed its end by `lateness_ms`; an
//! input that has ended for now (a file read to its end, a caught-up
//! partition) holds nothing open. A report is late when its own input has
//! left its window behind by the lateness (or the window has closed). A
//! report more than `max_ahead_ms` past its terminal's latest waits for the
//! terminal's next one, and is dropped as ahead if the clock went back by
//! more than that; both
//! are counted. So the order in which inputs
//! interleave changes nothing: a backlog read from six partitions at six
//! speeds gives the rows one ordered pass gives. A terminal that sends
//! nothing (switched off) has no row: gaps are absences, never zeros.

mod engine;
pub mod partial;
mod release;
pub mod stages;
mod stats;
pub mod wire;

pub use engine::{
    AgingRow, Counters, DEFAULT_SOURCE, Departed, FeatureConfig, FeatureEngine, Held, LimitCounts, Limits,
    MIN_REGION_TERMINALS, NetworkRow, RegionCounts, SiteVoltageRow, SourceProgress, TerminalStates, TerminalVoltageRow,
    WindowRows,
};
pub use release::{MAX_RELEASES, PROBATION_MS, ReleaseLessons, ReleasePartial, ReleaseRow, UPDATE_GRACE_MS};
pub use stats::{Ewma, FNV_OFFSET, Spread, fnv1a, poisson_surprise};

/// Feature names, in the order of each row's `features` array.
pub mod names {
    /// `_z`: in units of the terminal's own spread (standard deviations
    /// from its level); `_surprise`: how unlikely the window's count is at
    /// the terminal's own rate, `-ln P(X >= k)` in nats (a report's sags
    /// and swells count as the larger of the two: a supply that swings
    /// across both lines in one report is one disturbance).
    pub const TERMINAL_VOLTAGE: [&str; 6] =
        ["v_std_z", "v_mean_drop_z", "v_range_z", "sag_surprise", "reboot_surprise", "v_min_drop_z"];
    /// `_second_worst`: the site's second-worst terminal's value, so one
    /// terminal's failing power supply does not look like the site's mains.
    pub const SITE_VOLTAGE: [&str; 6] = [
        "v_std_z_second_worst",
        "v_mean_drop_z_second_worst",
        "sag_surprise_second_worst",
        "share_terminals_unstable",
        "reboot_surprise_second_worst",
        "terminals_reporting",
    ];
    /// Where `terminals_reporting` is in [`SITE_VOLTAGE`].
    pub const SITE_TERMINALS_REPORTING: usize = 5;
    /// Over the region's terminals with a baseline, each against its own.
    /// `_median_se`: the median of the terminals' z-scores in standard
    /// errors of such a median (times sqrt(n) / 1.2533), so that regions
    /// of any size share one scale; `_trimmed_mean`: the mean without the
    /// terminal that contributes most, so one terminal's burst (a bad
    /// cable, a SIM fault) does not move its region; `_trimmed` shares:
    /// of the sites and terminals other than the one terminal most out of
    /// line, for the same reason; `terminals_reporting`: how many.
    pub const NETWORK: [&str; 7] = [
        "share_sites_degraded_trimmed",
        "share_terminals_degraded_trimmed",
        "rtt_z_median_se",
        "loss_z_median_se",
        "reconnect_surprise_trimmed_mean",
        "timeout_surprise_trimmed_mean",
        "terminals_reporting",
    ];
    /// Per part: `_wear_evidence`, evidence (nats, `ln(1 + x)`) that its
    /// error rate has doubled against its own; `_wear_vs_cohort`, that it
    /// is four times its cohort's rather than twice; `_error_log_ratio`,
    /// its recent rate against its own. Each is the part's beyond what the
    /// terminal's other part shows too (the larger of zero and the smaller
    /// of the two is taken from both): an old or busy terminal errs more on
    /// every part, a worn part stands out from the other.
    pub const AGING: [&str; 8] = [
        "reader_wear_evidence",
        "printer_wear_evidence",
        "reader_wear_vs_cohort",
        "printer_wear_vs_cohort",
        "battery_health_deficit",
        "reader_error_log_ratio",
        "printer_error_log_ratio",
        "battery_health_drop_per_day",
    ];
    /// One firmware version (`MODEL/FIRMWARE`), over its terminals in their
    /// first week on it, each against its own rates on the version it ran
    /// before (shrunk towards its model's while it has little history),
    /// moved by what the terminals of its region off probation show in the
    /// same window against theirs (a network problem, a busy morning).
    /// `_surprise`: `-ln P(X >= k - 1)` of the version's count k (a day's
    /// decayed sum) at the count expected, one event never being evidence;
    /// an update's own reboot is not counted,
    /// nor are failures and latency in windows where the terminal's own
    /// network is out of line. `mem_climb_per_hour`: memory points gained
    /// per hour within one boot beyond the expected, shrunk with four hours
    /// of none (a leak climbs; a version that simply uses more memory steps
    /// once, across the update's reboot). `p95_latency_z_mean`: the
    /// terminals' p95 latency in units of their own spread, averaged over
    /// their windows (shrunk with 24 windows of none), less their region's peers'.
    pub const FIRMWARE: [&str; 5] =
        ["crash_surprise", "reboot_surprise", "txn_failed_surprise", "mem_climb_per_hour", "p95_latency_z_mean"];
}

#[cfg(test)]
mod tests {
    #[test]
    fn site_terminals_reporting_names_its_column() {
        assert_eq!(super::names::SITE_VOLTAGE[super::names::SITE_TERMINALS_REPORTING], "terminals_reporting");
    }
}
