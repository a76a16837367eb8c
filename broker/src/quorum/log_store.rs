//! The Raft log of the metadata quorum, kept as a partition log in `__cluster_metadata-0`:
//! entry index N is the record at offset N, one batch per entry, stamped with the entry's
//! term as its leader epoch (as KRaft does), so the storage engine's recovery, CRCs and
//! fsyncs serve it unchanged. The vote (and the last purged entry) live in `quorum-state`,
//! replaced atomically and fsynced before openraft is told they are saved.
//!
//! Invariant: offsets equal entry indexes, so the log end offset is the next index; a purge
//! never leaves the log starting above the entry after the last purged one.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use sluice_storage::{
    FlushPolicy, HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatch, RecordBatchBuilder,
};

use super::QuorumConfig;

const QUORUM_STATE: &str = "quorum-state";
/// The last entry known committed: a hint (not fsynced) that lets a restarted node apply
/// what it already has before any leader is elected. Losing it only delays that.
const QUORUM_COMMITTED: &str = "quorum-committed";

type Result<T> = std::result::Result<T, StorageError<u64>>;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct QuorumState {
    vote: Option<Vote<u64>>,
    last_purged: Option<LogId<u64>>,
}

/// The Raft log; clones share it (openraft reads through one while writing through another).
#[derive(Clone)]
pub struct LogStore {
    log: PartitionLog,
    dir: PathBuf,
    state: std::sync::Arc<parking_lot::Mutex<QuorumState>>,
}

fn io_error(context: &str, err: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{context}: {err}"))
}

impl LogStore {
    pub fn open(dir: &Path, cache: std::sync::Arc<HandleCache>) -> crate::error::Result<LogStore> {
        // Metadata changes are rare and must survive power loss before a vote counts them.
        let config = LogConfig { flush_policy: FlushPolicy::EveryAppend, retention_ms: None, ..LogConfig::default() };
        let log = PartitionLog::open(dir, config, cache)?;
        log.set_high_watermark(log.log_end_offset());
        let state = match std::fs::read(dir.join(QUORUM_STATE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| crate::error::Error::Metadata(format!("{QUORUM_STATE} is unreadable: {err}")))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => QuorumState::default(),
            Err(err) => return Err(err.into()),
        };
        Ok(LogStore { log, dir: dir.to_path_buf(), state: std::sync::Arc::new(parking_lot::Mutex::new(state)) })
    }

    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    fn save_state(&self, state: &QuorumState) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(state).map_err(|e| io_error("encoding the quorum state", e))?;
        crate::data_dir::write_durably(&self.dir.join(QUORUM_STATE), &bytes)
    }

    fn entries(&self, start: u64, end: u64) -> std::io::Result<Vec<Entry<QuorumConfig>>> {
        let mut entries = Vec::with_capacity(end.saturating_sub(start).min(4096) as usize);
        let mut next = start;
        while next < end {
            let read =
                self.log.read(Offset(next as i64), 1 << 20, Offset(end as i64)).map_err(|e| io_error("reading", e))?;
            if read.records.is_empty() {
                break;
            }
            for batch in RecordBatch::iter_batches(read.records) {
                let batch = batch.map_err(|e| io_error("reading", e))?;
                for record in batch.records().map_err(|e| io_error("reading", e))? {
                    let record = record.map_err(|e| io_error("reading", e))?;
                    if (record.offset as u64) < start || record.offset as u64 >= end {
                        continue;
                    }
                    let value = record.value.unwrap_or_default();
                    let entry: Entry<QuorumConfig> = serde_json::from_slice(&value)
                        .map_err(|e| io_error(&format!("metadata log entry {}", record.offset), e))?;
                    entries.push(entry);
                }
                next = batch.last_offset() as u64 + 1;
            }
        }
        Ok(entries)
    }

    fn last_log_id(&self) -> std::io::Result<Option<LogId<u64>>> {
        let (start, end) = (self.log.log_start_offset().0 as u64, self.log.log_end_offset().0 as u64);
        if end > start {
            return Ok(self.entries(end - 1, end)?.pop().map(|e| e.log_id));
        }
        Ok(self.state.lock().last_purged)
    }

    /// Appends entries (blocking: one fsync for all of them).
    fn append_blocking(&self, entries: Vec<Entry<QuorumConfig>>) -> std::io::Result<()> {
        let mut last = None;
        for entry in entries {
            let expected = self.log.log_end_offset().0 as u64;
            if entry.log_id.index != expected {
                return Err(io_error(
                    "appending",
                    format!("entry {} is not the next one ({expected})", entry.log_id.index),
                ));
            }
            let value = serde_json::to_vec(&entry).map_err(|e| io_error("encoding", e))?;
            let now = sluice_storage::now_ms();
            let mut builder = RecordBatchBuilder::new(now);
            builder.push(now, None, Some(&value), &[]);
            let batch = builder.build().map_err(|e| io_error("encoding", e))?;
            let epoch = LeaderEpoch(entry.log_id.leader_id.term as i32);
            last = Some(self.log.append(&batch, epoch, now).map_err(|e| io_error("appending", e))?);
        }
        if let Some(outcome) = last {
            outcome.wait_durable().map_err(|e| io_error("fsync", e))?;
        }
        self.log.set_high_watermark(self.log.log_end_offset());
        Ok(())
    }
}

