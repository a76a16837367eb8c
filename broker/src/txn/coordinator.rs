//! The transaction coordinator: each transactional id's producer id, epoch and state
//! (`state::TxnMetadata`), persisted in `__transaction_state` (Kafka's record format) before
//! any change is acknowledged, and rebuilt from it at start, where a transaction caught
//! between its prepare record and its markers is finished.
//!
//! Markers are written to every partition of the transaction (and, for offsets sent to it,
//! to the group's `__consumer_offsets` partition, which makes the group coordinator apply
//! or drop them) before EndTxn is answered. A produce of a transactional batch is checked
//! against the coordinator (KIP-890): the partition must be in that producer's ongoing
//! transaction at that epoch. All methods block (records are fsynced): call them off the
//! async threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use sluice_storage::RecordBatchBuilder;

use super::markers::{MarkerOutcome, MarkerWriter};
use super::record::{self, TxnValue};
use super::state::{EndAction, TxnMetadata, TxnState};
use crate::clock::Clock;
use crate::config::TransactionConfig;
use crate::controller::{InternalTopics, ProducerIdBlocks};
use crate::internal_topics::{partition_for, OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use crate::replica_manager::ReplicaManager;
use crate::topic_partition::TopicPartition;

/// Producer epochs are i16; an id whose epoch would overflow gets a new producer id.
const MAX_EPOCH: i16 = i16::MAX - 1;

pub struct TransactionCoordinator {
    pub(super) config: TransactionConfig,
    /// Creates `__transaction_state` when it is first needed.
    pub(super) topics: InternalTopics,
    pub(super) producer_ids: ProducerIdBlocks,
    /// The `__transaction_state` partitions.
    pub(super) replicas: Arc<ReplicaManager>,
    pub(super) markers: MarkerWriter,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) txns: Mutex<HashMap<String, Arc<Mutex<TxnMetadata>>>>,
    /// Producer id -> transactional id, for checking transactional produces.
    pub(super) by_producer: Mutex<HashMap<i64, String>>,
    /// Partitions of `__transaction_state`; 0 until it exists.
    pub(super) state_partitions: AtomicI32,
    /// The `__transaction_state` partitions whose transactional ids are loaded here: those
    /// this broker leads, once replayed.
    pub(super) loaded: Mutex<std::collections::BTreeSet<i32>>,
    /// (producer id, epoch, topic, partition) whose ongoing transaction another broker's
    /// coordinator confirmed has the partition (KIP-890 verification).
    pub(super) verified: Mutex<std::collections::HashSet<(i64, i16, String, i32)>>,
}

