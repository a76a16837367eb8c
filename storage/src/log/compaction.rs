//! Log compaction (`cleanup.policy=compact`), as Kafka's log cleaner does it: the latest
//! record of each key survives, offsets and order are kept, tombstones go once they are older
//! than `delete.retention.ms` and have been through a cleaning already, and records of
//! aborted transactions go. A pass maps each key of the dirty part of the log (past the
//! clean point) to its latest offset, in a map bounded by the dedupe buffer (a huge partition
//! is cleaned in several passes), then rewrites each closed segment it affects without what
//! the map says is superseded.
//!
//! What is never cleaned: the active segment, anything at or above the high watermark, the
//! first open transaction or the last persisted recovery point (so every cleaned segment is
//! one a later open trusts without a dense-offset scan), and segments younger than
//! `min.compaction.lag.ms`. Kept as it is: the last batch of each producer still remembered
//! (idempotence state is rebuilt from it). A transaction marker goes once its transaction has
//! no records left, it is older than `delete.retention.ms` and was cleaned before, and the
//! producer snapshot (from which a restart learns how transactions ended) is past it.
//!
//! Crash safety: a segment's cleaned copy is written whole into `cleaning/` and fsynced; the
//! swap renames its log file over the original (atomic), then its indexes. An open finds
//! either the copy's log file still in `cleaning/` (the swap had not begun: the copy is
//! dropped) or only its indexes (the log was swapped: the indexes follow).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::PartitionLog;
use crate::checkpoint;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::format::{self, Filtered, RecordBatch, RecordView};
use crate::handle_cache::HandleSlot;
use crate::segment::{OpenSegment, Segment};
use crate::segment_files::SegmentPaths;
use crate::txn_index::AbortedTxn;

/// Where cleaned copies of segments are written before they are swapped in.
const CLEANING_DIR: &str = "cleaning";
/// Memory one entry of the key map takes, for the dedupe budget: a 128-bit key hash, an
/// offset, and the hash table's own overhead.
const MAP_ENTRY_BYTES: usize = 32;

/// What one cleaning pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Segments rewritten (or removed, when nothing in them survived).
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    /// Keys in the map, and the offset up to which the log is now clean.
    pub map_entries: usize,
    pub clean_point: i64,
}

/// Keys are hashed to 128 bits (collisions would make the cleaner drop a live record); the
/// map then needs no hashing of its own.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u128 keys are hashed")
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

type KeyMap = HashMap<u128, i64, BuildHasherDefault<PassThrough>>;

fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut hasher);
        key.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// A closed segment as a pass sees it. Its files are opened only while the pass reads it
/// (through the handle cache, so a log of many segments does not hold them all open).
struct Cleanable {
    segment: SegmentView,
}

#[derive(Clone)]
struct SegmentView {
    base_offset: i64,
    next_offset: i64,
    size: u64,
    rolling_timestamp_ms: Option<i64>,
    /// Identifies this very segment: a truncation that makes a new one at the same base
    /// offset gives it another slot.
    slot: Arc<HandleSlot<OpenSegment>>,
}

/// What a pass reads under the log's lock before doing its work without it.
struct PassInput {
    segments: Vec<Cleanable>,
    log_start_offset: i64,
    aborted: AbortedRanges,
    /// Last offsets of the last batch of every producer still remembered.
    producers_last_batches: HashSet<i64>,
    /// The offset of the latest producer snapshot: a marker below it may go, as a restart
    /// reads transactions' ends from the snapshot, never from those markers.
    snapshot_offset: i64,
}

impl PartitionLog {
    /// One cleaning pass, if the log is compacted and due: its dirty share at least
    /// `min.cleanable.dirty.ratio`, or its oldest dirty record older than
    /// `max.compaction.lag.ms`. The key map takes at most about `dedupe_buffer_bytes`.
    /// Returns what the pass did, or None if none was due.
    pub fn clean(&self, now_ms: i64, dedupe_buffer_bytes: usize) -> Result<Option<CleanStats>> {
        let config = self.inner.config.read().clone();
        if !config.compact || self.is_deleted() {
            return Ok(None);
        }
        let mut clean_point = self.inner.clean_point.lock();
        // Only what a checkpoint already calls durable is cleaned: bring it up to date.
        self.write_checkpoint(false)?;
        let input = self.pass_input(&config, now_ms);
        let start = (*clean_point).max(input.log_start_offset);
        if !due(&input.segments, start, &config, now_ms) {
            return Ok(None);
        }
        let capacity = (dedupe_buffer_bytes / MAP_ENTRY_BYTES).max(1);
        let (map, map_end) = self.build_map(&input, start, capacity, &config)?;
        let mut stats = CleanStats { map_entries: map.len(), clean_point: map_end, ..CleanStats::default() };
        let mut rules = Rules {
            map: &map,
            map_end,
            clean_point: start,
            now_ms,
            config: &config,
            input: &input,
            open_data: HashMap::new(),
        };
        for cleanable in input.segments.iter().filter(|c| c.segment.base_offset < map_end) {
            if let Some(cleaned) = self.rewrite(cleanable, &mut rules, &mut stats)? {
                self.swap(&cleanable.segment, cleaned)?;
                stats.segments_rewritten += 1;
            }
        }
        checkpoint::write_clean_point(&self.inner.dir, map_end)?;
        *clean_point = map_end;
        Ok(Some(stats))
    }

