//! Idempotent and transactional producers' state in one partition, as Kafka keeps it: per
//! producer id its epoch, the sequence ranges (with offsets) of its last five batches, and its
//! open transaction. A retried batch is answered with its original offsets; a sequence gap or
//! an old epoch is refused before anything is written; the earliest open transaction bounds
//! the last stable offset. Snapshots (`producer.snapshot`) cover the log up to an offset
//! known to be durable; the rest is rebuilt from the log's batches at open.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{BatchInfo, RecordBatch};

/// How many recent batches per producer are kept for duplicate detection: Kafka's number,
/// matching the most requests a client keeps in flight with idempotence
/// (`max.in.flight.requests.per.connection` <= 5).
pub(crate) const RETAINED_BATCHES: usize = 5;

/// Kafka's "no sequence" value.
const NO_SEQUENCE: i32 = -1;

/// A producer id, as InitProducerId hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerId(pub i64);

/// Where one of a producer's recent batches went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first.
    pub batches: VecDeque<BatchMetadata>,
    /// Wall-clock time of its last append: idle producers expire from it.
    pub last_append_ms: i64,
    /// The first offset of its open transaction in this partition.
    pub current_txn_first_offset: Option<i64>,
}

impl ProducerEntry {
    fn last_sequence(&self) -> i32 {
        self.batches.back().map_or(NO_SEQUENCE, |b| b.last_sequence)
    }
}

/// The producer fields of a batch header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProducerBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub last_offset_delta: i32,
    pub is_control: bool,
    pub is_transactional: bool,
}

impl From<&BatchInfo> for ProducerBatch {
    fn from(info: &BatchInfo) -> ProducerBatch {
        ProducerBatch {
            producer_id: info.producer_id,
            producer_epoch: info.producer_epoch,
            base_sequence: info.base_sequence,
            last_offset_delta: info.last_offset_delta,
            is_control: info.is_control,
            is_transactional: info.is_transactional,
        }
    }
}

impl From<&RecordBatch> for ProducerBatch {
    fn from(batch: &RecordBatch) -> ProducerBatch {
        ProducerBatch {
            producer_id: batch.producer_id(),
            producer_epoch: batch.producer_epoch(),
            base_sequence: batch.base_sequence(),
            last_offset_delta: (batch.last_offset() - batch.base_offset()) as i32,
            is_control: batch.is_control(),
            is_transactional: batch.is_transactional(),
        }
    }
}

/// What an idempotent batch's sequence check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// Not an idempotent batch (no producer id): nothing to check.
    NotIdempotent,
    /// Append it.
    Append,
    /// A retry of a batch already in the log, at these offsets: do not append again.
    Duplicate(BatchMetadata),
}

fn in_sequence(last: i32, next: i32) -> bool {
    next == last.wrapping_add(1) || (next == 0 && last == i32::MAX)
}

