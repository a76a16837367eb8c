//! Request dispatch: one table of the APIs this broker implements, each with the versions
//! of it that work and its handler. ApiVersions advertises exactly that table, and dispatch
//! serves from it: a frame's header is read, its API and version checked against the
//! table, and its entry decodes the request, runs the handler (one function of the API
//! family's module under `api/`) and encodes the response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api;
use crate::broker::Broker;
use crate::connection::ConnectionState;
use crate::response::{respond, Outcome};

/// One request on its way to its handler: the header is decoded, the body not yet.
pub(crate) struct Call<'a> {
    api_key: ApiKey,
    broker: &'a Arc<Broker>,
    conn: &'a mut ConnectionState,
    header: RequestHeader,
    body: Bytes,
}

impl Call<'_> {
    fn decode<T: Decodable>(&mut self) -> Result<T, Outcome> {
        let version = self.header.request_api_version;
        T::decode(&mut self.body, version)
            .map_err(|err| Outcome::Close(format!("malformed {:?} v{version} request: {err}", self.api_key)))
    }

    fn reply<T: Encodable>(&self, body: &T) -> Outcome {
        self.reply_spliced(body, &[])
    }

    /// A response whose record sets (`splice`, slices of the log) are sent as they are.
    fn reply_spliced<T: Encodable>(&self, body: &T, splice: &[Bytes]) -> Outcome {
        let header = &self.header;
        respond(self.api_key, header.request_api_version, header.correlation_id, body, splice)
    }
}

/// A broker cut off from the controller quorum has only stale metadata: it closes the
/// connection of a client asking for metadata, which then asks another broker (see
/// [`Broker::cut_off_from_quorum`]).
fn stale_metadata(call: &Call) -> Option<Outcome> {
    call.broker
        .cut_off_from_quorum()
        .then(|| Outcome::Close("this broker is cut off from the controller quorum: its metadata is stale".into()))
}

type Handler = for<'a> fn(Call<'a>) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// An implemented API, the versions of it that work, and its handler.
pub struct ApiSpec {
    pub key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
    handler: Handler,
}

/// One table entry: `$request` is decoded from the call, then `$body` (which has `$call`
/// and the decoded `$req` in scope) answers it.
macro_rules! api {
    ($key:ident, $min:expr, $max:expr, $request:ty, |$call:ident, $req:ident| $body:expr) => {{
        fn handler<'a>(mut $call: Call<'a>) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
            Box::pin(async move {
                let $req: $request = match $call.decode() {
                    Ok(request) => request,
                    Err(outcome) => return outcome,
                };
                $body
            })
        }
        ApiSpec { key: ApiKey::$key, min_version: $min, max_version: $max, handler }
    }};
}

