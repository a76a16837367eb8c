//! One partition this broker holds: its log, the fetches waiting for it to grow, and the
//! one way anything is appended to it. An append becomes visible to consumers only once it
//! is durable: [`Partition::append`] puts the batch in the log, and [`PendingAppend::wait_durable`]
//! waits until it is as durable as the flush policy promises, then advances the high
//! watermark past it and wakes the fetches waiting on this partition. The proof of that,
//! a [`DurableAppend`], is what an acknowledgement may rest on. (With replication, "durable"
//! becomes "in every in-sync replica": this file is where that changes.)
//!
//! Invariant: the high watermark only moves forward, and never past the log end offset
//! (the log enforces the latter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use sluice_storage::{AppendOutcome, LeaderEpoch, MarkerKind, Offset, PartitionLog, ProducerId, RecordBatch};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::Result;

pub struct Partition {
    pub topic: Arc<str>,
    pub topic_id: Uuid,
    pub index: i32,
    pub log: PartitionLog,
    /// Long-polling fetches waiting for this partition's high watermark to move; each entry
    /// is one fetch request's wake-up, held weakly so a finished fetch leaves nothing behind.
    fetch_waiters: Mutex<Vec<Weak<Notify>>>,
    /// Whether this broker leads the partition (high 32 bits: 1 or 0) and at which leader
    /// epoch (low 32 bits), as the metadata last said; one word, so both are read together.
    leadership: AtomicU64,
    /// The replicas and what the leader knows of each follower.
    pub(crate) replication: Mutex<Replication>,
    /// Woken when the log grows (followers long-polling for new data) or the high
    /// watermark moves (acks=all produces waiting for the ISR).
    pub(crate) progress: Notify,
    /// The same for threads that block (coordinators' appends waiting for the ISR).
    pub(crate) high_watermark_moved: (Mutex<()>, parking_lot::Condvar),
}

/// The leader's view of its partition's replication (Kafka's `Partition` ISR state).
#[derive(Default)]
pub(crate) struct Replication {
    /// This broker's node id.
    pub(crate) node_id: i32,
    pub(crate) replicas: Vec<i32>,
    /// The in-sync replicas as the metadata last said (the leader among them).
    pub(crate) isr: Vec<i32>,
    /// Each follower's log end offset as of its last fetch, and when it was last caught up
    /// (fetched from the leader's log end).
    pub(crate) followers: std::collections::HashMap<i32, Follower>,
    /// What this broker has durably (per the flush policy) in its own log.
    pub(crate) local_end: i64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Follower {
    pub(crate) log_end_offset: i64,
    pub(crate) last_caught_up_ms: i64,
}

/// How long the broker's own writers wait for the ISR to have an append.
const REPLICATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An ISR change the leader asks the controller for (Kafka's AlterPartition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChange {
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
}

/// An append that is in the log but not yet acknowledged: consumers do not see it until
/// [`PendingAppend::wait_durable`] has made it durable (which may have happened at once).
#[must_use = "an append is acknowledged only once wait_durable has returned"]
pub struct PendingAppend {
    partition: Arc<Partition>,
    outcome: AppendOutcome,
}

/// Proof that an append is durable and below the high watermark.
#[derive(Clone, Copy, Debug)]
pub struct DurableAppend {
    pub base_offset: Offset,
}

impl PendingAppend {
    pub fn base_offset(&self) -> Offset {
        self.outcome.base_offset
    }

    /// The offset after the append's last record.
    pub fn end_offset(&self) -> Offset {
        Offset(self.outcome.last_offset.0 + 1)
    }

    /// The broker's timestamp for the batch under `LogAppendTime`; None under `CreateTime`.
    pub fn log_append_time_ms(&self) -> Option<i64> {
        self.outcome.log_append_time_ms
    }

    /// Whether `wait_durable` blocks (an fsync to wait for): if so, call it off the async
    /// threads. An append that needs no wait is visible already.
    pub fn must_wait(&self) -> bool {
        self.outcome.durable_handle().needs_fsync()
    }

    /// Whether [`Self::wait_committed`] blocks (an fsync, or in-sync followers to wait for).
    pub fn must_wait_committed(&self) -> bool {
        self.must_wait() || self.partition.has_insync_followers()
    }

    /// [`Self::wait_durable`], then (with followers in the ISR) until every in-sync replica
    /// has the append: what the broker's own writers acknowledge on. Blocking.
    pub fn wait_committed(self) -> sluice_storage::Result<DurableAppend> {
        let (partition, end) = (self.partition.clone(), self.end_offset());
        let durable = self.wait_durable()?;
        partition.wait_replicated_blocking(end)?;
        Ok(durable)
    }

