//! DescribeCluster: the live brokers, the cluster id and the active controller.

use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{DescribeClusterBroker, DescribeClusterResponse};
use kafka_protocol::messages::{BrokerId, RequestHeader};

use super::str_bytes;
use crate::broker::Broker;

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