/// What ApiVersions advertises and dispatch serves. Minimum versions are the oldest the
/// protocol crate decodes (Kafka 4.0 dropped the same ones, KIP-896).
pub const APIS: &[ApiSpec] = &[
    api!(Produce, 3, 11, ProduceRequest, |call, req| {
        match api::produce::handle(call.broker, &call.conn.listener, &call.header, req).await {
            api::produce::ProduceReply::Respond(response) => call.reply(&response),
            api::produce::ProduceReply::NoResponse => Outcome::NoResponse,
            api::produce::ProduceReply::Close(reason) => Outcome::Close(reason),
            api::produce::ProduceReply::Later(response) => {
                let (key, version, correlation_id) =
                    (call.api_key, call.header.request_api_version, call.header.correlation_id);
                Outcome::Later(Box::pin(async move { respond(key, version, correlation_id, &response.await, &[]) }))
            }
        }
    }),
    api!(Fetch, 4, 16, FetchRequest, |call, req| {
        let (response, records) = api::fetch::handle(call.broker, &call.conn.listener, &call.header, req).await;
        call.reply_spliced(&response, &records)
    }),
    api!(ListOffsets, 1, 8, ListOffsetsRequest, |call, req| call.reply(&api::list_offsets::handle(
        call.broker,
        &call.header,
        req
    ))),
    api!(Metadata, 0, 12, MetadataRequest, |call, req| {
        if let Some(outcome) = stale_metadata(&call) {
            return outcome;
        }
        call.reply(&api::metadata::handle(call.broker, &call.conn.listener, &call.header, req).await)
    }),
    api!(ApiVersions, 0, 4, ApiVersionsRequest, |call, req| {
        let response = api::api_versions::handle(call.conn, &call.header, req, &advertised_versions());
        call.reply(&response)
    }),
    api!(CreateTopics, 2, 7, CreateTopicsRequest, |call, req| call
        .reply(&api::topics::create_topics(call.broker, &call.header, req).await)),
    api!(DeleteTopics, 1, 6, DeleteTopicsRequest, |call, req| call
        .reply(&api::topics::delete_topics(call.broker, &call.header, req).await)),
    api!(CreatePartitions, 0, 3, CreatePartitionsRequest, |call, req| {
        call.reply(&api::topics::create_partitions(call.broker, &call.header, req).await)
    }),
    api!(DescribeConfigs, 1, 4, DescribeConfigsRequest, |call, req| {
        call.reply(&api::configs::describe_configs(call.broker, &call.header, req))
    }),
    api!(IncrementalAlterConfigs, 0, 1, IncrementalAlterConfigsRequest, |call, req| {
        call.reply(&api::configs::incremental_alter_configs(call.broker, &call.header, req).await)
    }),
    api!(AlterConfigs, 0, 2, AlterConfigsRequest, |call, req| {
        call.reply(&api::configs::alter_configs(call.broker, &call.header, req).await)
    }),
    api!(DescribeCluster, 0, 1, DescribeClusterRequest, |call, req| {
        if let Some(outcome) = stale_metadata(&call) {
            return outcome;
        }
        call.reply(&api::cluster::describe_cluster(call.broker, &call.conn.listener, &call.header, req))
    }),
    api!(DescribeQuorum, 0, 2, DescribeQuorumRequest, |call, req| {
        call.reply(&api::cluster::describe_quorum(call.broker, &call.header, req).await)
    }),
    api!(DeleteRecords, 0, 2, DeleteRecordsRequest, |call, req| {
        call.reply(&api::records::delete_records(call.broker, &call.header, req).await)
    }),
    api!(AlterPartitionReassignments, 0, 1, AlterPartitionReassignmentsRequest, |call, req| {
        call.reply(&api::replicas::alter_partition_reassignments(call.broker, &call.header, req).await)
    }),
    api!(ListPartitionReassignments, 0, 0, ListPartitionReassignmentsRequest, |call, req| {
        call.reply(&api::replicas::list_partition_reassignments(call.broker, &call.header, req))
    }),
    api!(ElectLeaders, 0, 2, ElectLeadersRequest, |call, req| {
        call.reply(&api::replicas::elect_leaders(call.broker, &call.header, req).await)
    }),
    api!(DescribeLogDirs, 1, 4, DescribeLogDirsRequest, |call, req| {
        call.reply(&api::replicas::describe_log_dirs(call.broker, &call.header, req))
    }),
    api!(OffsetForLeaderEpoch, 2, 4, OffsetForLeaderEpochRequest, |call, req| {
        call.reply(&api::records::offset_for_leader_epoch(call.broker, &call.header, req))
    }),
    api!(FindCoordinator, 0, 5, FindCoordinatorRequest, |call, req| {
        if let Some(outcome) = stale_metadata(&call) {
            return outcome;
        }
        call.reply(&api::coordinator::find_coordinator(call.broker, &call.conn.listener, &call.header, req).await)
    }),
    api!(JoinGroup, 0, 9, JoinGroupRequest, |call, req| {
        let response = api::group::join_group(call.broker, call.conn, &call.header, req).await;
        call.reply(&response)
    }),
    api!(SyncGroup, 0, 5, SyncGroupRequest, |call, req| call
        .reply(&api::group::sync_group(call.broker, &call.header, req).await)),
    api!(Heartbeat, 0, 4, HeartbeatRequest, |call, req| call.reply(&api::group::heartbeat(
        call.broker,
        &call.header,
        req
    ))),
    api!(LeaveGroup, 0, 5, LeaveGroupRequest, |call, req| call.reply(&api::group::leave_group(
        call.broker,
        &call.header,
        req
    ))),
    api!(OffsetCommit, 2, 9, OffsetCommitRequest, |call, req| {
        call.reply(&api::offsets::offset_commit(call.broker, &call.header, req).await)
    }),
    api!(OffsetFetch, 1, 9, OffsetFetchRequest, |call, req| call.reply(&api::offsets::offset_fetch(
        call.broker,
        &call.header,
        req
    ))),
    api!(ListGroups, 0, 5, ListGroupsRequest, |call, req| call.reply(&api::group::list_groups(
        call.broker,
        &call.header,
        req
    ))),
    api!(DescribeGroups, 0, 5, DescribeGroupsRequest, |call, req| {
        call.reply(&api::group::describe_groups(call.broker, &call.header, req))
    }),
    api!(DeleteGroups, 0, 2, DeleteGroupsRequest, |call, req| {
        call.reply(&api::group::delete_groups(call.broker, &call.header, req).await)
    }),
    api!(OffsetDelete, 0, 0, OffsetDeleteRequest, |call, req| {
        call.reply(&api::offsets::offset_delete(call.broker, &call.header, req).await)
    }),
    api!(ConsumerGroupHeartbeat, 0, 1, ConsumerGroupHeartbeatRequest, |call, req| {
        let response = api::consumer_group::consumer_group_heartbeat(call.broker, call.conn, &call.header, req).await;
        call.reply(&response)
    }),
    api!(ConsumerGroupDescribe, 0, 1, ConsumerGroupDescribeRequest, |call, req| {
        call.reply(&api::consumer_group::consumer_group_describe(call.broker, &call.header, req))
    }),
    api!(InitProducerId, 0, 5, InitProducerIdRequest, |call, req| {
        call.reply(&api::txn::init_producer_id(call.broker, &call.header, req).await)
    }),
    api!(AddPartitionsToTxn, 0, 5, AddPartitionsToTxnRequest, |call, req| {
        call.reply(&api::txn::add_partitions_to_txn(call.broker, &call.header, req).await)
    }),
    api!(AddOffsetsToTxn, 0, 4, AddOffsetsToTxnRequest, |call, req| {
        call.reply(&api::txn::add_offsets_to_txn(call.broker, &call.header, req).await)
    }),
    api!(EndTxn, 0, 4, EndTxnRequest, |call, req| call.reply(&api::txn::end_txn(call.broker, &call.header, req).await)),
    api!(TxnOffsetCommit, 0, 4, TxnOffsetCommitRequest, |call, req| {
        call.reply(&api::txn::txn_offset_commit(call.broker, &call.header, req).await)
    }),
    api!(WriteTxnMarkers, 1, 1, WriteTxnMarkersRequest, |call, req| {
        call.reply(&api::txn_markers::write_txn_markers(call.broker, &call.header, req).await)
    }),
    api!(DescribeProducers, 0, 0, DescribeProducersRequest, |call, req| {
        call.reply(&api::txn_describe::describe_producers(call.broker, &call.header, req))
    }),
    api!(DescribeTransactions, 0, 0, DescribeTransactionsRequest, |call, req| {
        call.reply(&api::txn_describe::describe_transactions(call.broker, &call.header, req).await)
    }),
    api!(ListTransactions, 0, 1, ListTransactionsRequest, |call, req| {
        call.reply(&api::txn_describe::list_transactions(call.broker, &call.header, req).await)
    }),
];

