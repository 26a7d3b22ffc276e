//! The records of the two topics between the stages (docs/two-stages.md):
//! the partials topic, what a stage-1 replica publishes for one source
//! partition of the telemetry topic, read back by the merging stage; and
//! the lessons topic, what the merging stage hands back to every stage-1
//! replica once it has closed windows ([`Lessons`]).
//!
//! A record is keyed by its source (`telemetry-3`, as
//! `termwatch_pipeline::source_name` names a partition), so that one
//! source's records stay in order on one partition of the partials topic:
//! a window's partials before the progress that passes it, which is the
//! order [`WindowMerger`] relies on. The value is a format byte and the
//! record in postcard. A record this build cannot read is an error that
//! says why; [`apply`] counts nothing and changes nothing for it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use termwatch_telemetry::alerts::{AlertKind, Scope};

use crate::engine::{FeatureEngine, WindowRows};
use crate::partial::{CohortStates, MergedWindow, WindowMerger, WindowPartials, WindowScores};

/// The value's first byte. A format this build does not know is refused,
/// not guessed at: stage 2 is upgraded before stage 1.
pub const FORMAT: u8 = 4;

/// One record of the partials topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartialsRecord {
    /// One closed window's partials.
    Window(WindowPartials),
    /// The terminal detectors' scores of a window whose lessons came back.
    Scores(WindowScores),
    /// Every window ending at or before this (ms) has been published.
    Progress(i64),
    /// The source has published everything it has for now (a history read
    /// to its end): it holds no window open until it publishes again.
    End,
}

/// What the merging stage hands back to stage 1 after closing windows:
/// what each closed window taught, and that every window ending at or
/// before `through_ms` is closed (those not listed too). Every stage-1
/// replica reads every record (the topic has one partition and no consumer
/// group), and learns it before it closes its next window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lessons {
    pub through_ms: i64,
    /// Oldest first.
    pub windows: Vec<WindowLessons>,
}

/// What one merged window tells stage 1, which scores its terminals only
/// once it knows: one process decides them with the window's sites, and
/// with thresholds that follow the whole fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowLessons {
    pub end_ms: i64,
    /// The cohorts' states after every source's lessons, learnt once by
    /// the merging stage.
    pub cohorts: CohortStates,
    /// Sites whose voltage score reached its threshold in the window, or
    /// whose alert is firing, by `site_id` in name order: their terminals'
    /// supply trouble is the site's mains, paged once at site scope.
    pub bad_sites: Vec<Box<str>>,
    /// The thresholds the terminal detectors' rows of the window are
    /// judged at, `(kind, scope, threshold, critical)`: the fleet
    /// calibration's, every terminal's scores of the windows before it in.
    pub thresholds: Vec<(AlertKind, Scope, f64, f64)>,
}

impl Lessons {
    /// Reads a record of the lessons topic: refused, as a record that
    /// cannot be read is, when a window's cohort states are not what the
    /// merging stage could have sent.
    pub fn decode(value: &[u8]) -> Result<Lessons, WireError> {
        let lessons: Lessons = decode(value)?;
        for w in &lessons.windows {
            w.cohorts.check().map_err(|why| WireError::Malformed(format!("window ending {}: {why}", w.end_ms)))?;
        }
        Ok(lessons)
    }
}

/// Why a record of a topic between the stages was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("(key) missing: a partials record is keyed by its source partition")]
    NoKey,
    #[error("(key) not UTF-8: {0} bytes")]
    KeyNotUtf8(usize),
    #[error("(value) empty")]
    Empty,
    #[error("(value) format {0}, this build reads format {FORMAT}")]
    Format(u8),
    #[error("(value) malformed: {0}")]
    Malformed(String),
    #[error("(value) {0} bytes after the record")]
    Trailing(usize),
}