/// The last sequence of a batch: sequences wrap at i32::MAX, as Kafka's do.
fn last_sequence_of(info: &ProducerBatch) -> i32 {
    let last = i64::from(info.base_sequence) + i64::from(info.last_offset_delta);
    if last > i64::from(i32::MAX) {
        (last - i64::from(i32::MAX) - 1) as i32
    } else {
        last as i32
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerState {
    producers: HashMap<ProducerId, ProducerEntry>,
    /// Open transactions by first offset: the first key bounds the last stable offset.
    ongoing: std::collections::BTreeMap<i64, ProducerId>,
}

/// A transaction marker (control batch) written by the transaction coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerKind {
    Abort,
    Commit,
}

impl MarkerKind {
    /// The control record key's type field.
    pub fn from_type(kind: i16) -> Option<MarkerKind> {
        match kind {
            0 => Some(MarkerKind::Abort),
            1 => Some(MarkerKind::Commit),
            _ => None,
        }
    }

    pub fn to_type(self) -> i16 {
        match self {
            MarkerKind::Abort => 0,
            MarkerKind::Commit => 1,
        }
    }
}

impl ProducerState {
    pub fn get(&self, producer_id: ProducerId) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ProducerId, &ProducerEntry)> {
        self.producers.iter()
    }

    /// Kafka's checks for a batch about to be appended: the epoch must not go backwards, a
    /// retry of one of the last five batches is a duplicate, and otherwise the sequence
    /// must follow on (or start at 0 with a new epoch).
    pub(crate) fn check(&self, info: &ProducerBatch) -> Result<SequenceCheck> {
        if info.producer_id < 0 || info.is_control {
            return Ok(SequenceCheck::NotIdempotent);
        }
        let producer_id = ProducerId(info.producer_id);
        let Some(entry) = self.producers.get(&producer_id) else {
            // An unknown producer (new, or expired) may start anywhere, as in Kafka since
            // KIP-360: its state can have been removed while it was idle.
            return Ok(SequenceCheck::Append);
        };
        if info.producer_epoch < entry.epoch {
            return Err(Error::InvalidProducerEpoch {
                producer_id: info.producer_id,
                epoch: info.producer_epoch,
                current: entry.epoch,
            });
        }
        // Batches the coordinator writes itself (transactional offset commits) carry no
        // sequence: only their epoch is checked, as Kafka does for coordinator appends.
        if info.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        let last_sequence = last_sequence_of(info);
        if info.producer_epoch == entry.epoch {
            if let Some(duplicate) = entry
                .batches
                .iter()
                .find(|b| b.first_sequence == info.base_sequence && b.last_sequence == last_sequence)
            {
                return Ok(SequenceCheck::Duplicate(*duplicate));
            }
            let last = entry.last_sequence();
            if last != NO_SEQUENCE && !in_sequence(last, info.base_sequence) {
                return Err(Error::OutOfOrderSequence {
                    producer_id: info.producer_id,
                    expected: last.wrapping_add(1),
                    got: info.base_sequence,
                });
            }
        } else if info.base_sequence != 0 {
            return Err(Error::OutOfOrderSequence {
                producer_id: info.producer_id,
                expected: 0,
                got: info.base_sequence,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// The offset where the earliest open transaction starts, if any is open.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.keys().next().copied()
    }

    /// Checks a transaction marker from the coordinator: it may not come from an epoch
    /// older than the producer's.
    pub(crate) fn check_marker(&self, producer_id: ProducerId, epoch: i16) -> Result<()> {
        match self.producers.get(&producer_id) {
            Some(entry) if epoch < entry.epoch => {
                Err(Error::InvalidProducerEpoch { producer_id: producer_id.0, epoch, current: entry.epoch })
            }
            _ => Ok(()),
        }
    }

    /// Ends the producer's open transaction with a marker at `marker_offset`. An abort that
    /// closes a transaction with records here returns it, for the aborted-transaction index.
    pub(crate) fn complete_txn(
        &mut self,
        producer_id: ProducerId,
        epoch: i16,
        kind: MarkerKind,
        marker_offset: i64,
        now_ms: i64,
    ) -> Option<(i64, i64)> {
        let entry = self.producers.entry(producer_id).or_insert_with(|| ProducerEntry {
            epoch,
            batches: VecDeque::new(),
            last_append_ms: now_ms,
            current_txn_first_offset: None,
        });
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        let first = entry.current_txn_first_offset.take()?;
        self.ongoing.remove(&first);
        (kind == MarkerKind::Abort).then_some((first, marker_offset))
    }

    /// Records an appended batch (or one replayed from the log at recovery).
    pub(crate) fn update(&mut self, info: &ProducerBatch, first_offset: i64, now_ms: i64) {
        if info.producer_id < 0 || info.is_control {
            return;
        }
        let entry = self.producers.entry(ProducerId(info.producer_id)).or_insert_with(|| ProducerEntry {
            epoch: info.producer_epoch,
            batches: VecDeque::with_capacity(RETAINED_BATCHES),
            last_append_ms: now_ms,
            current_txn_first_offset: None,
        });
        if info.is_transactional && entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(first_offset);
            self.ongoing.insert(first_offset, ProducerId(info.producer_id));
        }
        if info.producer_epoch != entry.epoch {
            entry.epoch = info.producer_epoch;
            entry.batches.clear();
        }
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        if info.base_sequence < 0 {
            return;
        }
        if entry.batches.len() == RETAINED_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMetadata {
            first_sequence: info.base_sequence,
            last_sequence: last_sequence_of(info),
            first_offset,
            last_offset: first_offset + i64::from(info.last_offset_delta),
        });
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
    }

    /// Forgets producers idle since before `cutoff_ms` (`producer.id.expiration.ms`), except
    /// those with an open transaction (only its marker may end it).
    pub(crate) fn expire(&mut self, cutoff_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, entry| entry.last_append_ms >= cutoff_ms || entry.current_txn_first_offset.is_some());
        before - self.producers.len()
    }
}

/// The snapshot file in a partition's directory.
pub(crate) const SNAPSHOT_FILE: &str = "producer.snapshot";
const SNAPSHOT_MAGIC: &[u8; 8] = b"SLPRODS2";
/// Bounds what a damaged file can make the reader allocate.
const MAX_SNAPSHOT_PRODUCERS: usize = 10_000_000;