    /// Blocks until the append is durable, then makes it visible: the high watermark moves
    /// past it and fetches waiting on the partition wake.
    pub fn wait_durable(self) -> sluice_storage::Result<DurableAppend> {
        let durable = self.outcome.durable_handle();
        if durable.needs_fsync() {
            durable.wait()?;
            self.partition.advance_high_watermark(durable.end_offset());
        }
        Ok(DurableAppend { base_offset: self.outcome.base_offset })
    }
}

impl Partition {
    /// A partition this broker leads at epoch 0 until the metadata says otherwise.
    pub(crate) fn new(topic: Arc<str>, topic_id: Uuid, index: i32, log: PartitionLog) -> Partition {
        // What a log holds when it is opened is on disk: durable, as far as this broker goes.
        let local_end = log.log_end_offset().0;
        let partition = Partition {
            topic,
            topic_id,
            index,
            log,
            fetch_waiters: Mutex::new(Vec::new()),
            leadership: AtomicU64::new(0),
            replication: Mutex::new(Replication { local_end, ..Replication::default() }),
            progress: Notify::new(),
            high_watermark_moved: (Mutex::new(()), parking_lot::Condvar::new()),
        };
        partition.set_leadership(true, 0);
        partition
    }

    /// Takes what the metadata says of this partition's leadership.
    pub(crate) fn set_leadership(&self, is_leader: bool, leader_epoch: i32) {
        let word = (u64::from(is_leader) << 32) | u64::from(leader_epoch as u32);
        self.leadership.store(word, Ordering::Release);
    }

    pub fn is_leader(&self) -> bool {
        self.leadership.load(Ordering::Acquire) >> 32 == 1
    }

    /// The partition's leader epoch as this broker knows it (stamped into what it appends).
    pub fn leader_epoch(&self) -> i32 {
        self.leadership.load(Ordering::Acquire) as u32 as i32
    }

    /// Appends a record batch as the leader. Under a flush policy that does not wait for
    /// an fsync the append is durable at once, and visible before this returns.
    pub fn append(self: &Arc<Self>, batch: &[u8], now_ms: i64) -> sluice_storage::Result<PendingAppend> {
        let outcome = self.log.append(batch, LeaderEpoch(self.leader_epoch()), now_ms)?;
        Ok(self.pending(outcome))
    }

    /// Appends a transaction marker (commit or abort) for a producer, as [`Self::append`].
    pub fn append_marker(
        self: &Arc<Self>,
        producer_id: i64,
        producer_epoch: i16,
        kind: MarkerKind,
        now_ms: i64,
    ) -> sluice_storage::Result<PendingAppend> {
        let epoch = LeaderEpoch(self.leader_epoch());
        let outcome = self.log.append_marker(ProducerId(producer_id), producer_epoch, kind, 0, epoch, now_ms)?;
        Ok(self.pending(outcome))
    }

    /// [`Self::append`], then [`PendingAppend::wait_durable`], then (with followers in the
    /// ISR) until every in-sync replica has it: what the broker's own writers (coordinators,
    /// markers, job sinks) acknowledge on. Blocking.
    pub fn append_durable(self: &Arc<Self>, batch: &[u8], now_ms: i64) -> sluice_storage::Result<DurableAppend> {
        self.append(batch, now_ms)?.wait_committed()
    }

    /// Blocks until the high watermark passes `end` (bounded by [`REPLICATION_TIMEOUT`]).
    pub(crate) fn wait_replicated_blocking(&self, end: Offset) -> sluice_storage::Result<()> {
        let deadline = std::time::Instant::now() + REPLICATION_TIMEOUT;
        let (lock, moved) = &self.high_watermark_moved;
        let mut guard = lock.lock();
        while self.log.high_watermark() < end {
            if !self.is_leader()
                || moved.wait_until(&mut guard, deadline).timed_out() && self.log.high_watermark() < end
            {
                return Err(sluice_storage::Error::AppendTruncated { offset: Offset(end.0 - 1) });
            }
        }
        Ok(())
    }

    fn pending(self: &Arc<Self>, outcome: AppendOutcome) -> PendingAppend {
        let durable = outcome.durable_handle();
        self.progress.notify_waiters();
        if !durable.needs_fsync() {
            self.advance_high_watermark(durable.end_offset());
        }
        PendingAppend { partition: self.clone(), outcome }
    }

    /// This broker has everything below `end` durably: the high watermark moves as far as
    /// the ISR allows (to `end` when the leader is the whole ISR).
    fn advance_high_watermark(&self, end: Offset) {
        {
            let mut replication = self.replication.lock();
            replication.local_end = replication.local_end.max(end.0);
        }
        self.update_high_watermark();
    }

