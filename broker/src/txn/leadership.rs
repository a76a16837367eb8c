//! The transaction coordinator on a cluster: which transactional ids this broker
//! coordinates (those whose `__transaction_state` partition it leads, loaded when it comes to
//! lead one, completing what a failed coordinator left prepared) and the KIP-890 check of a
//! transactional produce whose coordinator is another broker.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::add_partitions_to_txn_response::AddPartitionsToTxnResponse;
use kafka_protocol::messages::{ApiKey, TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;

use super::coordinator::{metadata_from, TransactionCoordinator};
use super::record::{self, TxnValue};
use super::state::TxnMetadata;
use crate::internal_topics::{partition_for, TRANSACTION_STATE_TOPIC};

impl TransactionCoordinator {
    /// Rebuilds the transactional ids of every `__transaction_state` partition this broker
    /// leads (last record wins).
    pub(crate) fn load(&self, partitions: i32) -> crate::Result<()> {
        self.state_partitions.store(partitions, Ordering::Release);
        self.follow_leadership(false)
    }

    /// Loads the transactional ids of the state partitions this broker has come to lead
    /// (a coordinator failover: with `complete`, transactions caught between prepare and
    /// markers are completed now) and drops those of partitions it no longer leads. Blocking.
    pub(crate) fn follow_leadership(&self, complete: bool) -> crate::Result<()> {
        let Some(topic) = self.replicas.image().topic(TRANSACTION_STATE_TOPIC).cloned() else { return Ok(()) };
        self.state_partitions.store(topic.partitions, Ordering::Release);
        let led: Vec<i32> = (0..topic.partitions)
            .filter(|&i| self.replicas.partition(TRANSACTION_STATE_TOPIC, i).is_some_and(|p| p.is_leader()))
            .collect();
        let loaded = self.loaded.lock().clone();
        let lost: Vec<i32> = loaded.iter().copied().filter(|i| !led.contains(i)).collect();
        if !lost.is_empty() {
            let gone = |id: &str| lost.contains(&partition_for(id, topic.partitions));
            self.txns.lock().retain(|id, _| !gone(id));
            self.by_producer.lock().retain(|_, id| !gone(id));
            self.loaded.lock().retain(|i| !lost.contains(i));
        }
        let gained: Vec<i32> = led.into_iter().filter(|i| !loaded.contains(i)).collect();
        if gained.is_empty() {
            return Ok(());
        }
        self.load_partitions(&gained)?;
        self.loaded.lock().extend(gained);
        if complete {
            self.complete_prepared();
        }
        Ok(())
    }

    fn load_partitions(&self, indexes: &[i32]) -> crate::Result<()> {
        let mut loaded: HashMap<String, TxnMetadata> = HashMap::new();
        for &index in indexes {
            let Some(partition) = self.replicas.partition(TRANSACTION_STATE_TOPIC, index) else { continue };
            // Replay reports what it skips. Compaction keeps the latest record of every key,
            // understood here or not, so nothing skipped is lost to the cleaner.
            partition.replay(|batch| {
                for record in batch.records()? {
                    let Ok(record) = record else { continue };
                    let Some(Ok(Some(id))) = record.key.as_deref().map(record::decode_key) else { continue };
                    match record.value.as_deref().map(TxnValue::decode) {
                        None => {
                            loaded.remove(&id);
                        }
                        Some(Ok(value)) => {
                            loaded.insert(id.clone(), metadata_from(id, value));
                        }
                        Some(Err(err)) => tracing::warn!(%err, "skipping a record of {TRANSACTION_STATE_TOPIC}"),
                    }
                }
                Ok(())
            })?;
        }
        let mut by_producer = self.by_producer.lock();
        let mut txns = self.txns.lock();
        for (id, meta) in loaded {
            by_producer.insert(meta.producer_id, id.clone());
            txns.insert(id, Arc::new(Mutex::new(meta)));
        }
        tracing::info!(partitions = indexes.len(), transactional_ids = txns.len(), "transactions loaded");
        Ok(())
    }

    /// Whether this broker is the coordinator of `transactional_id` (it leads the id's state
    /// partition and has loaded it), or no state topic exists yet to say otherwise.
    pub fn coordinates(&self, transactional_id: &str) -> bool {
        let partitions = self.state_partitions.load(Ordering::Acquire);
        let Some(topic) = self.replicas.image().topic(TRANSACTION_STATE_TOPIC).cloned() else { return true };
        let index = partition_for(transactional_id, partitions.max(topic.partitions));
        self.replicas.partition(TRANSACTION_STATE_TOPIC, index).is_some_and(|p| p.is_leader())
            && self.loaded.lock().contains(&index)
    }

    /// KIP-890 for a partition whose transaction another broker coordinates: asks that
    /// coordinator (AddPartitionsToTxn with verify_only) whether the producer's ongoing
    /// transaction has the partition, once per transaction and partition. Blocking.
    pub fn verify_remotely(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError> {
        let key = (producer_id, producer_epoch, topic.to_string(), partition);
        if self.verified.lock().contains(&key) {
            return Ok(());
        }
        let image = self.replicas.image();
        let state = image.topic(TRANSACTION_STATE_TOPIC).ok_or(ResponseError::CoordinatorNotAvailable)?;
        let index = partition_for(transactional_id, state.partitions);
        let leader = state.assignment(index).map_or(-1, |a| a.leader);
        let address = crate::inter_broker::address_of(&image, leader, self.markers.listener())
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let request =
            AddPartitionsToTxnRequest::default().with_transactions(vec![AddPartitionsToTxnTransaction::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(transactional_id.to_string())))
                .with_producer_id(kafka_protocol::messages::ProducerId(producer_id))
                .with_producer_epoch(producer_epoch)
                .with_verify_only(true)
                .with_topics(vec![AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(vec![partition])])]);
        let response: AddPartitionsToTxnResponse = crate::inter_broker::call(
            &address,
            ApiKey::AddPartitionsToTxn,
            4,
            &request,
            std::time::Duration::from_secs(5),
        )
        .map_err(|err| {
            tracing::debug!(%err, "verifying a transactional produce with its coordinator failed");
            ResponseError::NotEnoughReplicas
        })?;
        if response.error_code != 0 {
            return Err(ResponseError::try_from_code(response.error_code).unwrap_or(ResponseError::UnknownServerError));
        }
        let code = response
            .results_by_transaction
            .iter()
            .flat_map(|t| &t.topic_results)
            .flat_map(|t| &t.results_by_partition)
            .map(|p| p.partition_error_code)
            .next()
            .unwrap_or(ResponseError::UnknownServerError.code());
        if code != 0 {
            return Err(ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError));
        }
        let mut verified = self.verified.lock();
        // Bounded: entries of ended transactions go with their markers; past this, start over.
        if verified.len() >= 100_000 {
            verified.clear();
        }
        verified.insert(key);
        Ok(())
    }

    /// A marker for `producer_id` landed here: its transaction's verifications end with it.
    pub(crate) fn forget_verified(&self, producer_id: i64) {
        self.verified.lock().retain(|(id, ..)| *id != producer_id);
    }
}
