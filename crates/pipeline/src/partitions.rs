//! Which Kafka partition each terminal's records arrive on, and how far each
//! partition has been consumed: what a sink needs to keep its per-terminal
//! state per partition (snapshot it with the offset it covers, restore it
//! when the partition is assigned, drop it when the partition goes).
//!
//! The key of a telemetry record is its `terminal_id`, so a terminal's
//! records arrive on one partition; the owner is the partition its latest
//! record came from.

use std::collections::HashMap;
use std::fmt;

/// A topic's partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub topic: String,
    pub partition: i32,
}

impl fmt::Display for PartitionKey {
    /// `topic-partition`, as Kafka's tools name it (and the snapshot file).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// The partition of every terminal seen or restored.
#[derive(Debug, Default)]
pub struct Owners {
    keys: Vec<PartitionKey>,
    by_terminal: HashMap<Box<str>, u32>,
}

impl Owners {
    fn index(&mut self, topic: &str, partition: i32) -> u32 {
        match self.keys.iter().position(|k| k.partition == partition && k.topic == topic) {
            Some(i) => i as u32,
            None => {
                self.keys.push(PartitionKey { topic: topic.to_string(), partition });
                (self.keys.len() - 1) as u32
            }
        }
    }

    /// Records that `terminal`'s records arrive on this partition.
    pub fn claim(&mut self, terminal: &str, topic: &str, partition: i32) {
        let i = self.index(topic, partition);
        match self.by_terminal.get_mut(terminal) {
            Some(owner) => *owner = i,
            None => {
                self.by_terminal.insert(terminal.into(), i);
            }
        }
    }

    /// The partition `terminal`'s records arrive on, if known.
    pub fn owner(&self, terminal: &str) -> Option<&PartitionKey> {
        self.by_terminal.get(terminal).and_then(|&i| self.keys.get(i as usize))
    }

    /// Forgets one terminal (the duplicate check forgot it too).
    pub fn forget(&mut self, terminal: &str) {
        self.by_terminal.remove(terminal);
    }

    /// Terminals whose partition is known.
    pub fn len(&self) -> usize {
        self.by_terminal.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_terminal.is_empty()
    }

    /// Forgets the terminals of a partition; returns them.
    pub fn release(&mut self, key: &PartitionKey) -> Vec<Box<str>> {
        let Some(i) = self.keys.iter().position(|k| k == key) else { return Vec::new() };
        let mut gone = Vec::new();
        self.by_terminal.retain(|t, owner| {
            if *owner as usize == i {
                gone.push(t.clone());
                false
            } else {
                true
            }
        });
        gone
    }
}

/// What a sink is told at a checkpoint: the next offset to consume of every
/// partition owned (everything before it has reached every sink), and which
/// terminal belongs to which partition.
pub struct Checkpoint<'a> {
    pub positions: &'a HashMap<PartitionKey, i64>,
    pub owners: &'a Owners,
    /// Shutdown or rebalance: snapshot now, whatever the schedule says.
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_belongs_to_the_partition_of_its_latest_record_until_released() {
        let mut o = Owners::default();
        o.claim("T-1", "t", 0);
        o.claim("T-2", "t", 1);
        o.claim("T-1", "t", 1);
        assert_eq!(o.owner("T-1").map(ToString::to_string).as_deref(), Some("t-1"));
        let mut gone = o.release(&PartitionKey { topic: "t".into(), partition: 1 });
        gone.sort();
        assert_eq!(gone, vec![Box::from("T-1"), Box::from("T-2")]);
        assert!(o.owner("T-1").is_none());
    }
}