fn range_of(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<QuorumConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<QuorumConfig>>> {
        let (start, end) = range_of(&range);
        let end = end.min(self.log.log_end_offset().0 as u64);
        let start = start.max(self.log.log_start_offset().0 as u64);
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.entries(start, end))
            .await
            .map_err(|e| io_error("reading", e))
            .and_then(|r| r)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<QuorumConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<QuorumConfig>> {
        let last_purged_log_id = self.state.lock().last_purged;
        let last_log_id = self.last_log_id().map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<()> {
        let mut state = self.state.lock().clone();
        state.vote = Some(*vote);
        let store = self.clone();
        let saved = state.clone();
        tokio::task::spawn_blocking(move || store.save_state(&saved))
            .await
            .map_err(|e| io_error("saving the vote", e))
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.state.lock().vote = state.vote;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>> {
        Ok(self.state.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<()> {
        let Some(committed) = committed else { return Ok(()) };
        let (path, tmp) = (self.dir.join(QUORUM_COMMITTED), self.dir.join(format!("{QUORUM_COMMITTED}.tmp")));
        let bytes = serde_json::to_vec(&committed).map_err(|e| StorageIOError::write_logs(&e))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>> {
        // An unreadable hint (torn by a crash) is no hint; so is one past this log's end.
        let hint = std::fs::read(self.dir.join(QUORUM_COMMITTED))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LogId<u64>>(&bytes).ok());
        let end = self.log.log_end_offset().0 as u64;
        Ok(hint.filter(|id| id.index < end))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<QuorumConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<QuorumConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let store = self.clone();
        let appended = tokio::task::spawn_blocking(move || store.append_blocking(entries))
            .await
            .map_err(|e| io_error("appending", e))
            .and_then(|r| r);
        match appended {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(err) => {
                let storage_error = StorageIOError::write_logs(&err).into();
                callback.log_io_completed(Err(err));
                Err(storage_error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        tracing::info!(index = log_id.index, "truncating the metadata log");
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.truncate_to(Offset(log_id.index as i64)))
            .await
            .map_err(|e| io_error("truncating", e))
            .and_then(|r| r.map_err(|e| io_error("truncating", e)))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        let mut state = self.state.lock().clone();
        state.last_purged = Some(log_id);
        let store = self.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // The purge point is saved first: once entries are gone, it is what names the
            // entry before the first one left.
            store.save_state(&state)?;
            *store.state.lock() = state;
            let next = Offset(log_id.index as i64 + 1);
            if next > store.log.log_end_offset() {
                // A snapshot installed past this log's end: nothing here is worth keeping.
                store.log.restart_at(next).map_err(|e| io_error("restarting", e))
            } else {
                store.log.delete_records_before(next).map(drop).map_err(|e| io_error("purging", e))
            }
        })
        .await
        .map_err(|e| io_error("purging", e))
        .and_then(|r| r)
        .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
