//! Snapshots of what scoring has learned (feature state, baselines, alert
//! state), so a restart or a deploy does not erase days of baselines.
//!
//! A snapshot file is `TWSNAP` + format version (u32, little endian) +
//! FNV-1a 64 of the payload (u64, little endian) + the payload (postcard).
//! It is written to a temporary file in the same directory, synced, and
//! renamed over the old one, so a crash leaves the old snapshot or the new
//! one, never half of either. A snapshot that is corrupt, of another format,
//! or taken with another model or feature configuration is refused with a
//! message that says which, and scoring starts cold.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use termwatch_features::{Departed, FeatureConfig, FeatureEngine, SourceProgress, TerminalStates};

use termwatch_telemetry::alerts::{AlertKind, Scope};

use crate::alerting::AlertSnapshot;
use crate::calibration::FleetCalibration;
use termwatch_models::training::{FNV_OFFSET, fnv1a};

const MAGIC: &[u8; 6] = b"TWSNAP";
/// A per-partition snapshot: same layout, its own magic, so one file is
/// never taken for the other.
const PARTITION_MAGIC: &[u8; 6] = b"TWPART";
/// One idle terminal's state in a cold store ([`ColdEntry`]).
const COLD_MAGIC: &[u8; 6] = b"TWCOLD";
/// The regional stage's state ([`RegionalSnapshot`]).
const REGIONAL_MAGIC: &[u8; 6] = b"TWREGN";
/// 2: the wear evidence of hardware aging (feature state of another shape).
/// 3: window sums hold the minutes their counters cover (`interval_s`).
/// 4: event time per input (a partition's progress), open windows per terminal.
/// 5: baselines are a level and a spread (features in units of each
///    entity's own variability), rates of sags, reboots, reconnects, timeouts.
/// 6: release health (each terminal's version and own rates, each version's
///    evidence).
/// 7: the names of versions and the versions each version's terminals came
///    from (the baseline its alert names).
/// 8: the switches a terminal's open windows may predate (a window is
///    judged by the version of its end).
/// 9: each version's latest row and whether it was retired (no terminal
///    runs it any more).
/// 10: each detector's fleet calibration (a histogram of its scores).
/// 11: the wear evidence each part's current run of windows with errors
///     has added (a burst of errors is one event).
/// 12: each cohort's pooled spread of its terminals about their own levels
///     (a young terminal's voltage is judged by its own first windows too).
/// 13: a stage-1 scorer's windows waiting for their lessons, its records
///     for the partials topic not yet taken, and the thresholds taught.
/// 16: the merging stage's cohorts, learnt once from every engine's
///     lessons, whose states it sends back instead of the lessons.
const FORMAT: u32 = 17;
const HEADER: usize = 6 + 4 + 8;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("cannot write snapshot {path}: {cause}")]
    Write { path: String, cause: std::io::Error },
    #[error("snapshot {path} is not a termwatch snapshot of this kind (bad magic or too short)")]
    NotASnapshot { path: String },
    #[error("snapshot {path} has format {found}; this termwatch reads format {FORMAT}")]
    Format { path: String, found: u32 },
    #[error("snapshot {path} is corrupt: checksum mismatch")]
    Checksum { path: String },
    #[error("snapshot {path} cannot be decoded: {cause}")]
    Decode { path: String, cause: String },
    #[error("snapshot {path} was taken with model {found:?}, but scoring uses {expected:?}")]
    Model { path: String, found: String, expected: String },
    #[error("snapshot {path} was taken with another feature configuration than the model's")]
    Features { path: String },
    #[error("snapshot cannot be encoded: {0}")]
    Encode(String),
    #[error("snapshot {path} is for partition {found}, not {expected}")]
    Partition { path: String, found: String, expected: String },
    #[error("snapshot {path} merges the partials of {found}, but the telemetry topic's partitions are {expected}")]
    Sources { path: String, found: String, expected: String },
    #[error(
        "snapshot {path} is a stage-1 scorer's, with windows waiting for the regional stage's lessons: \
         restore it into a scorer that runs as stage 1"
    )]
    StageOne { path: String },
}

/// Everything scoring has learned, with what it covers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub model_version: String,
    pub engine: FeatureEngine,
    pub alerts: AlertSnapshot,
    pub fleet: FleetCalibration,
    /// A stage-1 scorer's own state (None for one process).
    pub stage_one: Option<StageOne>,
    /// Where the input stood when the snapshot was taken, in words (a file
    /// and line, or Kafka offsets), for the operator.
    pub position: String,
}

