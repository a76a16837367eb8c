//! DescribeCluster (the live brokers, the cluster id and the active controller) and
//! DescribeQuorum (the metadata quorum).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{DescribeClusterBroker, DescribeClusterResponse};
use kafka_protocol::messages::describe_quorum_request::DescribeQuorumRequest;
use kafka_protocol::messages::describe_quorum_response::{
    DescribeQuorumResponse, Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{BrokerId, RequestHeader};

use super::str_bytes;
use crate::broker::Broker;
use crate::quorum::{ControllerRequest, ControllerResponse};

pub fn describe_cluster(
    broker: &Arc<Broker>,
    listener: &str,
    _header: &RequestHeader,
    _request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let metadata = broker.metadata();
    let brokers = broker
        .live_brokers(&metadata, listener)
        .into_iter()
        .map(|(id, endpoint)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(str_bytes(endpoint.host))
                .with_port(i32::from(endpoint.port))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(metadata.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_endpoint_type(1)
        .with_brokers(brokers)
        .with_cluster_authorized_operations(i32::MIN)
}

/// DescribeQuorum (KIP-595): the metadata quorum as the active controller sees it, asked of
/// it through the quorum from whichever broker got the request. The metadata log is
/// `__cluster_metadata` partition 0, as in Kafka.
pub async fn describe_quorum(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let asks_for_the_log = request.topics.len() == 1
        && request.topics[0].topic_name.0.as_str() == METADATA_TOPIC
        && request.topics[0].partitions.len() == 1
        && request.topics[0].partitions[0].partition_index == 0;
    if !asks_for_the_log {
        return DescribeQuorumResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(str_bytes(format!("only {METADATA_TOPIC} partition 0 has a quorum"))));
    }
    let partition = PartitionData::default().with_partition_index(0);
    let answer = broker.controller.quorum().call_controller(ControllerRequest::DescribeQuorum).await;
    let partition = match answer {
        Ok(ControllerResponse::Quorum(quorum)) => {
            let voters = quorum
                .voters
                .iter()
                .map(|&(id, end)| {
                    ReplicaState::default()
                        .with_replica_id(BrokerId(id))
                        .with_log_end_offset(end)
                        .with_last_fetch_timestamp(-1)
                        .with_last_caught_up_timestamp(-1)
                })
                .collect();
            partition
                .with_leader_id(BrokerId(quorum.leader))
                .with_leader_epoch(i32::try_from(quorum.term).unwrap_or(i32::MAX))
                .with_high_watermark(quorum.high_watermark)
                .with_current_voters(voters)
        }
        other => partition
            .with_error_code(ResponseError::NotLeaderOrFollower.code())
            .with_error_message(Some(str_bytes(format!("no active controller answered: {other:?}"))))
            .with_leader_id(BrokerId(-1))
            .with_leader_epoch(-1),
    };
    let listener = broker.config.cluster.controller_listener_names.first().cloned().unwrap_or_default();
    let nodes = broker
        .config
        .cluster
        .quorum_voters(broker.config.node_id)
        .into_iter()
        .filter_map(|(id, address)| {
            let (host, port) = address.rsplit_once(':')?;
            let endpoint = Listener::default()
                .with_name(str_bytes(listener.clone()))
                .with_host(str_bytes(host))
                .with_port(port.parse().ok()?);
            Some(Node::default().with_node_id(BrokerId(id)).with_listeners(vec![endpoint]))
        })
        .collect();
    let topic =
        TopicData::default().with_topic_name(super::topic_name(METADATA_TOPIC)).with_partitions(vec![partition]);
    DescribeQuorumResponse::default().with_topics(vec![topic]).with_nodes(nodes)
}

/// The metadata log's name in Kafka's protocol.
const METADATA_TOPIC: &str = "__cluster_metadata";