impl WireError {
    /// A short name for a metric's label.
    pub fn problem(&self) -> &'static str {
        match self {
            WireError::NoKey | WireError::KeyNotUtf8(_) => "key",
            WireError::Empty | WireError::Malformed(_) | WireError::Trailing(_) => "malformed",
            WireError::Format(_) => "format",
        }
    }
}

/// A record's value: [`FORMAT`], then the record in postcard.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(record, vec![FORMAT])
}

/// Reads a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(value: &[u8]) -> Result<T, WireError> {
    let (&format, body) = value.split_first().ok_or(WireError::Empty)?;
    if format != FORMAT {
        return Err(WireError::Format(format));
    }
    let (record, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(record)
}

/// The source a record is keyed by.
pub fn source(key: Option<&[u8]>) -> Result<&str, WireError> {
    let key = key.ok_or(WireError::NoKey)?;
    std::str::from_utf8(key).map_err(|_| WireError::KeyNotUtf8(key.len()))
}

/// Hands one record of the partials topic to the merger: the windows it
/// closes. A record that cannot be read changes nothing. One from a source
/// the merger does not know is counted by the merger (`unknown_source`).
pub fn apply(merger: &mut WindowMerger, key: Option<&[u8]>, value: &[u8]) -> Result<Vec<MergedWindow>, WireError> {
    let source = source(key)?;
    Ok(match decode::<PartialsRecord>(value)? {
        PartialsRecord::Window(w) => merger.offer(source, w),
        PartialsRecord::Scores(s) => {
            merger.offer_scores(source, s);
            Vec::new()
        }
        PartialsRecord::Progress(through) => merger.progress(source, through),
        PartialsRecord::End => merger.end_of_source(source),
    })
}

