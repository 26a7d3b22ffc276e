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
mod stats;

pub use engine::{
    AgingRow, Counters, DEFAULT_SOURCE, FeatureConfig, FeatureEngine, Held, LimitCounts, Limits, NetworkRow,
    RegionCounts, SiteVoltageRow, SourceProgress, TerminalStates, TerminalVoltageRow, WindowRows,
};
pub use stats::Ewma;

/// Feature names, in the order of each row's `features` array.
pub mod names {
    pub const TERMINAL_VOLTAGE: [&str; 6] =
        ["v_std_log_ratio", "v_mean_drop", "v_range_log_ratio", "sags_per_minute", "reboots_per_minute", "v_min_drop"];
    /// `_second_worst`: the site's second-worst terminal's value, so one
    /// terminal's failing power supply does not look like the site's mains.
    pub const SITE_VOLTAGE: [&str; 6] = [
        "v_std_log_ratio_second_worst",
        "v_mean_drop_second_worst",
        "sags_per_minute_second_worst",
        "share_terminals_unstable",
        "reboots_per_minute_second_worst",
        "terminals_reporting",
    ];
    /// Where `terminals_reporting` is in [`SITE_VOLTAGE`].
    pub const SITE_TERMINALS_REPORTING: usize = 5;
    pub const NETWORK: [&str; 6] = [
        "share_sites_degraded",
        "share_terminals_degraded",
        "rtt_log_ratio_median",
        "loss_excess_mean",
        "reconnects_per_minute_mean",
        "timeouts_per_txn_mean",
    ];
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
}

#[cfg(test)]
mod tests {
    #[test]
    fn site_terminals_reporting_names_its_column() {
        assert_eq!(super::names::SITE_VOLTAGE[super::names::SITE_TERMINALS_REPORTING], "terminals_reporting");
    }
}