    /// Sets the high watermark (never back) and wakes the fetches waiting on this partition
    /// (only those: a busy partition does not wake every idle poll) and acks=all produces.
    pub(crate) fn publish_high_watermark(&self, end: Offset) {
        let advanced = self.log.advance_high_watermark(end);
        debug_assert!(advanced <= self.log.log_end_offset(), "the high watermark passed the log end offset");
        self.progress.notify_waiters();
        {
            let (lock, moved) = &self.high_watermark_moved;
            let _held = lock.lock();
            moved.notify_all();
        }
        for waiter in std::mem::take(&mut *self.fetch_waiters.lock()) {
            if let Some(waiter) = waiter.upgrade() {
                waiter.notify_one();
            }
        }
    }

    /// Replays every batch of this log in order (what a coordinator does with its internal
    /// topic at start), then makes it all visible: everything in such a log was written by
    /// the broker. A batch that does not decode, or that `apply` cannot take, is reported and
    /// skipped (a framing error ends the partition) rather than keeping the broker down.
    pub fn replay(&self, mut apply: impl FnMut(&RecordBatch) -> Result<()>) -> Result<()> {
        let end = self.log.log_end_offset();
        let mut offset = self.log.log_start_offset();
        'read: while offset < end {
            let read = self.log.read(offset, 1 << 20, end)?;
            if read.records.is_empty() {
                break;
            }
            for batch in RecordBatch::iter_batches(read.records) {
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(err) => {
                        tracing::error!(topic = %self.topic, partition = self.index, %err, "unreadable batch; skipping the rest of this partition");
                        break 'read;
                    }
                };
                offset = Offset(batch.last_offset() + 1);
                if let Err(err) = apply(&batch) {
                    tracing::error!(topic = %self.topic, partition = self.index, offset = batch.base_offset(), %err, "skipping an unreadable batch");
                }
            }
        }
        self.advance_high_watermark(end);
        Ok(())
    }

    /// Asks for `waiter` to be notified when the high watermark next moves. Registering
    /// twice is harmless.
    pub fn register_fetch_waiter(&self, waiter: &Arc<Notify>) {
        let mut waiters = self.fetch_waiters.lock();
        waiters.retain(|w| w.strong_count() > 0);
        if !waiters.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(waiter))) {
            waiters.push(Arc::downgrade(waiter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::{FlushPolicy, HandleCache, LogConfig, RecordBatchBuilder};
    use std::path::Path;

    fn partition(dir: &Path, index: i32, config: LogConfig) -> Arc<Partition> {
        let log = PartitionLog::open(dir.join(format!("t-{index}")), config, HandleCache::new(8)).unwrap();
        Arc::new(Partition::new(Arc::from("t"), Uuid::nil(), index, log))
    }

    fn batch() -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(0, None, Some(b"v"), &[]);
        builder.build().unwrap()
    }

    #[tokio::test]
    async fn an_append_wakes_only_the_fetches_waiting_on_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let (busy, idle) =
            (partition(dir.path(), 0, LogConfig::default()), partition(dir.path(), 1, LogConfig::default()));
        let (on_busy, on_idle) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        busy.register_fetch_waiter(&on_busy);
        busy.register_fetch_waiter(&on_busy);
        idle.register_fetch_waiter(&on_idle);
        let durable = busy.append_durable(&batch(), 0).unwrap();
        assert_eq!((durable.base_offset, busy.log.high_watermark()), (Offset(0), Offset(1)));
        // The append came before the wait: its permit is kept, so the wake-up is not lost.
        tokio::time::timeout(std::time::Duration::from_secs(5), on_busy.notified()).await.expect("woken");
        let idle_woken = tokio::time::timeout(std::time::Duration::from_millis(50), on_idle.notified()).await;
        assert!(idle_woken.is_err(), "an append on one partition woke a fetch waiting on another");
        assert!(busy.fetch_waiters.lock().is_empty(), "an append hands each waiter one wake-up, then forgets it");
        drop(on_idle);
        idle.register_fetch_waiter(&Arc::new(Notify::new()));
        assert_eq!(idle.fetch_waiters.lock().len(), 1, "finished fetches leave nothing behind");
    }

    #[test]
    fn an_append_that_waits_for_an_fsync_is_invisible_until_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { flush_policy: FlushPolicy::EveryAppend, ..LogConfig::default() };
        let partition = partition(dir.path(), 0, config);
        let pending = partition.append(&batch(), 0).unwrap();
        assert!(pending.must_wait());
        assert_eq!(partition.log.high_watermark(), Offset(0), "visible before it was durable");
        let durable = pending.wait_durable().unwrap();
        assert_eq!(durable.base_offset, Offset(0));
        assert_eq!(partition.log.high_watermark(), Offset(1));
    }
}
