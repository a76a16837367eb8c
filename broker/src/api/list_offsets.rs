//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, KIP-734), earliest local
//! (-4), or the first offset whose record timestamp is at least a given time; bounded by
//! the last stable offset for read_committed (isolation level 1, v2+).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::RequestHeader;

use super::leader_partition;
use crate::broker::Broker;
use crate::error::storage_error_code;
use crate::partition::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// ListOffsets' isolation level for consumers that read only committed transactions.
const READ_COMMITTED: i8 = 1;

fn lookup(partition: &Partition, timestamp: i64, isolation_level: i8) -> Result<(i64, i64), ResponseError> {
    let log = &partition.log;
    // read_committed consumers see up to the last stable offset, the others up to the
    // high watermark.
    let high_watermark =
        if isolation_level == READ_COMMITTED { log.last_stable_offset() } else { log.high_watermark() };
    match timestamp {
        LATEST => Ok((high_watermark.0, -1)),
        EARLIEST | EARLIEST_LOCAL => Ok((log.log_start_offset().0, -1)),
        MAX_TIMESTAMP => {
            Ok(log.max_timestamp().filter(|(offset, _)| *offset < high_watermark).map_or((-1, -1), |(o, t)| (o.0, t)))
        }
        t if t >= 0 => match log.offset_for_timestamp(t, high_watermark) {
            Ok(found) => Ok(found.map_or((-1, -1), |(o, t)| (o.0, t))),
            Err(err) => Err(storage_error_code(&err)),
        },
        _ => Err(ResponseError::InvalidRequest),
    }
}

pub fn handle(broker: &Arc<Broker>, header: &RequestHeader, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let isolation_level = request.isolation_level;
    // The leader epoch field exists from v4.
    let with_epoch = header.request_api_version >= 4;
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|wanted| {
                    let response = ListOffsetsPartitionResponse::default().with_partition_index(wanted.partition_index);
                    let result = leader_partition(
                        broker,
                        topic.name.0.as_str(),
                        wanted.partition_index,
                        wanted.current_leader_epoch,
                    )
                    .and_then(|partition| {
                        let leader_epoch = if with_epoch { partition.leader_epoch() } else { -1 };
                        lookup(&partition, wanted.timestamp, isolation_level).map(|(o, t)| (o, t, leader_epoch))
                    });
                    match result {
                        Ok((offset, timestamp, leader_epoch)) => {
                            response.with_offset(offset).with_timestamp(timestamp).with_leader_epoch(leader_epoch)
                        }
                        Err(code) => response.with_error_code(code.code()).with_offset(-1).with_timestamp(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
