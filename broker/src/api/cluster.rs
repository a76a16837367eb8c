//! DescribeCluster: this broker, the cluster id and the controller (itself).

use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{DescribeClusterBroker, DescribeClusterResponse};
use kafka_protocol::messages::{BrokerId, RequestHeader};

use super::str_bytes;
use crate::broker::Broker;

pub fn describe_cluster(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    _request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let node = BrokerId(broker.config.node_id);
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(broker.metadata().cluster_id.clone()))
        .with_controller_id(node)
        .with_endpoint_type(1)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(node)
            .with_host(str_bytes(broker.config.advertised_host.clone()))
            .with_port(i32::from(broker.config.advertised_port))])
        .with_cluster_authorized_operations(i32::MIN)
}