/// Has a stage-1 engine that shares its cohorts learn one record of the
/// lessons topic: the windows that lets it close. A record that cannot be
/// read changes nothing.
pub fn learn(engine: &mut FeatureEngine, value: &[u8]) -> Result<Vec<WindowRows>, WireError> {
    let lessons = Lessons::decode(value)?;
    Ok(engine.learn_cohorts(lessons.through_ms, lessons.windows.iter().map(|w| (w.end_ms, &w.cohorts))))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::engine::CohortState;
    use crate::partial::SitePartial;

    /// A key, a value, and why it is refused.
    type Case<'a> = (Option<&'a [u8]>, &'a [u8], WireError);

    fn window(end_ms: i64) -> PartialsRecord {
        let mut site = SitePartial::default();
        site.add_terminal(&[1.0, -0.0, 2.5, f64::NAN, 0.0, 3.0], true);
        PartialsRecord::Window(WindowPartials {
            end_ms,
            sites: vec![("S-1".into(), site)],
            ..WindowPartials::default()
        })
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let scores = PartialsRecord::Scores(WindowScores {
            end_ms: 300_000,
            detectors: vec![crate::partial::DetectorScores {
                kind: AlertKind::VoltageInstability,
                scope: Scope::Terminal,
                bins: vec![(12, 3), (639, 1)],
                peaks: vec![(300, 2)],
            }],
        });
        for r in [window(300_000), scores, PartialsRecord::Progress(600_000), PartialsRecord::End] {
            let bytes = encode(&r).expect("encode");
            assert_eq!(bytes[0], FORMAT);
            // NaN is not equal to itself: compare the encodings.
            assert_eq!(encode(&decode::<PartialsRecord>(&bytes).expect("decode")).expect("encode"), bytes);
        }
    }

    #[test]
    fn a_record_that_cannot_be_read_says_why_and_changes_nothing() {
        let mut merger = WindowMerger::new(&["telemetry-0", "telemetry-1"], 0, 4);
        let before = merger.clone();
        let good = encode(&window(300_000)).expect("encode");
        let mut other_format = good.clone();
        other_format[0] = FORMAT + 1;
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: [Case<'_>; 6] = [
            (None, &good, WireError::NoKey),
            (Some(&[0xff, 0xfe]), &good, WireError::KeyNotUtf8(2)),
            (Some(b"telemetry-0"), &[], WireError::Empty),
            (Some(b"telemetry-0"), &other_format, WireError::Format(FORMAT + 1)),
            (Some(b"telemetry-0"), &trailing, WireError::Trailing(1)),
            (Some(b"telemetry-0"), &good[..good.len() - 3], WireError::Malformed(String::new())),
        ];
        for (key, value, want) in cases {
            let got = apply(&mut merger, key, value).expect_err("refused");
            match (&got, &want) {
                (WireError::Malformed(why), WireError::Malformed(_)) => assert!(!why.is_empty()),
                _ => assert_eq!(got, want),
            }
            assert!(
                !got.to_string().is_empty()
                    && (got.to_string().starts_with("(key)") || got.to_string().starts_with("(value)"))
            );
        }
        assert_eq!(merger, before, "nothing read, nothing changed");
        // And a good one is taken.
        assert!(apply(&mut merger, Some(b"telemetry-0"), &good).expect("taken").is_empty());
        assert_eq!(merger.open_windows(), 1);
        // A source the merger was not built for is counted, not merged.
        assert!(apply(&mut merger, Some(b"telemetry-9"), &good).expect("read").is_empty());
        assert_eq!(merger.counts().unknown_source, 1);
        assert_eq!(merger.open_windows(), 1);
    }

    #[test]
    fn lessons_that_cannot_be_read_teach_nothing() {
        let mut engine = FeatureEngine::new(crate::FeatureConfig::default());
        engine.share_cohorts(true);
        let lessons = Lessons {
            through_ms: 600_000,
            windows: vec![WindowLessons {
                end_ms: 300_000,
                bad_sites: vec!["S-1".into()],
                thresholds: vec![(AlertKind::HardwareAging, Scope::Terminal, 0.5, 0.9)],
                ..WindowLessons::default()
            }],
        };
        let bytes = encode(&lessons).expect("encode");
        assert_eq!(decode::<Lessons>(&bytes), Ok(lessons));
        for bad in [&bytes[..bytes.len() - 1], &[], &[2, 0]] {
            assert!(learn(&mut engine, bad).is_err());
            assert_eq!(engine.closed_through(), None, "nothing learnt");
        }
        // Read, it is learnt: the engine now knows windows through 600 s are given.
        assert!(learn(&mut engine, &bytes).expect("read").is_empty());
    }

    #[test]
    fn a_cohort_state_no_learning_leaves_is_refused_with_its_record() {
        let mut engine = FeatureEngine::new(crate::FeatureConfig::default());
        engine.share_cohorts(true);
        let states =
            |state| CohortStates::of(vec![("V3|2.4.7".into(), CohortState::default()), ("V3|2.4.8".into(), state)]);
        let lessons = |state| Lessons {
            through_ms: 600_000,
            windows: vec![WindowLessons { end_ms: 300_000, cohorts: states(state), ..WindowLessons::default() }],
        };
        let bad = encode(&lessons(CohortState::unsound())).expect("encode");
        match learn(&mut engine, &bad) {
            Err(WireError::Malformed(why)) => {
                assert!(why.contains("window ending 300000") && why.contains("V3|2.4.8"), "{why}")
            }
            other => panic!("refused as malformed, not {other:?}"),
        }
        assert_eq!(engine.closed_through(), None, "nothing learnt");
        assert_eq!(WireError::Malformed(String::new()).problem(), "malformed", "counted as a record not read");
        let good = encode(&lessons(CohortState::default())).expect("encode");
        assert!(learn(&mut engine, &good).expect("read").is_empty());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_record_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut merger = WindowMerger::new(&["telemetry-0"], 0, 4);
            let mut value = bytes.clone();
            if let Some(first) = value.first_mut() {
                *first = FORMAT;
            }
            let _ = apply(&mut merger, Some(b"telemetry-0"), &bytes);
            let _ = apply(&mut merger, Some(b"telemetry-0"), &value);
            prop_assert!(merger.check().is_ok());
        }
    }
}