/// Writes the state as of `offset` (every batch below it, none at or above): temporary
/// file, fsync, rename, directory fsync, so a crash leaves the old snapshot or the new one.
pub(crate) fn write_snapshot(dir: &Path, offset: i64, state: &ProducerState) -> Result<()> {
    let mut body = Vec::with_capacity(16 + state.producers.len() * 64);
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&(state.producers.len() as u64).to_be_bytes());
    for (producer_id, entry) in &state.producers {
        body.extend_from_slice(&producer_id.0.to_be_bytes());
        body.extend_from_slice(&entry.epoch.to_be_bytes());
        body.extend_from_slice(&entry.last_append_ms.to_be_bytes());
        body.extend_from_slice(&entry.current_txn_first_offset.unwrap_or(-1).to_be_bytes());
        body.push(entry.batches.len() as u8);
        for batch in &entry.batches {
            body.extend_from_slice(&batch.first_sequence.to_be_bytes());
            body.extend_from_slice(&batch.last_sequence.to_be_bytes());
            body.extend_from_slice(&batch.first_offset.to_be_bytes());
            body.extend_from_slice(&batch.last_offset.to_be_bytes());
        }
    }
    let path = dir.join(SNAPSHOT_FILE);
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(Error::io("create producer snapshot", &tmp))?;
    let crc = crc32fast::hash(&body);
    file.write_all(SNAPSHOT_MAGIC)
        .and_then(|_| file.write_all(&crc.to_be_bytes()))
        .and_then(|_| file.write_all(&body))
        .and_then(|_| file.sync_all())
        .map_err(Error::io("write producer snapshot", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("rename producer snapshot", &path))?;
    crate::checkpoint::sync_dir(dir)
}

/// The snapshot and the offset it covers, or `None` if there is none or it is damaged
/// (then the state is rebuilt from the whole log, which is always correct).
pub(crate) fn read_snapshot(dir: &Path) -> Option<(i64, ProducerState)> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = std::fs::read(&path).ok()?;
    let parsed = parse_snapshot(&bytes);
    if parsed.is_none() {
        tracing::warn!(path = %path.display(), "ignoring a damaged producer snapshot; rebuilding from the log");
    }
    parsed
}