/// [`Snapshot`] by reference, for saving without copying the state; the
/// same fields in the same order, so it decodes as a `Snapshot`.
#[derive(Serialize)]
pub struct SnapshotRef<'a> {
    pub model_version: &'a str,
    pub engine: &'a FeatureEngine,
    pub alerts: &'a AlertSnapshot,
    pub fleet: &'a FleetCalibration,
    pub stage_one: Option<&'a StageOne>,
    pub position: &'a str,
}

impl Snapshot {
    pub fn save(&self, path: &Path) -> Result<u64, SnapshotError> {
        self.as_ref().save(path)
    }

    /// The bytes of the snapshot file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        self.as_ref().to_bytes()
    }

    fn as_ref(&self) -> SnapshotRef<'_> {
        SnapshotRef {
            model_version: &self.model_version,
            engine: &self.engine,
            alerts: &self.alerts,
            fleet: &self.fleet,
            stage_one: self.stage_one.as_ref(),
            position: &self.position,
        }
    }
}

/// What a stage-1 scorer holds besides its engine and alert state
/// (docs/two-stages.md): the closed windows whose terminals wait for their
/// lessons, the records for the partials topic its owner has not taken
/// (published again after a restore: the merger takes a window's partials
/// once per source), and the thresholds the latest lessons taught.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageOne {
    pub held: Vec<HeldWindow>,
    pub outbox: Vec<termwatch_features::wire::PartialsRecord>,
    /// `(kind, scope, threshold, critical)`.
    pub thresholds: Vec<(AlertKind, Scope, f64, f64)>,
    /// Lessons read of windows it had not closed yet.
    pub pending: Vec<termwatch_features::wire::Lessons>,
    /// Where `termwatch run` as stage 1 reads on after a restore: the
    /// telemetry partition's next offset and the lessons topic's (None for
    /// a scorer driven without Kafka).
    pub offsets: Option<StageOffsets>,
}

/// A stage-1 snapshot's positions in both topics it reads: it covers every
/// record before them, and none after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOffsets {
    pub telemetry: i64,
    pub lessons: i64,
}

/// A closed window's terminal rows, waiting for its lessons; by name, since
/// the engine may forget an idle terminal, or give its index to another,
/// before they come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldWindow {
    pub end_ms: i64,
    /// Voltage rows (`names::TERMINAL_VOLTAGE`).
    pub voltage: Vec<HeldRow>,
    /// Hardware aging rows (`names::AGING`).
    pub aging: Vec<HeldRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldRow {
    pub terminal: Box<str>,
    pub site: Box<str>,
    pub region: Box<str>,
    pub features: Box<[f64]>,
    /// What the features were measured against, for alert reasons.
    pub baselines: Box<[f64]>,
}

/// More windows than a stage-1 scorer ever holds (one or two: it closes
/// none before the one before it is learnt).
pub const MAX_HELD_WINDOWS: usize = 64;

impl StageOne {
    /// Refuses a state read back that this code would never have produced:
    /// more windows than it holds, windows out of order, rows of another
    /// width, or thresholds that are not probabilities.
    pub fn check(&self, voltage_width: usize, aging_width: usize) -> Result<(), String> {
        if self.held.len() > MAX_HELD_WINDOWS {
            return Err(format!("{} windows held, at most {MAX_HELD_WINDOWS}", self.held.len()));
        }
        if self.pending.len() > crate::scoring::MAX_PENDING_LESSONS + 1 {
            return Err(format!(
                "{} lessons records pending, at most {}",
                self.pending.len(),
                crate::scoring::MAX_PENDING_LESSONS
            ));
        }
        if self.held.windows(2).any(|w| w[0].end_ms >= w[1].end_ms) {
            return Err("held windows out of order".into());
        }
        for h in &self.held {
            let rows = h.voltage.iter().map(|r| (r, voltage_width)).chain(h.aging.iter().map(|r| (r, aging_width)));
            for (r, width) in rows {
                if r.features.len() != width || r.baselines.len() != width {
                    return Err(format!(
                        "a row of terminal {:?} of {} features, not {width}",
                        r.terminal,
                        r.features.len()
                    ));
                }
            }
        }
        if let Some(t) = self.thresholds.iter().find(|t| !(0.0..=1.0).contains(&t.2) || !(0.0..=1.0).contains(&t.3)) {
            return Err(format!("thresholds {} and {} of {} {}", t.2, t.3, t.0, t.1));
        }
        Ok(())
    }
}