impl TransactionCoordinator {
    pub(crate) fn new(
        config: TransactionConfig,
        topics: InternalTopics,
        producer_ids: ProducerIdBlocks,
        replicas: Arc<ReplicaManager>,
        markers: MarkerWriter,
        clock: Arc<dyn Clock>,
    ) -> TransactionCoordinator {
        TransactionCoordinator {
            config,
            topics,
            producer_ids,
            replicas,
            markers,
            clock,
            txns: Mutex::new(HashMap::new()),
            by_producer: Mutex::new(HashMap::new()),
            state_partitions: AtomicI32::new(0),
            loaded: Mutex::new(Default::default()),
            verified: Mutex::new(Default::default()),
        }
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Finishes transactions a crash left between their prepare record and their markers.
    pub fn complete_prepared(&self) {
        for txn in self.all() {
            let mut meta = txn.lock();
            if meta.is_preparing() {
                let commit = meta.state == TxnState::PrepareCommit;
                tracing::info!(transactional_id = %meta.transactional_id, commit, "completing a transaction after restart");
                if let Err(err) = self.write_markers_and_complete(&mut meta, commit) {
                    tracing::error!(transactional_id = %meta.transactional_id, ?err, "cannot complete the transaction");
                }
            }
        }
    }

    /// Creates `__transaction_state` the first time a transactional producer needs it.
    pub fn ensure_state_topic(&self) -> Result<(), ResponseError> {
        if self.state_partitions.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let partitions = self.topics.ensure(
            TRANSACTION_STATE_TOPIC,
            self.config.state_partitions,
            self.config.state_segment_bytes,
        )?;
        self.state_partitions.store(partitions, Ordering::Release);
        if let Err(err) = self.follow_leadership(false) {
            tracing::error!(%err, "loading transactions failed");
        }
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.state_partitions.load(Ordering::Acquire) > 0
    }

    pub fn all(&self) -> Vec<Arc<Mutex<TxnMetadata>>> {
        self.txns.lock().values().cloned().collect()
    }

    /// Writes transaction markers (for this broker's coordinator, or another's).
    pub(crate) fn markers(&self) -> &MarkerWriter {
        &self.markers
    }

    pub fn get(&self, transactional_id: &str) -> Option<Arc<Mutex<TxnMetadata>>> {
        self.txns.lock().get(transactional_id).cloned()
    }

    /// Writes the transactional id's state and waits until it is durable.
    fn persist(&self, meta: &TxnMetadata) -> Result<(), ResponseError> {
        let partitions = self.state_partitions.load(Ordering::Acquire);
        let partition = self
            .replicas
            .partition(TRANSACTION_STATE_TOPIC, partition_for(&meta.transactional_id, partitions))
            .filter(|p| p.is_leader())
            .ok_or(ResponseError::NotCoordinator)?;
        if !self.loaded.lock().contains(&partition_for(&meta.transactional_id, partitions)) {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        let value = value_of(meta);
        let now = self.now_ms();
        let mut builder = RecordBatchBuilder::new(now);
        builder.push(now, Some(&record::encode_key(&meta.transactional_id)), Some(&value.encode()), &[]);
        let batch = builder.build().map_err(|_| ResponseError::UnknownServerError)?;
        match partition.append_durable(&batch, now) {
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::error!(transactional_id = %meta.transactional_id, %err, "cannot write {TRANSACTION_STATE_TOPIC}");
                Err(ResponseError::CoordinatorNotAvailable)
            }
        }
    }

    /// InitProducerId with a transactional id: a new producer id (epoch 0) the first time;
    /// afterwards the same id with the next epoch, which fences the previous instance, and
    /// an open transaction of that instance is aborted first. A client asking to bump its own
    /// epoch (KIP-360, `expected` = its producer id and epoch) must be the current instance,
    /// or it is fenced itself.
    pub fn init_producer_id(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        // Kafka's records hold the id as a 16-bit-length string.
        if transactional_id.len() > i16::MAX as usize {
            return Err(ResponseError::InvalidRequest);
        }
        self.ensure_state_topic()?;
        let Some(txn) = self.get(transactional_id) else {
            return self.register(transactional_id, timeout_ms);
        };
        let mut meta = txn.lock();
        if let Some(expected) = expected {
            // A retry of a bump whose answer was lost: the same answer, once the work that
            // bump started is finished.
            if meta.last_producer == Some(expected) {
                if meta.is_preparing() {
                    let commit = meta.state == TxnState::PrepareCommit;
                    self.write_markers_and_complete(&mut meta, commit)?;
                }
                return Ok((meta.producer_id, meta.producer_epoch));
            }
            if expected != (meta.producer_id, meta.producer_epoch) {
                return Err(ResponseError::ProducerFenced);
            }
        }
        if meta.is_preparing() {
            let commit = meta.state == TxnState::PrepareCommit;
            self.write_markers_and_complete(&mut meta, commit)?;
        }
        let now = self.now_ms();
        // What memory returns to if a write fails: the last state that was persisted.
        let mut persisted = meta.clone();
        let previous = (meta.producer_id, meta.producer_epoch);
        if meta.fence(now) {
            if let Err(error) = self.persist(&meta) {
                *meta = persisted;
                return Err(error);
            }
            meta.last_producer = expected.map(|_| previous);
            // Markers that fail leave the abort prepared: the timer (or a retry) finishes it.
            self.write_markers_and_complete(&mut meta, false)?;
            persisted = meta.clone();
        }
        if meta.producer_epoch >= MAX_EPOCH {
            meta.producer_id = self.producer_ids.allocate().map_err(|_| ResponseError::CoordinatorNotAvailable)?;
            meta.producer_epoch = 0;
        }
        meta.timeout_ms = timeout_ms;
        meta.state = TxnState::Empty;
        meta.last_update_ms = now;
        if let Err(error) = self.persist(&meta) {
            *meta = persisted;
            return Err(error);
        }
        meta.last_producer = expected.map(|_| previous);
        if meta.producer_id != previous.0 {
            let mut by_producer = self.by_producer.lock();
            by_producer.remove(&previous.0);
            by_producer.insert(meta.producer_id, transactional_id.to_string());
        }
        Ok((meta.producer_id, meta.producer_epoch))
    }

    /// A producer id for an idempotent producer without a transactional id (InitProducerId
    /// with no id): nothing can fence it, so it simply gets one nobody has had.
    pub fn new_producer_id(&self) -> Result<i64, ResponseError> {
        self.producer_ids.allocate().map_err(|err| {
            tracing::error!(error = %err.message, "cannot allocate a producer id");
            ResponseError::CoordinatorNotAvailable
        })
    }

    /// A transactional id seen for the first time. It is in the map (locked) before its
    /// record is written, so a concurrent cleanup of the state topic waits for it and then
    /// rewrites it.
    fn register(&self, transactional_id: &str, timeout_ms: i32) -> Result<(i64, i16), ResponseError> {
        let producer_id = self.producer_ids.allocate().map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        let meta = TxnMetadata {
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch: 0,
            timeout_ms,
            state: TxnState::Empty,
            partitions: Default::default(),
            start_ms: -1,
            last_update_ms: self.now_ms(),
            last_producer: None,
            markers_done: Default::default(),
        };
        let txn = Arc::new(Mutex::new(meta));
        let guard = txn.lock();
        {
            let mut txns = self.txns.lock();
            if txns.contains_key(transactional_id) {
                // Another InitProducerId for the same new id got here first.
                return Err(ResponseError::ConcurrentTransactions);
            }
            txns.insert(transactional_id.to_string(), txn.clone());
        }
        if let Err(error) = self.persist(&guard) {
            self.txns.lock().remove(transactional_id);
            return Err(error);
        }
        self.by_producer.lock().insert(producer_id, transactional_id.to_string());
        Ok((producer_id, 0))
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn.
    pub fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), ResponseError> {
        let txn = self.get(transactional_id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        let mut meta = txn.lock();
        meta.check_producer(producer_id, producer_epoch)?;
        if partitions.iter().all(|p| meta.partitions.contains(p)) && meta.state == TxnState::Ongoing {
            return Ok(());
        }
        let before = meta.clone();
        meta.add_partitions(partitions, self.now_ms())?;
        if let Err(error) = self.persist(&meta) {
            *meta = before;
            return Err(error);
        }
        Ok(())
    }

    /// EndTxn: records the decision, writes the markers, records the completion.
    pub fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let txn = self.get(transactional_id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        let mut meta = txn.lock();
        meta.check_producer(producer_id, producer_epoch)?;
        let before = meta.clone();
        match meta.prepare_end(commit, self.now_ms())? {
            EndAction::AlreadyDone => Ok(()),
            EndAction::WriteMarkers => {
                if let Err(error) = self.persist(&meta) {
                    *meta = before;
                    return Err(error);
                }
                // Once the decision is recorded it stands: a failure writing markers leaves
                // the transaction prepared, and the coordinator's timer finishes it.
                self.write_markers_and_complete(&mut meta, commit)
            }
        }
    }

    /// Writes the commit or abort marker to every partition of the transaction, then the
    /// completed state. A partition that no longer exists is skipped (its topic was deleted).
    fn write_markers_and_complete(&self, meta: &mut TxnMetadata, commit: bool) -> Result<(), ResponseError> {
        let now = self.now_ms();
        let mut failed = 0;
        let pending: Vec<TopicPartition> =
            meta.partitions.iter().filter(|p| !meta.markers_done.contains(*p)).cloned().collect();
        for target in pending {
            match self.markers.write(&target, meta.producer_id, meta.producer_epoch, commit, now) {
                Ok(MarkerOutcome::Written) => {}
                Ok(MarkerOutcome::PartitionGone) => {
                    tracing::warn!(partition = %target, "no transaction marker for a partition that is gone");
                }
                Err(err) => {
                    // Only a transaction's first failure is logged; the timer keeps
                    // retrying every second.
                    if meta.markers_done.is_empty() && failed == 0 {
                        tracing::error!(partition = %target, %err, "cannot write a transaction marker; will retry");
                    }
                    failed += 1;
                    continue;
                }
            }
            meta.markers_done.insert(target);
        }
        if failed > 0 {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        meta.complete(self.now_ms());
        self.persist(meta)
    }

    /// KIP-890: a transactional batch is accepted only into a partition that is part of its
    /// producer's ongoing transaction, at the producer's current epoch.
    pub fn verify_produce(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError> {
        self.in_transaction(producer_id, producer_epoch, topic, partition, || ())
    }

    /// Runs `append` (a transactional batch's append) only if the partition is in the
    /// producer's ongoing transaction at its epoch, holding the transaction's lock across
    /// both: an EndTxn cannot write its marker in between, so a late batch can never open a
    /// transaction that no marker will close. Blocks while the transaction is being ended.
    pub fn in_transaction<R>(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        topic: &str,
        partition: i32,
        append: impl FnOnce() -> R,
    ) -> Result<R, ResponseError> {
        let id = self.by_producer.lock().get(&producer_id).cloned().ok_or(ResponseError::InvalidProducerIdMapping)?;
        let txn = self.get(&id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        // Usually free; when an EndTxn holds it across its marker fsyncs, wait without
        // stalling an async worker.
        let meta = txn.try_lock().unwrap_or_else(|| lock_blocking(&txn));
        if meta.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if producer_epoch != meta.producer_epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if meta.state != TxnState::Ongoing || !meta.partitions.contains(&TopicPartition::new(topic, partition)) {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(append())
    }

    /// TxnOffsetCommit: runs `commit` only if the group's offsets partition is in the
    /// transactional id's ongoing transaction, under the transaction's lock (as
    /// [`Self::in_transaction`]).
    pub fn in_offsets_transaction<R>(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        offsets_partition: i32,
        commit: impl FnOnce() -> R,
    ) -> Result<R, ResponseError> {
        let txn = self.get(transactional_id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        let meta = txn.lock();
        meta.check_producer(producer_id, producer_epoch)?;
        if meta.state != TxnState::Ongoing
            || !meta.partitions.contains(&TopicPartition::new(OFFSETS_TOPIC, offsets_partition))
        {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(commit())
    }

    /// Aborts (and fences) transactions open longer than their timeout, and retries the
    /// markers of transactions whose decision is recorded but whose markers failed.
    pub fn abort_timed_out(&self) {
        let now = self.now_ms();
        for txn in self.all() {
            let mut meta = txn.lock();
            if meta.is_preparing() {
                let commit = meta.state == TxnState::PrepareCommit;
                // Failures were logged when they first happened.
                let _ = self.write_markers_and_complete(&mut meta, commit);
                continue;
            }
            let expired = meta.state == TxnState::Ongoing && meta.start_ms + i64::from(meta.timeout_ms) <= now;
            if !expired {
                continue;
            }
            tracing::info!(transactional_id = %meta.transactional_id, "aborting a transaction past its timeout");
            let before = meta.clone();
            meta.fence(now);
            meta.last_producer = None;
            if let Err(err) = self.persist(&meta) {
                *meta = before;
                tracing::error!(transactional_id = %meta.transactional_id, ?err, "cannot record a timed-out transaction's abort");
                continue;
            }
            // Markers that fail are retried by the next tick (the abort is recorded).
            let _ = self.write_markers_and_complete(&mut meta, false);
        }
    }
}

/// Takes a transaction's lock from an async worker thread: the runtime is told this thread
/// may block (a multi-threaded runtime moves its other tasks elsewhere).
fn lock_blocking(txn: &Mutex<TxnMetadata>) -> parking_lot::MutexGuard<'_, TxnMetadata> {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| txn.lock()),
        _ => txn.lock(),
    }
}

fn value_of(meta: &TxnMetadata) -> TxnValue {
    TxnValue {
        producer_id: meta.producer_id,
        producer_epoch: meta.producer_epoch,
        timeout_ms: meta.timeout_ms,
        state: meta.state,
        partitions: meta.partitions.clone(),
        last_update_ms: meta.last_update_ms,
        start_ms: meta.start_ms,
    }
}

pub(super) fn metadata_from(transactional_id: String, value: TxnValue) -> TxnMetadata {
    TxnMetadata {
        transactional_id,
        producer_id: value.producer_id,
        producer_epoch: value.producer_epoch,
        timeout_ms: value.timeout_ms,
        state: value.state,
        partitions: value.partitions,
        start_ms: value.start_ms,
        last_update_ms: value.last_update_ms,
        last_producer: None,
        markers_done: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Broker;
    use crate::BrokerConfig;
    use std::collections::BTreeMap;

    fn open(dir: &std::path::Path) -> Arc<Broker> {
        let mut config = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
        config.apply("transaction.state.log.num.partitions", "1").unwrap();
        config.apply("transaction.state.log.segment.bytes", "65536").unwrap();
        Broker::open(config).unwrap()
    }

    #[test]
    fn an_epoch_bump_retry_gets_the_same_answer_and_zombies_are_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path());
        broker.controller.create_topic("t", 1, BTreeMap::new(), false).unwrap();
        let (pid, epoch) = broker.txns.init_producer_id("x", 60_000, None).unwrap();
        broker.txns.add_partitions("x", pid, epoch, vec![TopicPartition::new("t", 0)]).unwrap();
        // KIP-360: the producer asks to bump its own epoch; its open transaction is aborted.
        let bumped = broker.txns.init_producer_id("x", 60_000, Some((pid, epoch))).unwrap();
        assert_eq!(bumped, (pid, epoch + 1));
        assert_eq!(broker.txns.get("x").unwrap().lock().state, TxnState::Empty);
        // The answer was lost: the retry gets the same answer, no second bump.
        assert_eq!(broker.txns.init_producer_id("x", 60_000, Some((pid, epoch))).unwrap(), bumped);
        // A new instance (no expected epoch) fences; both old epochs are now zombies.
        let fresh = broker.txns.init_producer_id("x", 60_000, None).unwrap();
        assert_eq!(fresh, (pid, epoch + 2));
        for zombie in [(pid, epoch), (pid, epoch + 1)] {
            assert_eq!(broker.txns.init_producer_id("x", 60_000, Some(zombie)), Err(ResponseError::ProducerFenced));
        }
        assert_eq!(
            broker.txns.init_producer_id("x", 1_000_000_000, None),
            Err(ResponseError::InvalidTransactionTimeout)
        );
    }

    #[test]
    fn transactions_survive_reopening_and_compaction_keeps_the_latest_state() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path());
        broker.controller.create_topic("t", 2, BTreeMap::new(), false).unwrap();
        let mut ids = Vec::new();
        for id in ["a", "b", "c"] {
            ids.push(broker.txns.init_producer_id(id, 60_000, None).unwrap());
        }
        for round in 0..400 {
            for (i, id) in ["a", "b", "c"].iter().enumerate() {
                let (producer_id, epoch) = ids[i];
                broker.txns.add_partitions(id, producer_id, epoch, vec![TopicPartition::new("t", round % 2)]).unwrap();
                broker.txns.end_txn(id, producer_id, epoch, round % 3 != 0).unwrap();
            }
        }
        // "c" is left mid-transaction; "b" is fenced by a new instance.
        broker.txns.add_partitions("c", ids[2].0, ids[2].1, vec![TopicPartition::new("t", 0)]).unwrap();
        let b = broker.txns.init_producer_id("b", 60_000, None).unwrap();
        assert_eq!(b, (ids[1].0, ids[1].1 + 1));
        let state = broker.replicas.partition(TRANSACTION_STATE_TOPIC, 0).unwrap();
        let before = state.log.size_bytes();
        broker.maintain_logs();
        assert!(broker.clean_logs() > 0, "the state topic was due for cleaning");
        assert!(state.log.size_bytes() * 2 < before, "compaction freed space: {before} -> {}", state.log.size_bytes());
        broker.shutdown();
        drop((broker, state));

        let broker = open(dir.path());
        let describe = |id: &str| {
            let txn = broker.txns.get(id).unwrap();
            let meta = txn.lock();
            (meta.producer_id, meta.producer_epoch, meta.state, meta.partitions.len())
        };
        assert_eq!(describe("a"), (ids[0].0, 0, TxnState::CompleteAbort, 0), "round 399 aborted");
        assert_eq!(describe("b"), (ids[1].0, 1, TxnState::Empty, 0));
        assert_eq!(describe("c"), (ids[2].0, 0, TxnState::Ongoing, 1));
        assert_eq!(
            broker.txns.end_txn("b", ids[1].0, 0, true),
            Err(ResponseError::ProducerFenced),
            "the old instance stays fenced after a restart"
        );
    }
}