    /// The closed segments a pass may clean, from the log start up to the horizon (the
    /// persisted recovery point, the high watermark, the first open transaction), each old
    /// enough for `min.compaction.lag.ms`.
    fn pass_input(&self, config: &LogConfig, now_ms: i64) -> PassInput {
        let recovery_point = self.inner.checkpoint.lock().map_or(0, |(c, _)| c.recovery_point);
        let snapshot_offset = crate::producer_state::read_snapshot(&self.inner.dir).map_or(0, |(offset, _)| offset);
        let state = self.inner.state.read();
        let horizon =
            recovery_point.min(state.high_watermark).min(state.producers.first_unstable_offset().unwrap_or(i64::MAX));
        let lag_cutoff = now_ms.saturating_sub(config.min_compaction_lag_ms);
        let mut segments = Vec::new();
        for segment in state.segments.iter().take_while(|s| !s.active && s.next_offset <= horizon) {
            if segment.max_timestamp_ms > lag_cutoff {
                break;
            }
            let view = SegmentView {
                base_offset: segment.base_offset,
                next_offset: segment.next_offset,
                size: segment.size,
                rolling_timestamp_ms: segment.rolling_timestamp_ms,
                slot: segment.slot.clone(),
            };
            segments.push(Cleanable { segment: view });
        }
        let producers_last_batches =
            state.producers.iter().filter_map(|(_, entry)| entry.batches.back().map(|b| b.last_offset)).collect();
        PassInput {
            snapshot_offset,
            segments,
            log_start_offset: state.log_start_offset,
            aborted: AbortedRanges::new(&state.aborted),
            producers_last_batches,
        }
    }

