//! Request dispatch: the table of APIs this broker implements (which is also exactly what
//! ApiVersions advertises), and the step from a request frame to a response frame. Each API
//! family's handlers live in their own module under `api/`.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api;
use crate::broker::Broker;
use crate::network::{peek_header, ConnectionState};
use crate::response;

/// An implemented API and the versions of it that work.
pub struct ApiSpec {
    pub key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
}

const fn spec(key: ApiKey, min_version: i16, max_version: i16) -> ApiSpec {
    ApiSpec { key, min_version, max_version }
}

/// What ApiVersions advertises. Minimum versions are the oldest the protocol crate decodes
/// (Kafka 4.0 dropped the same ones, KIP-896).
pub const APIS: &[ApiSpec] = &[
    spec(ApiKey::Produce, 3, 11),
    spec(ApiKey::Fetch, 4, 16),
    spec(ApiKey::ListOffsets, 1, 8),
    spec(ApiKey::Metadata, 0, 12),
    spec(ApiKey::ApiVersions, 0, 4),
    spec(ApiKey::CreateTopics, 2, 7),
    spec(ApiKey::DeleteTopics, 1, 6),
    spec(ApiKey::CreatePartitions, 0, 3),
    spec(ApiKey::DescribeConfigs, 1, 4),
    spec(ApiKey::IncrementalAlterConfigs, 0, 1),
    spec(ApiKey::AlterConfigs, 0, 2),
    spec(ApiKey::DescribeCluster, 0, 1),
    spec(ApiKey::DeleteRecords, 0, 2),
    spec(ApiKey::OffsetForLeaderEpoch, 2, 4),
    spec(ApiKey::FindCoordinator, 0, 5),
    spec(ApiKey::JoinGroup, 0, 9),
    spec(ApiKey::SyncGroup, 0, 5),
    spec(ApiKey::Heartbeat, 0, 4),
    spec(ApiKey::LeaveGroup, 0, 5),
    spec(ApiKey::OffsetCommit, 2, 9),
    spec(ApiKey::OffsetFetch, 1, 9),
    spec(ApiKey::ListGroups, 0, 5),
    spec(ApiKey::DescribeGroups, 0, 5),
    spec(ApiKey::DeleteGroups, 0, 2),
    spec(ApiKey::OffsetDelete, 0, 0),
    spec(ApiKey::ConsumerGroupHeartbeat, 0, 1),
    spec(ApiKey::ConsumerGroupDescribe, 0, 1),
    spec(ApiKey::InitProducerId, 0, 5),
    spec(ApiKey::AddPartitionsToTxn, 0, 5),
    spec(ApiKey::AddOffsetsToTxn, 0, 4),
    spec(ApiKey::EndTxn, 0, 4),
    spec(ApiKey::TxnOffsetCommit, 0, 4),
    spec(ApiKey::DescribeProducers, 0, 0),
    spec(ApiKey::DescribeTransactions, 0, 0),
    spec(ApiKey::ListTransactions, 0, 1),
];

pub fn advertised_versions() -> Vec<ApiVersion> {
    APIS.iter()
        .map(|api| {
            ApiVersion::default()
                .with_api_key(api.key as i16)
                .with_min_version(api.min_version)
                .with_max_version(api.max_version)
        })
        .collect()
}

pub enum Outcome {
    Respond(Vec<Bytes>),
    /// Produce with acks=0 gets no response.
    NoResponse,
    Close(String),
}

fn respond<T: Encodable>(api_key: ApiKey, version: i16, correlation_id: i32, body: &T, splice: &[Bytes]) -> Outcome {
    match response::encode(api_key, version, correlation_id, body, splice) {
        Ok(chunks) => Outcome::Respond(chunks),
        Err(err) => Outcome::Close(format!("cannot encode {api_key:?} v{version} response: {err}")),
    }
}

