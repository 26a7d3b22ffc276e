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

use serde::{Deserialize, Serialize};
use termwatch_features::FeatureEngine;

use crate::alerting::AlertSnapshot;
use crate::training::{FNV_OFFSET, fnv1a};

const MAGIC: &[u8; 6] = b"TWSNAP";
/// 2: the wear evidence of hardware aging (feature state of another shape).
const FORMAT: u32 = 2;
const HEADER: usize = 6 + 4 + 8;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("cannot write snapshot {path}: {cause}")]
    Write { path: String, cause: std::io::Error },
    #[error("snapshot {path} is not a termwatch snapshot (bad magic or too short)")]
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
}

/// Everything scoring has learned, with what it covers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub model_version: String,
    pub engine: FeatureEngine,
    pub alerts: AlertSnapshot,
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
    pub position: &'a str,
}

impl Snapshot {
    pub fn save(&self, path: &Path) -> Result<u64, SnapshotError> {
        SnapshotRef {
            model_version: &self.model_version,
            engine: &self.engine,
            alerts: &self.alerts,
            position: &self.position,
        }
        .save(path)
    }
}

impl SnapshotRef<'_> {
    /// Writes atomically: a temporary file, synced, renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<u64, SnapshotError> {
        let p = path.display().to_string();
        let payload = postcard::to_stdvec(self).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&FORMAT.to_le_bytes())?;
            f.write_all(&fnv1a(FNV_OFFSET, &payload).to_le_bytes())?;
            f.write_all(&payload)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|cause| SnapshotError::Write { path: p, cause })?;
        Ok((HEADER + payload.len()) as u64)
    }
}

impl Snapshot {
    /// Reads and checks a snapshot.
    pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|cause| SnapshotError::Read { path: p.clone(), cause })?;
        if bytes.len() < HEADER || &bytes[..6] != MAGIC {
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
        let payload = &bytes[HEADER..];
        if u64::from_le_bytes(sum) != fnv1a(FNV_OFFSET, payload) {
            return Err(SnapshotError::Checksum { path: p });
        }
        postcard::from_bytes(payload).map_err(|e| SnapshotError::Decode { path: p, cause: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use termwatch_features::FeatureConfig;

    use super::*;
    use crate::alerting::AlertingConfig;

    fn snapshot() -> Snapshot {
        let alerts = AlertingConfig::default().build().expect("tracker").snapshot();
        Snapshot {
            model_version: "m-1".into(),
            engine: FeatureEngine::new(FeatureConfig::default()),
            alerts,
            position: "test".into(),
        }
    }

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.snap");
        let bytes = snapshot().save(&path).expect("save");
        assert!(bytes > HEADER as u64);
        assert!(!path.with_extension("tmp").exists(), "the temporary file was renamed");
        let back = Snapshot::load(&path).expect("load");
        assert_eq!(back.model_version, "m-1");
        assert_eq!(back.position, "test");
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