impl SnapshotRef<'_> {
    /// Writes atomically: a temporary file, synced, renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<u64, SnapshotError> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// The bytes of the snapshot file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let payload = postcard::to_stdvec(self).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        Ok(framed(SnapshotKind::Shared, &payload))
    }
}

/// The two kinds of snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// [`Snapshot`]: everything, or what no partition snapshot holds.
    Shared,
    /// [`PartitionSnapshot`].
    Partition,
    /// [`ColdEntry`].
    Cold,
    /// [`RegionalSnapshot`].
    Regional,
}

/// A snapshot file around `payload`: magic, format and checksum. Public for
/// the fuzz target, which must reach the decoder past the checksum.
pub fn framed(kind: SnapshotKind, payload: &[u8]) -> Vec<u8> {
    let magic = match kind {
        SnapshotKind::Shared => MAGIC,
        SnapshotKind::Partition => PARTITION_MAGIC,
        SnapshotKind::Cold => COLD_MAGIC,
        SnapshotKind::Regional => REGIONAL_MAGIC,
    };
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&fnv1a(FNV_OFFSET, payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

impl Snapshot {
    /// Reads and checks a snapshot.
    pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
        read(path, MAGIC)
    }

    /// Checks and decodes the bytes of a snapshot file; `name` is what errors call it.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Snapshot, SnapshotError> {
        decode(bytes, MAGIC, name)
    }
}

/// What scoring has learned about the terminals of one Kafka partition, and
/// the offset it covers: every record before `next_offset` was applied,
/// none after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub model_version: String,
    pub features: FeatureConfig,
    pub topic: String,
    pub partition: i32,
    /// The next offset to consume: where the consumer seeks on restore.
    pub next_offset: i64,
    /// How far in event time the partition had delivered.
    pub source: Option<SourceProgress>,
    pub terminals: TerminalStates,
    /// Terminal-scope alert state of those terminals.
    pub alerts: AlertSnapshot,
}

impl PartitionSnapshot {
    pub fn save(&self, path: &Path) -> Result<u64, SnapshotError> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// The bytes of the snapshot file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let payload = postcard::to_stdvec(self).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        Ok(framed(SnapshotKind::Partition, &payload))
    }

    pub fn load(path: &Path) -> Result<PartitionSnapshot, SnapshotError> {
        read(path, PARTITION_MAGIC)
    }

    /// Checks and decodes the bytes of a partition snapshot file.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<PartitionSnapshot, SnapshotError> {
        decode(bytes, PARTITION_MAGIC, name)
    }
}

/// One terminal's state as a cold store keeps it once the terminal has been
/// silent past `limits.idle_terminal_days`, with the feature configuration
/// it was learnt under (a state learnt under another is not used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdEntry {
    pub features: FeatureConfig,
    pub terminal: Departed,
}

impl ColdEntry {
    /// Writes through a temporary file renamed over `path`, without waiting
    /// for the disk: a cold entry lost in a crash costs one terminal its
    /// baselines, and a torn one fails its checksum.
    pub fn save(&self, path: &Path) -> Result<u64, SnapshotError> {
        write_replace(path, &self.to_bytes()?, false)
    }

    /// The bytes of the entry's file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let payload = postcard::to_stdvec(self).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        Ok(framed(SnapshotKind::Cold, &payload))
    }

    pub fn load(path: &Path) -> Result<ColdEntry, SnapshotError> {
        read(path, COLD_MAGIC)
    }

    /// Checks and decodes the bytes of a cold entry's file.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<ColdEntry, SnapshotError> {
        decode(bytes, COLD_MAGIC, name)
    }
}

/// What the regional stage (stage 2 of docs/two-stages.md) has learned: the
/// merger's open windows and sources' progress, the site and region alert
/// state, and the calibration of the site and region detectors. Its owner
/// commits the partials topic's offsets only once a snapshot covering them
/// is written, so a stage 2 restored from it re-reads at most what came
/// after it, which the merger takes once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionalSnapshot {
    pub model_version: String,
    pub merger: termwatch_features::partial::WindowMerger,
    pub alerts: AlertSnapshot,
    pub fleet: FleetCalibration,
    /// Where the partials topic stood, in words, for the operator.
    pub position: String,
}