pub async fn handle(broker: &Arc<Broker>, conn: &mut ConnectionState, frame: Bytes) -> Outcome {
    let Some((key, version, correlation_id)) = peek_header(&frame) else {
        return Outcome::Close("request shorter than its header".into());
    };
    let Ok(api_key) = ApiKey::try_from(key) else {
        return Outcome::Close(format!("unknown api key {key}"));
    };
    let Some(spec) = APIS.iter().find(|api| api.key == api_key) else {
        return Outcome::Close(format!("api {api_key:?} (key {key}) is not supported"));
    };
    if version < spec.min_version || version > spec.max_version {
        tracing::warn!(
            api = ?api_key,
            version,
            client = conn.client_software.as_deref().unwrap_or("unknown"),
            supported = %format!("{}..={}", spec.min_version, spec.max_version),
            "UNSUPPORTED_VERSION"
        );
        if api_key == ApiKey::ApiVersions {
            // Answer in v0, which every client can read, listing what we support; the client
            // retries with a version it finds there.
            let body = ApiVersionsResponse::default()
                .with_error_code(ResponseError::UnsupportedVersion.code())
                .with_api_keys(advertised_versions());
            return respond(api_key, 0, correlation_id, &body, &[]);
        }
        return Outcome::Close(format!("{api_key:?} v{version} is not supported"));
    }
    let mut body = frame;
    let header = match RequestHeader::decode(&mut body, api_key.request_header_version(version)) {
        Ok(header) => header,
        Err(err) => return Outcome::Close(format!("malformed {api_key:?} v{version} request header: {err}")),
    };
    let request = match RequestKind::decode(api_key, &mut body, version) {
        Ok(request) => request,
        Err(err) => return Outcome::Close(format!("malformed {api_key:?} v{version} request: {err}")),
    };
    let reply = |body: &dyn ErasedEncodable, splice: &[Bytes]| body.respond(api_key, version, correlation_id, splice);
    match request {
        RequestKind::ApiVersions(req) => reply(&api::api_versions::handle(conn, &header, req), &[]),
        RequestKind::Metadata(req) => reply(&api::metadata::handle(broker, &header, req).await, &[]),
        RequestKind::Produce(req) => match api::produce::handle(broker, &header, req).await {
            api::produce::ProduceReply::Respond(response) => reply(&response, &[]),
            api::produce::ProduceReply::NoResponse => Outcome::NoResponse,
            api::produce::ProduceReply::Close(reason) => Outcome::Close(reason),
        },
        RequestKind::Fetch(req) => {
            let (response, records) = api::fetch::handle(broker, &header, req).await;
            reply(&response, &records)
        }
        RequestKind::ListOffsets(req) => reply(&api::list_offsets::handle(broker, &header, req), &[]),
        RequestKind::CreateTopics(req) => reply(&api::topics::create_topics(broker, &header, req).await, &[]),
        RequestKind::DeleteTopics(req) => reply(&api::topics::delete_topics(broker, &header, req).await, &[]),
        RequestKind::CreatePartitions(req) => reply(&api::topics::create_partitions(broker, &header, req).await, &[]),
        RequestKind::DescribeConfigs(req) => reply(&api::configs::describe_configs(broker, &header, req), &[]),
        RequestKind::IncrementalAlterConfigs(req) => {
            reply(&api::configs::incremental_alter_configs(broker, &header, req).await, &[])
        }
        RequestKind::AlterConfigs(req) => reply(&api::configs::alter_configs(broker, &header, req).await, &[]),
        RequestKind::DescribeCluster(req) => reply(&api::cluster::describe_cluster(broker, &header, req), &[]),
        RequestKind::DeleteRecords(req) => reply(&api::records::delete_records(broker, &header, req).await, &[]),
        RequestKind::OffsetForLeaderEpoch(req) => {
            reply(&api::records::offset_for_leader_epoch(broker, &header, req), &[])
        }
        RequestKind::FindCoordinator(req) => {
            reply(&api::coordinator::find_coordinator(broker, &header, req).await, &[])
        }
        RequestKind::JoinGroup(req) => reply(&api::group::join_group(broker, conn, &header, req).await, &[]),
        RequestKind::SyncGroup(req) => reply(&api::group::sync_group(broker, &header, req).await, &[]),
        RequestKind::Heartbeat(req) => reply(&api::group::heartbeat(broker, &header, req), &[]),
        RequestKind::LeaveGroup(req) => reply(&api::group::leave_group(broker, &header, req), &[]),
        RequestKind::ListGroups(req) => reply(&api::group::list_groups(broker, &header, req), &[]),
        RequestKind::DescribeGroups(req) => reply(&api::group::describe_groups(broker, &header, req), &[]),
        RequestKind::DeleteGroups(req) => reply(&api::group::delete_groups(broker, &header, req).await, &[]),
        RequestKind::OffsetCommit(req) => reply(&api::offsets::offset_commit(broker, &header, req).await, &[]),
        RequestKind::OffsetFetch(req) => reply(&api::offsets::offset_fetch(broker, &header, req), &[]),
        RequestKind::OffsetDelete(req) => reply(&api::offsets::offset_delete(broker, &header, req).await, &[]),
        RequestKind::ConsumerGroupHeartbeat(req) => {
            reply(&api::consumer_group::consumer_group_heartbeat(broker, conn, &header, req).await, &[])
        }
        RequestKind::ConsumerGroupDescribe(req) => {
            reply(&api::consumer_group::consumer_group_describe(broker, &header, req), &[])
        }
        RequestKind::InitProducerId(req) => reply(&api::txn::init_producer_id(broker, &header, req).await, &[]),
        RequestKind::AddPartitionsToTxn(req) => {
            reply(&api::txn::add_partitions_to_txn(broker, &header, req).await, &[])
        }
        RequestKind::AddOffsetsToTxn(req) => reply(&api::txn::add_offsets_to_txn(broker, &header, req).await, &[]),
        RequestKind::EndTxn(req) => reply(&api::txn::end_txn(broker, &header, req).await, &[]),
        RequestKind::TxnOffsetCommit(req) => reply(&api::txn::txn_offset_commit(broker, &header, req).await, &[]),
        RequestKind::DescribeProducers(req) => reply(&api::txn_describe::describe_producers(broker, &header, req), &[]),
        RequestKind::DescribeTransactions(req) => {
            reply(&api::txn_describe::describe_transactions(broker, &header, req).await, &[])
        }
        RequestKind::ListTransactions(req) => {
            reply(&api::txn_describe::list_transactions(broker, &header, req).await, &[])
        }
        // Only APIs in the table get here, and each has an arm above.
        _ => Outcome::Close(format!("no handler for {api_key:?}")),
    }
}

