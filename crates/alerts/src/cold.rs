//! A cold store: the state of terminals forgotten after
//! `limits.idle_terminal_days` of silence, one file each in a directory of
//! the state directory, given back when they report again. A shop shut for
//! the season comes back with its baselines instead of as a new terminal
//! judged by its cohort for its first hours.
//!
//! An entry is not deleted when it is given back: if the process dies
//! before its next snapshot, that snapshot does not hold the terminal and
//! the entry is still its latest state; the next time the terminal goes
//! idle its entry is written over. At `max_entries` the oldest tenth (by
//! the time they were written) is deleted; a terminal whose entry could not
//! be written or read comes back as new, and is counted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use termwatch_features::{Departed, FeatureConfig};

use crate::snapshot::ColdEntry;
use termwatch_models::training::{FNV_OFFSET, fnv1a};

/// What a cold store did since it was opened (process counters for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColdStats {
    /// Terminals' states written.
    pub stored: u64,
    /// Terminals given back their state when they reported again.
    pub restored: u64,
    /// Entries deleted, oldest first, to stay within the bound.
    pub swept: u64,
    /// Entries that could not be written, or read back (corrupt, of another
    /// format or feature configuration): those terminals start as new.
    pub failed: u64,
}

#[derive(Debug)]
pub struct ColdStore {
    dir: PathBuf,
    features: FeatureConfig,
    max_entries: usize,
    /// Keys of the entries on disk (the key is the file's name).
    present: HashSet<u64>,
    stats: ColdStats,
}

const SUFFIX: &str = ".cold";

fn key(id: &str) -> u64 {
    fnv1a(FNV_OFFSET, id.as_bytes())
}

/// Not written for an hour.
fn stale(entry: &std::fs::DirEntry) -> bool {
    let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
    age.is_some_and(|a| a.as_secs() >= 3600)
}

