//! DeleteRecords (moves a partition's log start offset) and OffsetForLeaderEpoch (where a
//! leader epoch ends, which consumers use to detect truncation).

use std::sync::Arc;

use kafka_protocol::messages::delete_records_request::DeleteRecordsRequest;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::RequestHeader;
use sluice_storage::{LeaderEpoch, Offset};

use super::{admin_blocking, leader_partition};
use crate::broker::Broker;
use crate::error::storage_error_code;

/// DeleteRecords' "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub async fn delete_records(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let topics = admin_blocking(broker, move |broker| {
        request
            .topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|wanted| {
                        let result = DeleteRecordsPartitionResult::default()
                            .with_partition_index(wanted.partition_index)
                            .with_low_watermark(-1);
                        let partition =
                            match leader_partition(broker, topic.name.0.as_str(), wanted.partition_index, -1) {
                                Ok(partition) => partition,
                                Err(code) => return result.with_error_code(code.code()),
                            };
                        let offset = if wanted.offset == HIGH_WATERMARK {
                            partition.log.high_watermark().0
                        } else {
                            wanted.offset
                        };
                        match partition.log.delete_records_before(Offset(offset)) {
                            Ok(low_watermark) => result.with_low_watermark(low_watermark.0),
                            Err(err) => result.with_error_code(storage_error_code(&err).code()),
                        }
                    })
                    .collect();
                DeleteRecordsTopicResult::default().with_name(topic.name).with_partitions(partitions)
            })
            .collect()
    })
    .await;
    DeleteRecordsResponse::default().with_topics(topics)
}

pub fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|wanted| {
                    let result = EpochEndOffset::default()
                        .with_partition(wanted.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let partition = match leader_partition(
                        broker,
                        topic.topic.0.as_str(),
                        wanted.partition,
                        wanted.current_leader_epoch,
                    ) {
                        Ok(partition) => partition,
                        Err(code) => return result.with_error_code(code.code()),
                    };
                    // From the log's leader epoch cache, as Kafka answers (KIP-101).
                    let (epoch, end) = partition.log.end_offset_for_epoch(LeaderEpoch(wanted.leader_epoch));
                    result.with_leader_epoch(epoch.0).with_end_offset(end.0)
                })
                .collect();
            OffsetForLeaderTopicResult::default().with_topic(topic.topic).with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