/// [`RegionalSnapshot`] by reference, for saving without copying the
/// merger's open windows; the same fields in the same order.
#[derive(Serialize)]
pub struct RegionalSnapshotRef<'a> {
    pub model_version: &'a str,
    pub merger: &'a termwatch_features::partial::WindowMerger,
    pub alerts: &'a AlertSnapshot,
    pub fleet: &'a FleetCalibration,
    pub position: &'a str,
}

impl RegionalSnapshotRef<'_> {
    /// Writes atomically: a temporary file, synced, renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<u64, SnapshotError> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// The bytes of the snapshot file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let payload = postcard::to_stdvec(self).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        Ok(framed(SnapshotKind::Regional, &payload))
    }
}

impl RegionalSnapshot {
    pub fn save(&self, path: &Path) -> Result<u64, SnapshotError> {
        self.as_ref().save(path)
    }

    /// The bytes of the snapshot file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        self.as_ref().to_bytes()
    }

    fn as_ref(&self) -> RegionalSnapshotRef<'_> {
        RegionalSnapshotRef {
            model_version: &self.model_version,
            merger: &self.merger,
            alerts: &self.alerts,
            fleet: &self.fleet,
            position: &self.position,
        }
    }

    pub fn load(path: &Path) -> Result<RegionalSnapshot, SnapshotError> {
        read(path, REGIONAL_MAGIC)
    }

    /// Checks and decodes the bytes of a regional snapshot file.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<RegionalSnapshot, SnapshotError> {
        decode(bytes, REGIONAL_MAGIC, name)
    }
}

/// Reads a snapshot file of the kind `magic` names.
fn read<T: DeserializeOwned>(path: &Path, magic: &[u8; 6]) -> Result<T, SnapshotError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|cause| SnapshotError::Read { path: p.clone(), cause })?;
    decode(&bytes, magic, &p)
}

/// Checks a snapshot's magic, format and checksum, then decodes its payload.
fn decode<T: DeserializeOwned>(bytes: &[u8], magic: &[u8; 6], name: &str) -> Result<T, SnapshotError> {
    check(bytes, magic, name)?;
    postcard::from_bytes(&bytes[HEADER..])
        .map_err(|e| SnapshotError::Decode { path: name.to_string(), cause: e.to_string() })
}

/// Writes `bytes` atomically: a temporary file, synced, renamed over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<u64, SnapshotError> {
    write_replace(path, bytes, true)
}

/// Writes `bytes` to a temporary file renamed over `path`, synced to disk
/// with `sync`.
fn write_replace(path: &Path, bytes: &[u8], sync: bool) -> Result<u64, SnapshotError> {
    let p = path.display().to_string();
    // Named per process: replicas sharing a state directory write
    // `shared.snap` at the same time.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| sync && !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    if let Err(cause) = write() {
        // A full disk must not also fill up with half-written temporaries,
        // one per failed attempt.
        let _ = std::fs::remove_file(&tmp);
        return Err(SnapshotError::Write { path: p, cause });
    }
    Ok(bytes.len() as u64)
}