impl ColdStore {
    /// Opens the store in `dir` (made when the first terminal goes to it)
    /// for states learnt under `features`, holding at most `max_entries`
    /// terminals.
    pub fn open(dir: &Path, features: FeatureConfig, max_entries: usize) -> std::io::Result<ColdStore> {
        let mut present = HashSet::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries.collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(k) = name.strip_suffix(SUFFIX).and_then(|hex| u64::from_str_radix(hex, 16).ok()) {
                present.insert(k);
            } else if name.ends_with(".tmp") && stale(&entry) {
                // Left by a write a process died in (a recent one may be
                // another replica's, sharing the state directory).
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ColdStore {
            dir: dir.to_path_buf(),
            features,
            max_entries: max_entries.max(1),
            present,
            stats: ColdStats::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.present.len()
    }

    /// Holds at most `max` terminals from the next one stored (a stage-1
    /// partition's share of `limits.max_terminals` changes as partitions
    /// come and go).
    pub fn set_max_entries(&mut self, max: usize) {
        self.max_entries = max.max(1);
    }

    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    pub fn stats(&self) -> ColdStats {
        self.stats
    }

    fn path(&self, key: u64) -> PathBuf {
        self.dir.join(format!("{key:016x}{SUFFIX}"))
    }

    /// Keeps the state of each terminal of `gone`, replacing what it had.
    pub fn put(&mut self, gone: Vec<Departed>) {
        if self.present.is_empty() && std::fs::create_dir_all(&self.dir).is_err() {
            self.stats.failed += gone.len() as u64;
            return;
        }
        for terminal in gone {
            let k = key(terminal.id());
            if !self.present.contains(&k) && self.present.len() >= self.max_entries {
                self.sweep();
            }
            let entry = ColdEntry { features: self.features.clone(), terminal };
            match entry.save(&self.path(k)) {
                Ok(_) => {
                    self.present.insert(k);
                    self.stats.stored += 1;
                }
                Err(_) => self.stats.failed += 1,
            }
        }
    }

    /// The states kept for those of `ids` the store knows.
    pub fn take(&mut self, ids: &[String]) -> Vec<Departed> {
        let mut found = Vec::new();
        for id in ids {
            let k = key(id);
            if !self.present.contains(&k) {
                continue;
            }
            let path = self.path(k);
            match ColdEntry::load(&path) {
                // Another id with the same key is another terminal's entry.
                Ok(entry) if entry.features == self.features => {
                    if entry.terminal.id() == id {
                        self.stats.restored += 1;
                        found.push(entry.terminal);
                    }
                }
                Ok(_) | Err(_) => {
                    self.stats.failed += 1;
                    self.present.remove(&k);
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found
    }

    /// Deletes the oldest entries (by the time each was last written) down
    /// to nine tenths of the bound, and forgets entries deleted by someone
    /// else.
    fn sweep(&mut self) {
        let mut dated: Vec<(std::time::SystemTime, u64)> = self
            .present
            .iter()
            .filter_map(|&k| {
                let modified = std::fs::metadata(self.path(k)).and_then(|m| m.modified()).ok()?;
                Some((modified, k))
            })
            .collect();
        self.present = dated.iter().map(|(_, k)| *k).collect();
        dated.sort_unstable();
        // Past a bound that was lowered, down to the new one in one go.
        let keep = self.max_entries - (self.max_entries / 10).max(1);
        let drop = self.present.len().saturating_sub(keep);
        for (_, k) in dated.into_iter().take(drop) {
            if std::fs::remove_file(self.path(k)).is_ok() {
                self.present.remove(&k);
                self.stats.swept += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::record_batch::RecordBatch;
    use termwatch_features::{FeatureEngine, Limits};
    use termwatch_telemetry::{BatchBuilder, decode};

    use super::*;

    const T0: i64 = 1_795_514_400_000;

    fn batch(lines: &[String]) -> RecordBatch {
        let mut b = BatchBuilder::with_capacity(lines.len());
        for l in lines {
            b.append(&decode(l.as_bytes(), i64::MAX / 2).expect("valid")).expect("append");
        }
        b.finish().expect("batch")
    }

    /// The states of `n` terminals that reported for an hour, then went
    /// quiet past the idle time while T-busy went on.
    fn departed(n: usize) -> Vec<Departed> {
        let mut e = FeatureEngine::new(FeatureConfig::default());
        e.set_limits(Limits { idle_terminal_ms: 3_600_000, ..Limits::default() });
        e.keep_departed(true);
        for k in 0..60 {
            let ts = T0 + k * 300_000;
            let mut lines = vec![format!(r#"{{"terminal_id":"T-busy","ts":{ts},"region":"r1","supply_v_mean":12.0}}"#)];
            if k < 12 {
                lines.extend(
                    (0..n).map(|i| {
                        format!(r#"{{"terminal_id":"T-{i}","ts":{ts},"region":"r1","supply_v_mean":12.{i}}}"#)
                    }),
                );
            }
            e.process_batch(&batch(&lines));
        }
        let gone = e.take_departed();
        assert_eq!(gone.len(), n);
        gone
    }

    fn ids(back: &[Departed]) -> Vec<&str> {
        back.iter().map(Departed::id).collect()
    }

    #[test]
    fn a_terminal_kept_cold_comes_back_whole_even_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = ColdStore::open(dir.path(), FeatureConfig::default(), 10).expect("open");
        let states = departed(3);
        store.put(states.clone());
        assert_eq!((store.len(), store.stats().stored), (3, 3));
        let mut store = ColdStore::open(dir.path(), FeatureConfig::default(), 10).expect("reopen");
        assert_eq!(store.len(), 3, "what is on disk is known after a restart");
        let back = store.take(&["T-1".into(), "T-unknown".into()]);
        assert_eq!(ids(&back), ["T-1"]);
        assert_eq!(back[0], states[1], "as it went");
        assert_eq!(store.stats().restored, 1);
    }

    #[test]
    fn the_store_keeps_its_bound_by_letting_the_oldest_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = ColdStore::open(dir.path(), FeatureConfig::default(), 10).expect("open");
        for d in departed(25) {
            let id = d.id().to_string();
            store.put(vec![d]);
            assert!(store.len() <= 10, "{} held after {id}", store.len());
        }
        assert_eq!(store.stats().stored, 25);
        assert!(store.stats().swept >= 15, "{:?}", store.stats());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), store.len());
        // The newest are there.
        assert_eq!(ids(&store.take(&["T-24".into()])), ["T-24"]);
    }

    #[test]
    fn a_lowered_bound_is_kept_from_the_next_terminal_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = ColdStore::open(dir.path(), FeatureConfig::default(), 20).expect("open");
        let mut states = departed(13);
        let last = states.split_off(12);
        let newest = last[0].id().to_string();
        store.put(states);
        assert_eq!(store.len(), 12);
        // A partition's share of the terminals halved: more partitions here.
        store.set_max_entries(6);
        store.put(last);
        assert!(store.len() <= 6, "{} held", store.len());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), store.len());
        assert_eq!(ids(&store.take(std::slice::from_ref(&newest))), [newest.as_str()], "the newest is kept");
    }

    #[test]
    fn an_entry_that_cannot_be_read_or_is_of_another_configuration_is_counted_and_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = ColdStore::open(dir.path(), FeatureConfig::default(), 10).expect("open");
        store.put(departed(2));
        let path = store.path(key("T-0"));
        let mut bytes = std::fs::read(&path).expect("entry");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).expect("corrupt it");
        assert!(store.take(&["T-0".into()]).is_empty());
        assert!(!path.exists(), "a corrupt entry is deleted");
        let other = FeatureConfig { window_ms: 60_000, ..FeatureConfig::default() };
        let mut store = ColdStore::open(dir.path(), other, 10).expect("reopen with another configuration");
        assert!(store.take(&["T-1".into()]).is_empty(), "state learnt in other windows is not used");
        assert_eq!((store.stats().failed, store.len()), (1, 0));
    }

    #[test]
    fn a_store_that_cannot_be_written_counts_and_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = ColdStore::open(&dir.path().join("cold"), FeatureConfig::default(), 10).expect("open");
        assert!(!dir.path().join("cold").exists(), "made only when needed");
        // A file where its directory should be.
        std::fs::write(dir.path().join("cold"), b"").expect("a file in the way");
        store.put(departed(2));
        assert_eq!((store.stats().failed, store.len()), (2, 0));
    }
}