/// Lets the dispatch table treat every response type alike.
trait ErasedEncodable {
    fn respond(&self, api_key: ApiKey, version: i16, correlation_id: i32, splice: &[Bytes]) -> Outcome;
}

impl<T: Encodable> ErasedEncodable for T {
    fn respond(&self, api_key: ApiKey, version: i16, correlation_id: i32, splice: &[Bytes]) -> Outcome {
        respond(api_key, version, correlation_id, self, splice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BytesMut};
    use kafka_protocol::messages::*;

    fn default_request(key: ApiKey) -> RequestKind {
        match key {
            ApiKey::Produce => RequestKind::Produce(ProduceRequest::default().with_acks(1)),
            ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default()),
            ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default()),
            ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default()),
            ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
            ApiKey::CreateTopics => RequestKind::CreateTopics(CreateTopicsRequest::default()),
            ApiKey::DeleteTopics => RequestKind::DeleteTopics(DeleteTopicsRequest::default()),
            ApiKey::CreatePartitions => RequestKind::CreatePartitions(CreatePartitionsRequest::default()),
            ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(DescribeConfigsRequest::default()),
            ApiKey::IncrementalAlterConfigs => {
                RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default())
            }
            ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
            ApiKey::AlterConfigs => RequestKind::AlterConfigs(AlterConfigsRequest::default()),
            ApiKey::DeleteRecords => RequestKind::DeleteRecords(DeleteRecordsRequest::default()),
            ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default()),
            ApiKey::FindCoordinator => RequestKind::FindCoordinator(FindCoordinatorRequest::default()),
            ApiKey::JoinGroup => RequestKind::JoinGroup(JoinGroupRequest::default()),
            ApiKey::SyncGroup => RequestKind::SyncGroup(SyncGroupRequest::default()),
            ApiKey::Heartbeat => RequestKind::Heartbeat(HeartbeatRequest::default()),
            ApiKey::LeaveGroup => RequestKind::LeaveGroup(LeaveGroupRequest::default()),
            ApiKey::OffsetCommit => RequestKind::OffsetCommit(OffsetCommitRequest::default()),
            ApiKey::OffsetFetch => RequestKind::OffsetFetch(OffsetFetchRequest::default()),
            ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
            ApiKey::DescribeGroups => RequestKind::DescribeGroups(DescribeGroupsRequest::default()),
            ApiKey::DeleteGroups => RequestKind::DeleteGroups(DeleteGroupsRequest::default()),
            ApiKey::OffsetDelete => RequestKind::OffsetDelete(OffsetDeleteRequest::default()),
            ApiKey::ConsumerGroupHeartbeat => {
                RequestKind::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest::default())
            }
            ApiKey::ConsumerGroupDescribe => {
                RequestKind::ConsumerGroupDescribe(ConsumerGroupDescribeRequest::default())
            }
            ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
            ApiKey::AddPartitionsToTxn => RequestKind::AddPartitionsToTxn(AddPartitionsToTxnRequest::default()),
            ApiKey::AddOffsetsToTxn => RequestKind::AddOffsetsToTxn(AddOffsetsToTxnRequest::default()),
            ApiKey::EndTxn => RequestKind::EndTxn(EndTxnRequest::default()),
            ApiKey::TxnOffsetCommit => RequestKind::TxnOffsetCommit(TxnOffsetCommitRequest::default()),
            ApiKey::DescribeProducers => RequestKind::DescribeProducers(DescribeProducersRequest::default()),
            ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(DescribeTransactionsRequest::default()),
            ApiKey::ListTransactions => RequestKind::ListTransactions(ListTransactionsRequest::default()),
            other => panic!("{other:?} is advertised but this test does not know how to build it"),
        }
    }

    /// Everything ApiVersions advertises has a handler, at every version, and its response
    /// decodes with nothing left over: an arm forgotten in the dispatch `match` would close
    /// the connection of every client that uses the API.
    #[tokio::test]
    async fn every_advertised_api_and_version_gets_a_well_formed_response() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::BrokerConfig { data_dir: dir.path().to_path_buf(), ..crate::BrokerConfig::default() };
        let broker = Broker::open(config).unwrap();
        let mut conn = ConnectionState::default();
        for api in APIS {
            for version in api.min_version..=api.max_version {
                let header = RequestHeader::default()
                    .with_request_api_key(api.key as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(i32::from(version));
                let mut frame = BytesMut::new();
                header.encode(&mut frame, api.key.request_header_version(version)).unwrap();
                default_request(api.key).encode(&mut frame, version).unwrap();
                let Outcome::Respond(chunks) = handle(&broker, &mut conn, frame.freeze()).await else {
                    panic!("{:?} v{version} got no response", api.key);
                };
                let mut body: Bytes = chunks.concat().into();
                let size = body.get_i32();
                assert_eq!(size as usize, body.len(), "{:?} v{version}: frame size", api.key);
                let header_version =
                    if api.key == ApiKey::ApiVersions { 0 } else { api.key.response_header_version(version) };
                let response_header = ResponseHeader::decode(&mut body, header_version).unwrap();
                assert_eq!(response_header.correlation_id, i32::from(version));
                ResponseKind::decode(api.key, &mut body, version).unwrap();
                assert!(body.is_empty(), "{:?} v{version}: {} bytes left over", api.key, body.len());
            }
        }
    }
}