/// The table as ApiVersions lists it.
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

/// Reads the fixed start of a request header: api key, api version, correlation id.
fn peek_header(frame: &[u8]) -> Option<(i16, i16, i32)> {
    let mut buf = frame.get(..8)?;
    Some((buf.get_i16(), buf.get_i16(), buf.get_i32()))
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
    (spec.handler)(Call { api_key, broker, conn, header, body }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

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
            ApiKey::WriteTxnMarkers => RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default()),
            ApiKey::AlterPartitionReassignments => {
                RequestKind::AlterPartitionReassignments(AlterPartitionReassignmentsRequest::default())
            }
            ApiKey::ListPartitionReassignments => {
                RequestKind::ListPartitionReassignments(ListPartitionReassignmentsRequest::default())
            }
            ApiKey::ElectLeaders => RequestKind::ElectLeaders(ElectLeadersRequest::default()),
            ApiKey::DescribeLogDirs => RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default()),
            ApiKey::DescribeQuorum => RequestKind::DescribeQuorum(DescribeQuorumRequest::default()),
            other => panic!("{other:?} is advertised but this test does not know how to build it"),
        }
    }

    /// Everything ApiVersions advertises is answered at every version, and its response
    /// decodes with nothing left over: a handler that decoded or encoded the wrong type would
    /// close the connection of every client that uses the API.
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
