//! The leader epoch cache (Kafka's `LeaderEpochFileCache`, KIP-101): for each leader epoch
//! that appended to the log, the offset its first batch got. A follower asks the leader where
//! its last epoch ends (OffsetForLeaderEpoch) and truncates to that, so no two replicas keep
//! different records at one offset. Kept in `leader-epoch-checkpoint`, in Kafka's text format
//! (a version line, a count line, then `epoch offset` lines), replaced atomically on change;
//! epochs change rarely (once per leader election), so writes are rare.
//!
//! Invariants: epochs and start offsets strictly increase; every start offset is in the log
//! (the cache is cut back with the log at both ends).

use std::fs;
use std::path::{Path, PathBuf};

use crate::checkpoint::sync_dir;
use crate::error::{Error, Result};
use crate::segment_files::TMP_SUFFIX;

pub(crate) const FILE_NAME: &str = "leader-epoch-checkpoint";
const VERSION: u32 = 0;

/// Kafka's answer for an epoch the cache cannot place.
pub const UNDEFINED: (i32, i64) = (-1, -1);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EpochCache {
    /// (epoch, start offset), both increasing.
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// The cache in `dir`; None if there is none (or it cannot be read, in which case the log
    /// rebuilds it from its batches).
    pub fn read(dir: &Path) -> Option<EpochCache> {
        let text = fs::read_to_string(dir.join(FILE_NAME)).ok()?;
        let mut lines = text.lines();
        if lines.next()?.trim().parse::<u32>().ok()? != VERSION {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut entries = Vec::with_capacity(count.min(1 << 16));
        for line in lines.take(count) {
            let (epoch, offset) = line.trim().split_once(' ')?;
            entries.push((epoch.parse().ok()?, offset.parse().ok()?));
        }
        let ordered = entries.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        (entries.len() == count && ordered).then_some(EpochCache { entries })
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut text = format!("{VERSION}\n{}\n", self.entries.len());
        for (epoch, offset) in &self.entries {
            text.push_str(&format!("{epoch} {offset}\n"));
        }
        let path: PathBuf = dir.join(FILE_NAME);
        let tmp = dir.join(format!("{FILE_NAME}.{TMP_SUFFIX}"));
        fs::write(&tmp, text).map_err(Error::io("write leader epoch checkpoint", &tmp))?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(Error::io("fsync leader epoch checkpoint", &tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io("rename leader epoch checkpoint", &path))?;
        sync_dir(dir)
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|&(epoch, _)| epoch)
    }

    /// Records that `epoch` starts at `offset`; true if that is news (a newer epoch). An older
    /// epoch than the latest is not recorded (a stale leader's batch is refused elsewhere).
    pub fn assign(&mut self, epoch: i32, offset: i64) -> bool {
        if epoch < 0 || self.latest_epoch().is_some_and(|latest| epoch <= latest) {
            return false;
        }
        debug_assert!(self.entries.last().is_none_or(|&(_, start)| start <= offset));
        // An epoch that appended nothing yet gives its place to the newer one.
        self.entries.retain(|&(_, start)| start < offset);
        self.entries.push((epoch, offset));
        true
    }

    /// The log was cut back to end at `end`: epochs that started at or after it are gone.
    pub fn truncate_from_end(&mut self, end: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, start)| start < end);
        self.entries.len() != before
    }

    /// The log now starts at `start`: epochs wholly before it go, and the one in force there
    /// starts there.
    pub fn truncate_from_start(&mut self, start: i64) -> bool {
        let Some(in_force) = self.entries.iter().rposition(|&(_, s)| s <= start) else { return false };
        if in_force == 0 && self.entries[0].1 == start {
            return false;
        }
        self.entries.drain(..in_force);
        self.entries[0].1 = start;
        true
    }

    /// Where `requested` ends in a log ending at `log_end`, as Kafka answers
    /// OffsetForLeaderEpoch: the latest epoch ends at the log end; an earlier one where the
    /// next epoch starts (with the largest known epoch at or below the one asked for); one
    /// newer than any known is undefined.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested < 0 {
            return UNDEFINED;
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end);
        }
        let Some(higher) = self.entries.iter().find(|&&(epoch, _)| epoch > requested) else { return UNDEFINED };
        match self.entries.iter().rev().find(|&&(epoch, _)| epoch <= requested) {
            Some(&(floor, _)) => (floor, higher.1),
            None => (requested, higher.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_end_where_the_next_begins_as_kafka_answers() {
        let mut cache = EpochCache::default();
        assert!(cache.assign(2, 0));
        assert!(!cache.assign(1, 5), "an older epoch is not recorded");
        assert!(!cache.assign(2, 7), "nor the same one again");
        assert!(cache.assign(4, 10));
        assert!(cache.assign(7, 25));
        assert_eq!(cache.end_offset_for(7, 40), (7, 40));
        assert_eq!(cache.end_offset_for(4, 40), (4, 25));
        assert_eq!(cache.end_offset_for(5, 40), (4, 25), "the largest epoch at or below");
        assert_eq!(cache.end_offset_for(1, 40), (1, 0), "before every epoch: where the first starts");
        assert_eq!(cache.end_offset_for(9, 40), UNDEFINED);
        assert_eq!(cache.end_offset_for(-1, 40), UNDEFINED);
        assert!(cache.truncate_from_end(12));
        assert_eq!(cache.latest_epoch(), Some(4));
        assert!(cache.truncate_from_start(11));
        assert_eq!(cache.entries, vec![(4, 11)]);
        let dir = tempfile::tempdir().unwrap();
        cache.write(dir.path()).unwrap();
        assert_eq!(EpochCache::read(dir.path()), Some(cache));
        fs::write(dir.path().join(FILE_NAME), "0\n2\n4 11\n").unwrap();
        assert_eq!(EpochCache::read(dir.path()), None, "a short file is not trusted");
    }
}
