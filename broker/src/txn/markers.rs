//! Transaction markers: the commit or abort marker the transaction coordinator writes to
//! each partition of a transaction, durably, before the transaction counts as complete. A
//! marker in `__consumer_offsets` also settles the offsets committed in the transaction, so
//! the group coordinator is told. A partition led by another broker gets its marker through
//! WriteTxnMarkers, which that broker answers once the marker is in its ISR.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic, WriteTxnMarkersRequest,
};
use kafka_protocol::messages::write_txn_markers_response::WriteTxnMarkersResponse;
use kafka_protocol::messages::{ApiKey, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_storage::MarkerKind;

use crate::group::GroupCoordinator;
use crate::internal_topics::OFFSETS_TOPIC;
use crate::partition::PendingAppend;
use crate::replica_manager::ReplicaManager;
use crate::topic_partition::TopicPartition;

/// What became of one marker.
#[derive(Debug)]
pub enum MarkerOutcome {
    Written,
    /// The partition's topic was deleted: nobody can read the transaction there any more.
    PartitionGone,
}

pub struct MarkerWriter {
    replicas: Arc<ReplicaManager>,
    groups: Arc<GroupCoordinator>,
    /// The listener other brokers are reached on.
    listener: String,
}

/// How long another broker may take to write a marker into its ISR.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// WriteTxnMarkers v1, the only version Kafka 4 has.
pub const WRITE_TXN_MARKERS_VERSION: i16 = 1;

impl MarkerWriter {
    pub(crate) fn new(replicas: Arc<ReplicaManager>, groups: Arc<GroupCoordinator>, listener: String) -> MarkerWriter {
        MarkerWriter { replicas, groups, listener }
    }

    /// Writes `producer_id`'s marker to `target` (here, or through the broker leading it) and
    /// waits until the partition's ISR has it. Blocking.
    pub fn write(
        &self,
        target: &TopicPartition,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<MarkerOutcome, String> {
        let image = self.replicas.image();
        let Some(assignment) = image.topic(&target.topic).and_then(|t| t.assignment(target.partition)).cloned() else {
            return Ok(MarkerOutcome::PartitionGone);
        };
        if self.replicas.partition(&target.topic, target.partition).is_some_and(|p| p.is_leader()) {
            return self.write_local(target, producer_id, producer_epoch, commit, now_ms).map_err(|e| e.to_string());
        }
        let address = crate::inter_broker::address_of(&image, assignment.leader, &self.listener)
            .ok_or_else(|| format!("{target} has no live leader"))?;
        let marker = WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_transaction_result(commit)
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(TopicName(StrBytes::from_string(target.topic.to_string())))
                .with_partition_indexes(vec![target.partition])]);
        let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
        let response: WriteTxnMarkersResponse = crate::inter_broker::call(
            &address,
            ApiKey::WriteTxnMarkers,
            WRITE_TXN_MARKERS_VERSION,
            &request,
            REMOTE_TIMEOUT,
        )?;
        let code = response
            .markers
            .iter()
            .flat_map(|m| &m.topics)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == target.partition)
            .map(|p| p.error_code)
            .ok_or_else(|| format!("{address} did not answer for {target}"))?;
        match code {
            0 => Ok(MarkerOutcome::Written),
            code if code == ResponseError::UnknownTopicOrPartition.code() => Ok(MarkerOutcome::PartitionGone),
            code => Err(format!("{address} refused the marker for {target}: error code {code}")),
        }
    }

    pub(crate) fn listener(&self) -> &str {
        &self.listener
    }

    /// Writes the marker into a partition this broker leads, waiting for its ISR. Blocking.
    pub fn write_local(
        &self,
        target: &TopicPartition,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> sluice_storage::Result<MarkerOutcome> {
        let Some(partition) = self.replicas.partition(&target.topic, target.partition) else {
            return Ok(MarkerOutcome::PartitionGone);
        };
        let kind = if commit { MarkerKind::Commit } else { MarkerKind::Abort };
        let written =
            partition.append_marker(producer_id, producer_epoch, kind, now_ms).and_then(PendingAppend::wait_committed);
        match written {
            Ok(_) => {}
            // Deleted while the marker was written.
            Err(_) if self.replicas.partition(&target.topic, target.partition).is_none() => {
                return Ok(MarkerOutcome::PartitionGone)
            }
            Err(err) => return Err(err),
        }
        if target.topic == OFFSETS_TOPIC {
            self.groups.complete_txn_offsets(target.partition, producer_id, commit);
        }
        Ok(MarkerOutcome::Written)
    }
}