    /// The open handle of a segment a pass saw, if it is still in the log as it was.
    fn handle_of(&self, view: &SegmentView, config: &LogConfig) -> Result<Option<Arc<OpenSegment>>> {
        let state = self.inner.state.read();
        match state.segments.iter().find(|s| Arc::ptr_eq(&s.slot, &view.slot) && s.size == view.size) {
            Some(segment) => segment.handle(&self.inner.cache, config).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the cleaned copy of one segment into `cleaning/`, or returns None when nothing
    /// in it would change.
    fn rewrite(&self, cleanable: &Cleanable, rules: &mut Rules, stats: &mut CleanStats) -> Result<Option<Segment>> {
        let view = &cleanable.segment;
        let Some(handle) = self.handle_of(view, rules.config)? else { return Ok(None) };
        stats.bytes_before += view.size;
        let paths = SegmentPaths::new(&self.inner.dir.join(CLEANING_DIR), view.base_offset);
        // Batches kept as they are, before the first change: slices of the mapping (no copy).
        // From the first change on, batches stream to the copy, one rebuilt batch at a time.
        let mut unchanged: Vec<Bytes> = Vec::new();
        let mut copy: Option<CleanedCopy> = None;
        for batch in RecordBatch::iter_batches(handle.slice(0, view.size as usize)) {
            let batch = batch?;
            let (filtered, removed) = rules.filter(&batch)?;
            stats.records_removed += removed;
            let rebuilt = match filtered {
                Filtered::All => {
                    match copy.as_mut() {
                        Some(copy) => copy.write(batch.as_bytes())?,
                        None => unchanged.push(batch.as_bytes().clone()),
                    }
                    continue;
                }
                Filtered::Nothing => None,
                Filtered::Some(bytes) => Some(bytes),
            };
            if copy.is_none() {
                let mut started = CleanedCopy::create(&paths)?;
                for bytes in unchanged.drain(..) {
                    started.write(&bytes)?;
                }
                copy = Some(started);
            }
            if let (Some(copy), Some(bytes)) = (copy.as_mut(), rebuilt) {
                copy.write(&bytes)?;
            }
        }
        let Some(copy) = copy else {
            stats.bytes_after += view.size;
            return Ok(None);
        };
        let written = copy.finish()?;
        let mut segment = Segment::empty(paths, view.base_offset, true);
        segment.size = written.last().map_or(0, |&(position, size)| position + size as u64);
        stats.bytes_after += segment.size;
        self.index_cleaned(&mut segment, &written, rules.config)?;
        segment.next_offset = view.next_offset;
        segment.rolling_timestamp_ms = view.rolling_timestamp_ms;
        Ok(Some(segment))
    }

    /// Builds the indexes of a cleaned copy from its batches, trimmed and flushed.
    fn index_cleaned(&self, segment: &mut Segment, written: &[(u64, usize)], config: &LogConfig) -> Result<()> {
        let handle = segment.handle_covering(&self.inner.cache, config, segment.size as usize)?;
        for &(position, size) in written {
            let batch = RecordBatch::new(handle.slice(position, size))?;
            segment.index_batch(
                &handle,
                config,
                position,
                batch.base_offset(),
                size,
                batch.max_timestamp_ms(),
                batch.base_offset(),
            );
        }
        segment.refine_offset_of_max_timestamp(&handle);
        drop(handle);
        segment.close(&self.inner.cache, config)?;
        self.inner.cache.close(&segment.slot);
        Ok(())
    }

    /// Puts a cleaned copy in place of the segment it was made from, if that segment is still
    /// there as it was (a truncation or retention may have changed the log meanwhile).
    fn swap(&self, original: &SegmentView, cleaned: Segment) -> Result<()> {
        let mut state = self.inner.state.write();
        let at = state.segments.iter().position(|s| Arc::ptr_eq(&s.slot, &original.slot));
        let Some(at) = at.filter(|&i| !state.segments[i].active && state.segments[i].size == original.size) else {
            drop(state);
            return discard(&cleaned.paths);
        };
        let target = SegmentPaths::new(&self.inner.dir, original.base_offset);
        self.inner.cache.close(&state.segments[at].slot);
        if cleaned.size == 0 {
            // Nothing survived: the segment goes; reads past it continue in the next one.
            let removed = state.segments.remove(at);
            removed.delete(&self.inner.cache)?;
            discard(&cleaned.paths)?;
            return checkpoint::sync_dir(&self.inner.dir);
        }
        rename(&cleaned.paths.log, &target.log)?;
        rename(&cleaned.paths.offset_index, &target.offset_index)?;
        rename(&cleaned.paths.time_index, &target.time_index)?;
        checkpoint::sync_dir(&self.inner.dir)?;
        let mut swapped = Segment::empty(target, original.base_offset, false);
        swapped.next_offset = original.next_offset;
        swapped.size = cleaned.size;
        swapped.max_timestamp_ms = cleaned.max_timestamp_ms;
        swapped.offset_of_max_timestamp = cleaned.offset_of_max_timestamp;
        swapped.rolling_timestamp_ms = cleaned.rolling_timestamp_ms;
        swapped.offset_index_entries = cleaned.offset_index_entries;
        swapped.time_index_entries = cleaned.time_index_entries;
        state.segments[at] = swapped;
        Ok(())
    }
}

/// Whether a pass is due over `segments`, the log being clean below `clean_point`.
fn due(segments: &[Cleanable], clean_point: i64, config: &LogConfig, now_ms: i64) -> bool {
    let total: u64 = segments.iter().map(|c| c.segment.size).sum();
    let dirty: Vec<&Cleanable> = segments.iter().filter(|c| c.segment.next_offset > clean_point).collect();
    let dirty_bytes: u64 = dirty.iter().map(|c| c.segment.size).sum();
    if dirty_bytes == 0 || total == 0 {
        return false;
    }
    let overdue = dirty.first().and_then(|c| c.segment.rolling_timestamp_ms).is_some_and(|first| {
        config.max_compaction_lag_ms < i64::MAX && now_ms.saturating_sub(first) > config.max_compaction_lag_ms
    });
    overdue || dirty_bytes as f64 / total as f64 >= config.min_cleanable_dirty_ratio
}

/// The aborted transactions of a pass, by producer: (first offset, abort marker offset),
/// sorted, so a batch's lookup costs its producer's few ranges, not the whole list.
struct AbortedRanges(HashMap<i64, Vec<(i64, i64)>>);

impl AbortedRanges {
    fn new(aborted: &[AbortedTxn]) -> AbortedRanges {
        let mut ranges: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for txn in aborted {
            ranges.entry(txn.producer_id).or_default().push((txn.first_offset, txn.last_offset));
        }
        for list in ranges.values_mut() {
            list.sort_unstable();
        }
        AbortedRanges(ranges)
    }

    /// Whether a batch is part of an aborted transaction. A producer's transactions do not
    /// overlap, so only the last range starting at or before the batch can hold it.
    fn holds(&self, batch: &RecordBatch) -> bool {
        if !batch.is_transactional() || batch.is_control() {
            return false;
        }
        let Some(ranges) = self.0.get(&batch.producer_id()) else { return false };
        let at = ranges.partition_point(|&(first, _)| first <= batch.base_offset());
        at.checked_sub(1).is_some_and(|i| batch.base_offset() < ranges[i].1)
    }
}

impl PartitionLog {
    /// Maps each key in the dirty part (from `start`) to its latest offset, until the map
    /// holds `capacity` keys; returns it with the offset it covers up to.
    fn build_map(&self, input: &PassInput, start: i64, capacity: usize, config: &LogConfig) -> Result<(KeyMap, i64)> {
        let mut map = KeyMap::default();
        let end = input.segments.last().map_or(start, |c| c.segment.next_offset);
        for cleanable in input.segments.iter().filter(|c| c.segment.next_offset > start) {
            // A segment gone meanwhile (retention) has nothing left to map.
            let Some(handle) = self.handle_of(&cleanable.segment, config)? else { continue };
            let records = handle.slice(0, cleanable.segment.size as usize);
            for batch in RecordBatch::iter_batches(records) {
                let batch = batch?;
                if batch.last_offset() < start || batch.is_control() || input.aborted.holds(&batch) {
                    continue;
                }
                format::filter_batch(&batch, config.max_decompressed_batch_bytes, |record| {
                    if let (Some(key), true) = (record.key, record.offset >= start) {
                        map.insert(key_hash(key), record.offset);
                    }
                    true
                })?;
                if map.len() >= capacity {
                    return Ok((map, batch.last_offset() + 1));
                }
            }
        }
        Ok((map, end))
    }
}

/// What a pass keeps of each batch. Batches are offered in log order, from the log start.
struct Rules<'a> {
    map: &'a KeyMap,
    /// The map covers offsets below this; later records all stay.
    map_end: i64,
    /// The log was clean below this before the pass: tombstones and markers there may go.
    clean_point: i64,
    now_ms: i64,
    config: &'a LogConfig,
    input: &'a PassInput,
    /// Producers whose current transaction (since their last marker) still has records.
    open_data: HashMap<i64, bool>,
}

impl Rules<'_> {
    /// The batch as the pass keeps it, and how many records it removes.
    fn filter(&mut self, batch: &RecordBatch) -> Result<(Filtered, u64)> {
        let count = batch.record_count().max(0) as u64;
        let expired = batch.max_timestamp_ms() < self.now_ms.saturating_sub(self.config.delete_retention_ms);
        if batch.is_control() {
            // A marker goes once nothing of its transaction is left, it is past
            // delete.retention.ms, it was cleaned before, and the producer snapshot is past it.
            let had_data = self.open_data.remove(&batch.producer_id()).unwrap_or(false);
            let removable = !had_data
                && expired
                && batch.last_offset() < self.clean_point
                && batch.last_offset() < self.input.snapshot_offset;
            return Ok(if removable { (Filtered::Nothing, count) } else { (Filtered::All, 0) });
        }
        let filtered = if self.input.producers_last_batches.contains(&batch.last_offset()) {
            (Filtered::All, 0)
        } else if self.input.aborted.holds(batch) {
            (Filtered::Nothing, count)
        } else {
            let mut removed = 0;
            let filtered =
                format::filter_batch(batch, self.config.max_decompressed_batch_bytes, |record: &RecordView| {
                    let keep = self.keeps(record, expired);
                    removed += u64::from(!keep);
                    keep
                })?;
            (filtered, removed)
        };
        if batch.is_transactional() && !matches!(filtered.0, Filtered::Nothing) {
            self.open_data.insert(batch.producer_id(), true);
        }
        Ok(filtered)
    }

