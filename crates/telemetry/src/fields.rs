//! The fields of telemetry v1, in one place: names, types and valid ranges.
//!
//! Decoding, validation, the Arrow schema and the batch builder are all
//! driven from these tables, so adding a field to the contract is a change
//! here and nowhere else.

use std::fmt;

/// A measurement: a float, null when not measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    SupplyVMean,
    SupplyVMin,
    SupplyVMax,
    SupplyVStd,
    BatteryPct,
    BatteryHealthPct,
    TemperatureC,
    TxnLatencyP50Ms,
    TxnLatencyP95Ms,
    NetRttMs,
    NetLossPct,
    NetSignalDbm,
    MemUsedPct,
    CpuPct,
}

impl Measure {
    pub const COUNT: usize = 14;
    pub const ALL: [Measure; Self::COUNT] = [
        Measure::SupplyVMean,
        Measure::SupplyVMin,
        Measure::SupplyVMax,
        Measure::SupplyVStd,
        Measure::BatteryPct,
        Measure::BatteryHealthPct,
        Measure::TemperatureC,
        Measure::TxnLatencyP50Ms,
        Measure::TxnLatencyP95Ms,
        Measure::NetRttMs,
        Measure::NetLossPct,
        Measure::NetSignalDbm,
        Measure::MemUsedPct,
        Measure::CpuPct,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measure::SupplyVMean => "supply_v_mean",
            Measure::SupplyVMin => "supply_v_min",
            Measure::SupplyVMax => "supply_v_max",
            Measure::SupplyVStd => "supply_v_std",
            Measure::BatteryPct => "battery_pct",
            Measure::BatteryHealthPct => "battery_health_pct",
            Measure::TemperatureC => "temperature_c",
            Measure::TxnLatencyP50Ms => "txn_latency_p50_ms",
            Measure::TxnLatencyP95Ms => "txn_latency_p95_ms",
            Measure::NetRttMs => "net_rtt_ms",
            Measure::NetLossPct => "net_loss_pct",
            Measure::NetSignalDbm => "net_signal_dbm",
            Measure::MemUsedPct => "mem_used_pct",
            Measure::CpuPct => "cpu_pct",
        }
    }

    /// Inclusive valid range, from the contract.
    pub fn range(self) -> (f64, f64) {
        match self {
            Measure::SupplyVMean | Measure::SupplyVMin | Measure::SupplyVMax | Measure::SupplyVStd => VOLTS,
            Measure::BatteryPct
            | Measure::BatteryHealthPct
            | Measure::NetLossPct
            | Measure::MemUsedPct
            | Measure::CpuPct => PERCENT,
            Measure::TemperatureC => (-40.0, 125.0),
            Measure::TxnLatencyP50Ms | Measure::TxnLatencyP95Ms | Measure::NetRttMs => (0.0, f64::MAX),
            Measure::NetSignalDbm => (-150.0, 0.0),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A counter: events during the reporting interval, `0..2^32`, null when not
/// measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    SupplySags,
    SupplySwells,
    CardReads,
    CardReadErrors,
    PrintJobs,
    PrintErrors,
    TxnCount,
    TxnFailed,
    TxnTimeouts,
    NetReconnects,
    Reboots,
    AppCrashes,
}

impl Counter {
    pub const COUNT: usize = 12;
    pub const ALL: [Counter; Self::COUNT] = [
        Counter::SupplySags,
        Counter::SupplySwells,
        Counter::CardReads,
        Counter::CardReadErrors,
        Counter::PrintJobs,
        Counter::PrintErrors,
        Counter::TxnCount,
        Counter::TxnFailed,
        Counter::TxnTimeouts,
        Counter::NetReconnects,
        Counter::Reboots,
        Counter::AppCrashes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::SupplySags => "supply_sags",
            Counter::SupplySwells => "supply_swells",
            Counter::CardReads => "card_reads",
            Counter::CardReadErrors => "card_read_errors",
            Counter::PrintJobs => "print_jobs",
            Counter::PrintErrors => "print_errors",
            Counter::TxnCount => "txn_count",
            Counter::TxnFailed => "txn_failed",
            Counter::TxnTimeouts => "txn_timeouts",
            Counter::NetReconnects => "net_reconnects",
            Counter::Reboots => "reboots",
            Counter::AppCrashes => "app_crashes",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// An optional identifier-like string (1-64 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    SiteId,
    MerchantId,
    Model,
    Firmware,
}

impl Label {
    pub const COUNT: usize = 4;
    pub const ALL: [Label; Self::COUNT] = [Label::SiteId, Label::MerchantId, Label::Model, Label::Firmware];

    pub fn name(self) -> &'static str {
        match self {
            Label::SiteId => "site_id",
            Label::MerchantId => "merchant_id",
            Label::Model => "model",
            Label::Firmware => "firmware",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

const VOLTS: (f64, f64) = (0.0, 60.0);
const PERCENT: (f64, f64) = (0.0, 100.0);

/// Default of `interval_s` when absent or null.
pub const DEFAULT_INTERVAL_S: u32 = 60;
/// Default of `supply_v_nominal` when absent or null.
pub const DEFAULT_SUPPLY_V_NOMINAL: f64 = 12.0;
/// Longest identifier, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// How far past ingestion time an event time may lie before the record is refused.
pub const MAX_FUTURE_MS: i64 = 24 * 3_600_000;

/// Every field of telemetry v1 that the decoder understands, plus
/// [`Field::Record`] for a record unusable as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// The record as a whole: not JSON, not an object, not UTF-8, truncated.
    Record,
    TerminalId,
    Ts,
    Region,
    Label(Label),
    InstalledOn,
    IntervalS,
    SupplyVNominal,
    Measure(Measure),
    Counter(Counter),
    UptimeS,
    NetType,
}

impl Field {
    /// Looks a JSON key up. Unknown keys are `None`: the contract says they
    /// are ignored, so newer firmware can add fields.
    pub fn from_key(key: &str) -> Option<Field> {
        use Counter as C;
        use Measure as M;
        Some(match key {
            "terminal_id" => Field::TerminalId,
            "ts" => Field::Ts,
            "region" => Field::Region,
            "site_id" => Field::Label(Label::SiteId),
            "merchant_id" => Field::Label(Label::MerchantId),
            "model" => Field::Label(Label::Model),
            "firmware" => Field::Label(Label::Firmware),
            "installed_on" => Field::InstalledOn,
            "interval_s" => Field::IntervalS,
            "supply_v_nominal" => Field::SupplyVNominal,
            "supply_v_mean" => Field::Measure(M::SupplyVMean),
            "supply_v_min" => Field::Measure(M::SupplyVMin),
            "supply_v_max" => Field::Measure(M::SupplyVMax),
            "supply_v_std" => Field::Measure(M::SupplyVStd),
            "supply_sags" => Field::Counter(C::SupplySags),
            "supply_swells" => Field::Counter(C::SupplySwells),
            "battery_pct" => Field::Measure(M::BatteryPct),
            "battery_health_pct" => Field::Measure(M::BatteryHealthPct),
            "temperature_c" => Field::Measure(M::TemperatureC),
            "card_reads" => Field::Counter(C::CardReads),
            "card_read_errors" => Field::Counter(C::CardReadErrors),
            "print_jobs" => Field::Counter(C::PrintJobs),
            "print_errors" => Field::Counter(C::PrintErrors),
            "txn_count" => Field::Counter(C::TxnCount),
            "txn_failed" => Field::Counter(C::TxnFailed),
            "txn_timeouts" => Field::Counter(C::TxnTimeouts),
            "txn_latency_p50_ms" => Field::Measure(M::TxnLatencyP50Ms),
            "txn_latency_p95_ms" => Field::Measure(M::TxnLatencyP95Ms),
            "net_type" => Field::NetType,
            "net_rtt_ms" => Field::Measure(M::NetRttMs),
            "net_loss_pct" => Field::Measure(M::NetLossPct),
            "net_signal_dbm" => Field::Measure(M::NetSignalDbm),
            "net_reconnects" => Field::Counter(C::NetReconnects),
            "uptime_s" => Field::UptimeS,
            "reboots" => Field::Counter(C::Reboots),
            "app_crashes" => Field::Counter(C::AppCrashes),
            "mem_used_pct" => Field::Measure(M::MemUsedPct),
            "cpu_pct" => Field::Measure(M::CpuPct),
            _ => return None,
        })
    }

    /// The JSON key, or `(record)`.
    pub fn name(self) -> &'static str {
        match self {
            Field::Record => "(record)",
            Field::TerminalId => "terminal_id",
            Field::Ts => "ts",
            Field::Region => "region",
            Field::Label(l) => l.name(),
            Field::InstalledOn => "installed_on",
            Field::IntervalS => "interval_s",
            Field::SupplyVNominal => "supply_v_nominal",
            Field::Measure(m) => m.name(),
            Field::Counter(c) => c.name(),
            Field::UptimeS => "uptime_s",
            Field::NetType => "net_type",
        }
    }

    /// Every field of the contract, `Record` excluded.
    pub fn all() -> impl Iterator<Item = Field> {
        [
            Field::TerminalId,
            Field::Ts,
            Field::Region,
            Field::InstalledOn,
            Field::IntervalS,
            Field::SupplyVNominal,
            Field::UptimeS,
            Field::NetType,
        ]
        .into_iter()
        .chain(Label::ALL.map(Field::Label))
        .chain(Measure::ALL.map(Field::Measure))
        .chain(Counter::ALL.map(Field::Counter))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The uplink in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetType {
    Eth,
    Wifi,
    Cellular,
}

impl NetType {
    pub const ALL: [NetType; 3] = [NetType::Eth, NetType::Wifi, NetType::Cellular];

    pub fn as_str(self) -> &'static str {
        match self {
            NetType::Eth => "eth",
            NetType::Wifi => "wifi",
            NetType::Cellular => "cellular",
        }
    }

    pub fn parse(s: &str) -> Option<NetType> {
        match s {
            "eth" => Some(NetType::Eth),
            "wifi" => Some(NetType::Wifi),
            "cellular" => Some(NetType::Cellular),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_round_trips_through_its_key() {
        let mut n = 0;
        for f in Field::all() {
            assert_eq!(Field::from_key(f.name()), Some(f), "{f}");
            n += 1;
        }
        // The contract's table has 38 fields.
        assert_eq!(n, 38);
    }

    #[test]
    fn indices_match_table_positions() {
        for (i, m) in Measure::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
        }
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        for (i, l) in Label::ALL.iter().enumerate() {
            assert_eq!(l.index(), i);
        }
    }

    #[test]
    fn unknown_keys_are_ignored() {
        assert_eq!(Field::from_key("firmware_channel"), None);
    }
}