fn parse_snapshot(bytes: &[u8]) -> Option<(i64, ProducerState)> {
    let rest = bytes.strip_prefix(SNAPSHOT_MAGIC)?;
    let (crc, body) = rest.split_first_chunk::<4>()?;
    if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
        return None;
    }
    let mut cursor = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = cursor.split_at_checked(n)?;
        cursor = tail;
        Some(head)
    };
    let offset = i64::from_be_bytes(take(8)?.try_into().ok()?);
    let count = u64::from_be_bytes(take(8)?.try_into().ok()?) as usize;
    if count > MAX_SNAPSHOT_PRODUCERS {
        return None;
    }
    let mut state = ProducerState::default();
    for _ in 0..count {
        let producer_id = i64::from_be_bytes(take(8)?.try_into().ok()?);
        let epoch = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let last_append_ms = i64::from_be_bytes(take(8)?.try_into().ok()?);
        let txn_first = i64::from_be_bytes(take(8)?.try_into().ok()?);
        let current_txn_first_offset = (txn_first >= 0).then_some(txn_first);
        let batches = usize::from(*take(1)?.first()?);
        if batches > RETAINED_BATCHES {
            return None;
        }
        if let Some(first) = current_txn_first_offset {
            state.ongoing.insert(first, ProducerId(producer_id));
        }
        let mut entry = ProducerEntry {
            epoch,
            batches: VecDeque::with_capacity(batches),
            last_append_ms,
            current_txn_first_offset,
        };
        for _ in 0..batches {
            entry.batches.push_back(BatchMetadata {
                first_sequence: i32::from_be_bytes(take(4)?.try_into().ok()?),
                last_sequence: i32::from_be_bytes(take(4)?.try_into().ok()?),
                first_offset: i64::from_be_bytes(take(8)?.try_into().ok()?),
                last_offset: i64::from_be_bytes(take(8)?.try_into().ok()?),
            });
        }
        state.producers.insert(ProducerId(producer_id), entry);
    }
    Some((offset, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(producer_id: i64, epoch: i16, base_sequence: i32, records: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            last_offset_delta: records - 1,
            is_control: false,
            is_transactional: false,
        }
    }

    #[test]
    fn retries_are_duplicates_gaps_and_old_epochs_are_refused() {
        let mut state = ProducerState::default();
        let first = info(7, 0, 0, 3);
        assert_eq!(state.check(&first).unwrap(), SequenceCheck::Append);
        state.update(&first, 100, 1);
        assert!(
            matches!(state.check(&first).unwrap(), SequenceCheck::Duplicate(b) if b.first_offset == 100 && b.last_offset == 102)
        );
        assert!(matches!(state.check(&info(7, 0, 4, 1)), Err(Error::OutOfOrderSequence { expected: 3, got: 4, .. })));
        let next = info(7, 0, 3, 2);
        assert_eq!(state.check(&next).unwrap(), SequenceCheck::Append);
        state.update(&next, 103, 2);
        // A bumped epoch restarts at 0; the old epoch is fenced from then on.
        assert!(matches!(state.check(&info(7, 1, 5, 1)), Err(Error::OutOfOrderSequence { expected: 0, .. })));
        state.update(&info(7, 1, 0, 1), 105, 3);
        assert!(matches!(state.check(&info(7, 0, 5, 1)), Err(Error::InvalidProducerEpoch { current: 1, .. })));
        // Only the last five batches are remembered.
        for i in 1..=6 {
            state.update(&info(7, 1, i, 1), 105 + i64::from(i), 4);
        }
        assert!(matches!(state.check(&info(7, 1, 1, 1)), Err(Error::OutOfOrderSequence { expected: 7, .. })));
        assert!(matches!(state.check(&info(7, 1, 6, 1)).unwrap(), SequenceCheck::Duplicate(_)));
        assert_eq!(state.check(&info(-1, -1, -1, 1)).unwrap(), SequenceCheck::NotIdempotent);
    }

    #[test]
    fn sequences_wrap_at_the_maximum() {
        let mut state = ProducerState::default();
        state.update(&info(1, 0, i32::MAX - 1, 2), 0, 0);
        assert_eq!(state.check(&info(1, 0, 0, 1)).unwrap(), SequenceCheck::Append);
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ProducerState::default();
        for p in 0..50 {
            for s in 0..(p % 7) {
                state.update(&info(p, (p % 3) as i16, s as i32 * 2, 2), p * 100 + s * 2, p);
            }
        }
        write_snapshot(dir.path(), 1234, &state).unwrap();
        assert_eq!(read_snapshot(dir.path()), Some((1234, state)));
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_snapshot(dir.path()), None);
        assert_eq!(parse_snapshot(&bytes[..20]), None);
    }

    #[test]
    fn open_transactions_bound_the_stable_offset_until_their_marker() {
        let mut state = ProducerState::default();
        let txn = |pid, seq| ProducerBatch { is_transactional: true, ..info(pid, 0, seq, 2) };
        state.update(&txn(1, 0), 10, 0);
        state.update(&txn(2, 0), 12, 0);
        state.update(&txn(1, 2), 14, 0);
        assert_eq!(state.first_unstable_offset(), Some(10));
        assert_eq!(state.complete_txn(ProducerId(1), 0, MarkerKind::Commit, 16, 0), None);
        assert_eq!(state.first_unstable_offset(), Some(12));
        assert!(state.expire(i64::MAX) == 1, "the producer with an open transaction stays");
        assert!(matches!(state.check_marker(ProducerId(2), -1), Err(Error::InvalidProducerEpoch { .. })));
        assert_eq!(state.complete_txn(ProducerId(2), 1, MarkerKind::Abort, 17, 0), Some((12, 17)));
        assert_eq!(state.first_unstable_offset(), None);
        assert_eq!(state.get(ProducerId(2)).unwrap().epoch, 1);
        // A marker for a producer with nothing open here changes nothing but the epoch.
        assert_eq!(state.complete_txn(ProducerId(3), 4, MarkerKind::Abort, 18, 0), None);
        let dir = tempfile::tempdir().unwrap();
        state.update(&txn(4, 0), 20, 0);
        write_snapshot(dir.path(), 22, &state).unwrap();
        let (_, restored) = read_snapshot(dir.path()).unwrap();
        assert_eq!(restored.first_unstable_offset(), Some(20));
        assert_eq!(restored, state);
    }

    #[test]
    fn idle_producers_expire() {
        let mut state = ProducerState::default();
        state.update(&info(1, 0, 0, 1), 0, 1_000);
        state.update(&info(2, 0, 0, 1), 1, 5_000);
        assert_eq!(state.expire(2_000), 1);
        assert!(state.get(ProducerId(1)).is_none() && state.get(ProducerId(2)).is_some());
    }
}