    fn keeps(&self, record: &RecordView, tombstones_expire: bool) -> bool {
        if record.offset >= self.map_end {
            return true;
        }
        let Some(key) = record.key else { return true };
        let latest = self.map.get(&key_hash(key)).is_none_or(|&latest| record.offset >= latest);
        latest && !(record.is_tombstone && tombstones_expire && record.offset < self.clean_point)
    }
}

/// A segment's cleaned copy being written into `cleaning/`: where each batch went.
struct CleanedCopy {
    path: PathBuf,
    out: std::io::BufWriter<fs::File>,
    written: Vec<(u64, usize)>,
    position: u64,
}

impl CleanedCopy {
    fn create(paths: &SegmentPaths) -> Result<CleanedCopy> {
        let dir = paths.log.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(Error::io("create cleaning directory", dir))?;
        let file = fs::File::create(&paths.log).map_err(Error::io("create cleaned segment", &paths.log))?;
        let out = std::io::BufWriter::with_capacity(1 << 20, file);
        Ok(CleanedCopy { path: paths.log.clone(), out, written: Vec::new(), position: 0 })
    }

    fn write(&mut self, batch: &[u8]) -> Result<()> {
        self.out.write_all(batch).map_err(Error::io("write cleaned segment", &self.path))?;
        self.written.push((self.position, batch.len()));
        self.position += batch.len() as u64;
        Ok(())
    }