/// Checks a snapshot file's magic, format and checksum.
fn check(bytes: &[u8], magic: &[u8; 6], name: &str) -> Result<(), SnapshotError> {
    let p = name.to_string();
    if bytes.len() < HEADER || &bytes[..6] != magic {
        return Err(SnapshotError::NotASnapshot { path: p });
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[6..10]);
    let format = u32::from_le_bytes(word);
    if format != FORMAT {
        return Err(SnapshotError::Format { path: p, found: format });
    }
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[10..18]);
    if u64::from_le_bytes(sum) != fnv1a(FNV_OFFSET, &bytes[HEADER..]) {
        return Err(SnapshotError::Checksum { path: p });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use termwatch_features::FeatureConfig;

    use super::*;
    use termwatch_models::policy::AlertingConfig;

    fn snapshot() -> Snapshot {
        let alerts = crate::alerting::AlertTracker::new(&AlertingConfig::default()).expect("tracker").snapshot();
        Snapshot {
            model_version: "m-1".into(),
            engine: FeatureEngine::new(FeatureConfig::default()),
            alerts,
            fleet: FleetCalibration::default(),
            stage_one: None,
            position: "test".into(),
        }
    }

    #[test]
    fn a_stage_one_state_this_code_would_not_write_is_refused() {
        let row = |width: usize| HeldRow {
            terminal: "T-1".into(),
            site: "S-1".into(),
            region: "r1".into(),
            features: vec![0.5; width].into(),
            baselines: vec![0.0; width].into(),
        };
        let window = |end_ms| HeldWindow { end_ms, voltage: vec![row(6)], aging: vec![row(8)] };
        let good = StageOne {
            held: vec![window(300_000), window(600_000)],
            outbox: Vec::new(),
            thresholds: vec![(AlertKind::VoltageInstability, Scope::Terminal, 0.6, 1.0)],
            pending: Vec::new(),
            offsets: None,
        };
        assert_eq!(good.check(6, 8), Ok(()));
        let mut bad = good.clone();
        bad.held.reverse();
        assert!(bad.check(6, 8).expect_err("refused").contains("out of order"));
        let mut bad = good.clone();
        bad.held[1].aging.push(row(6));
        assert!(bad.check(6, 8).expect_err("refused").contains("not 8"));
        let mut bad = good.clone();
        bad.thresholds[0].2 = f64::NAN;
        assert!(bad.check(6, 8).expect_err("refused").contains("thresholds"));
        let bad = StageOne { held: (0..=MAX_HELD_WINDOWS as i64).map(window).collect(), ..good };
        assert!(bad.check(6, 8).expect_err("refused").contains("windows held"));
    }

    /// A regional snapshot of two sources, one window open with a site
    /// from the first, reads back the same. With `TERMWATCH_FUZZ_SEED_DIR`
    /// set (scripts/fuzz-seeds sets it) it is also written there as the
    /// snapshot fuzz target's seed `regional-two-sources`: selector 4 (a
    /// regional payload), then the payload.
    #[test]
    fn a_regional_snapshot_of_two_sources_reads_back_the_same() {
        use termwatch_features::partial::{SitePartial, WindowMerger, WindowPartials};
        let mut merger = WindowMerger::new(&["telemetry-0", "telemetry-1"], 3_600_000, 64);
        let mut site = SitePartial::default();
        site.add_terminal(&[1.0, 2.0, 0.5, 3.0, 0.0, 0.1], true);
        let end_ms = 1_795_514_400_000;
        let window = WindowPartials { end_ms, sites: vec![("S-1".into(), site)], ..Default::default() };
        assert!(merger.offer("telemetry-0", window).is_empty(), "telemetry-1 has not reported the window");
        assert!(merger.progress("telemetry-0", end_ms).is_empty());
        assert_eq!(merger.open_windows(), 1);
        let alerts = crate::alerting::AlertTracker::new(&AlertingConfig::default()).expect("tracker").snapshot();
        let snapshot = RegionalSnapshot {
            model_version: "m".into(),
            merger,
            alerts,
            fleet: FleetCalibration::default(),
            position: "seed".into(),
        };
        let bytes = snapshot.to_bytes().expect("written");
        let back = RegionalSnapshot::from_bytes(&bytes, "seed").expect("read back");
        assert_eq!(back, snapshot);
        assert_eq!(back.merger.check(), Ok(()));
        if let Some(dir) = std::env::var_os("TERMWATCH_FUZZ_SEED_DIR") {
            let seed: Vec<u8> = std::iter::once(4).chain(bytes[HEADER..].iter().copied()).collect();
            std::fs::write(std::path::Path::new(&dir).join("regional-two-sources"), seed).expect("seed written");
        }
    }

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.snap");
        let bytes = snapshot().save(&path).expect("save");
        assert!(bytes > HEADER as u64);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "the temporary file was renamed");
        let back = Snapshot::load(&path).expect("load");
        assert_eq!(back.model_version, "m-1");
        assert_eq!(back.position, "test");
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The rename fails: a non-empty directory sits where the snapshot goes.
        let path = dir.path().join("state.snap");
        std::fs::create_dir(&path).expect("dir");
        std::fs::write(path.join("keep"), b"x").expect("write");
        let err = snapshot().save(&path).expect_err("cannot rename over a directory");
        assert!(matches!(err, SnapshotError::Write { .. }), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("state.snap")], "only the directory that was there");
    }

    #[test]
    fn refuses_a_corrupt_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.snap");
        snapshot().save(&path).expect("save");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write");
        let err = Snapshot::load(&path).expect_err("corrupt");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn refuses_other_formats_and_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.snap");
        std::fs::write(&path, b"{\"not\":\"a snapshot\"}").expect("write");
        assert!(matches!(Snapshot::load(&path), Err(SnapshotError::NotASnapshot { .. })));
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&99u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 8]);
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(Snapshot::load(&path), Err(SnapshotError::Format { found: 99, .. })));
    }
}
