//! WriteTxnMarkers: a transaction coordinator on another broker asks this one, the leader of
//! some of the transaction's partitions, to write their commit or abort markers. Each is
//! answered once the partition's ISR has it; a partition this broker does not lead gets
//! NOT_LEADER_OR_FOLLOWER and the coordinator retries with the new leader.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::WriteTxnMarkersRequest;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult, WriteTxnMarkersResponse,
};
use kafka_protocol::messages::RequestHeader;

use super::admin_blocking;
use crate::broker::Broker;
use crate::topic_partition::TopicPartition;
use crate::txn::MarkerOutcome;

pub async fn write_txn_markers(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let markers = admin_blocking(broker, move |broker| {
        request
            .markers
            .iter()
            .map(|marker| {
                let topics = marker
                    .topics
                    .iter()
                    .map(|topic| {
                        let name = topic.name.0.as_str();
                        let partitions = topic
                            .partition_indexes
                            .iter()
                            .map(|&index| {
                                let code = write_one(
                                    broker,
                                    name,
                                    index,
                                    marker.producer_id.0,
                                    marker.producer_epoch,
                                    marker.transaction_result,
                                );
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(index)
                                    .with_error_code(code.map_or(0, |c| c.code()))
                            })
                            .collect();
                        WritableTxnMarkerTopicResult::default()
                            .with_name(topic.name.clone())
                            .with_partitions(partitions)
                    })
                    .collect();
                WritableTxnMarkerResult::default().with_producer_id(marker.producer_id).with_topics(topics)
            })
            .collect()
    })
    .await;
    WriteTxnMarkersResponse::default().with_markers(markers)
}

/// One marker; the error, if it was not written.
fn write_one(
    broker: &Broker,
    topic: &str,
    index: i32,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> Option<ResponseError> {
    if let Err(code) = super::leader_partition(broker, topic, index, -1) {
        return Some(code);
    }
    let target = TopicPartition::new(topic, index);
    broker.txns.forget_verified(producer_id);
    match broker.txns.markers().write_local(&target, producer_id, epoch, commit, broker.clock.now_ms()) {
        Ok(MarkerOutcome::Written) => None,
        Ok(MarkerOutcome::PartitionGone) => Some(ResponseError::UnknownTopicOrPartition),
        Err(err) => {
            tracing::warn!(%target, %err, "writing a transaction marker for another broker's coordinator failed");
            Some(crate::error::storage_error_code(&err))
        }
    }
}