    /// Flushes and fsyncs the copy; returns (position, size) of each batch in it.
    fn finish(self) -> Result<Vec<(u64, usize)>> {
        let file = self.out.into_inner().map_err(|e| Error::io("write cleaned segment", &self.path)(e.into_error()))?;
        file.sync_data().map_err(Error::io("fsync cleaned segment", &self.path))?;
        Ok(self.written)
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(Error::io("swap in cleaned segment file", from))
}

/// Removes a cleaned copy that will not be used.
fn discard(paths: &SegmentPaths) -> Result<()> {
    for path in [&paths.log, &paths.offset_index, &paths.time_index] {
        match fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove cleaned copy", path)(err))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Finishes or undoes a swap a crash interrupted (see the module notes), before the log's
/// segments are loaded.
pub(crate) fn finish_interrupted(dir: &Path) -> Result<()> {
    let cleaning: PathBuf = dir.join(CLEANING_DIR);
    let Ok(entries) = fs::read_dir(&cleaning) else { return Ok(()) };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let swapped_logs: HashSet<i64> = files
        .iter()
        .filter_map(|p| crate::segment_files::parse_file_name(p.file_name()?.to_str()?))
        .filter(|(_, suffix)| *suffix == crate::segment_files::LOG_SUFFIX)
        .map(|(base, _)| base)
        .collect();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match crate::segment_files::parse_file_name(name) {
            // The log of this copy was already swapped in: its indexes follow it.
            Some((base, _)) if !swapped_logs.contains(&base) => rename(path, &dir.join(name))?,
            // The swap had not begun (or this is not a copy at all): drop it.
            _ => fs::remove_file(path).map_err(Error::io("remove cleaned copy", path))?,
        }
    }
    fs::remove_dir(&cleaning).map_err(Error::io("remove cleaning directory", &cleaning))?;
    checkpoint::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::RecordBatchBuilder;

    fn batch(producer_id: i64, base_offset: i64, transactional: bool) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(0).producer(producer_id, 0, 0).transactional(transactional);
        builder.push(0, Some(b"k"), Some(b"v"), &[]);
        let mut bytes = builder.build().unwrap();
        bytes[..8].copy_from_slice(&base_offset.to_be_bytes());
        RecordBatch::new(Bytes::from(bytes)).unwrap()
    }

    #[test]
    fn aborted_ranges_hold_exactly_the_aborted_transactions_batches() {
        let txn = |producer_id, first_offset, last_offset| AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
            last_stable_offset: first_offset,
        };
        // Producer 1 aborted [10, 20) and [40, 45); producer 2 aborted [15, 30).
        let ranges = AbortedRanges::new(&[txn(1, 40, 45), txn(2, 15, 30), txn(1, 10, 20)]);
        for (producer, offset, expected) in [
            (1, 9, false),
            (1, 10, true),
            (1, 19, true),
            (1, 20, false),
            (1, 30, false),
            (1, 44, true),
            (2, 20, true),
            (3, 12, false),
        ] {
            assert_eq!(ranges.holds(&batch(producer, offset, true)), expected, "producer {producer} at {offset}");
        }
        assert!(!ranges.holds(&batch(1, 12, false)), "only transactional batches");
    }
}
