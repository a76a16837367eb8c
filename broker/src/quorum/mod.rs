//! The metadata quorum: the metadata log (`__cluster_metadata-0`) replicated by Raft among
//! the controller voters of `controller.quorum.voters`, with openraft doing the consensus. A
//! single node is a quorum of one voter, on the same path. Changes are proposed as batches of
//! metadata records; the leader (the active controller) appends them, and every voter applies
//! committed batches in log order to its image, which it publishes to its broker. A node that
//! is not the leader forwards its proposals to it over the controller listener.
//!
//! Invariant: an image is published only with every committed entry up to its offset applied;
//! a proposal is applied whole or (if a record does not fit) not at all, on every voter alike.

mod legacy;
mod log_store;
mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use sluice_storage::HandleCache;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::metadata::{ClusterMetadata, Endpoint, MetadataRecord, METADATA_LOG_DIR};
pub use network::{ControllerService, ServiceSlot};

openraft::declare_raft_types!(
    pub QuorumConfig:
        D = Proposal,
        R = ProposalOutcome,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Vec<MetadataRecord>,
);

/// One batch of metadata records, applied whole or not at all.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal {
    pub records: Vec<MetadataRecord>,
}

/// What applying a proposal gave: nothing, or why it was refused (a Kafka error code).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProposalOutcome {
    pub error: Option<(i16, String)>,
}

/// A broker telling the active controller it is alive (and, the first time in a process,
/// registering).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrokerHeartbeat {
    pub node_id: i32,
    pub incarnation: Uuid,
    pub endpoints: Vec<Endpoint>,
    /// The incarnation this one replaces: the last process on the same data directory (whose
    /// lock this one holds), so its registration may be taken over without waiting out its
    /// session.
    pub replaces: Option<Uuid>,
    /// Set by a broker shutting down: fence it now (its partitions get other leaders).
    pub shutting_down: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControllerRequest {
    Propose(Vec<MetadataRecord>),
    Heartbeat(BrokerHeartbeat),
    /// The quorum as the active controller sees it (DescribeQuorum).
    DescribeQuorum,
}

/// The metadata quorum as its leader sees it, in KIP-595's terms: the leader and its epoch
/// (the Raft term), the high watermark of the metadata log (the first offset not known to be
/// committed) and each voter's log end offset as the leader last heard (-1: not yet).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuorumDescription {
    pub leader: i32,
    pub term: u64,
    pub high_watermark: i64,
    pub voters: Vec<(i32, i64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControllerResponse {
    /// The proposal was applied at this metadata offset.
    Proposed(u64),
    /// The proposal was refused (a Kafka error code and why).
    Refused(i16, String),
    /// This node is not the active controller.
    NotController,
    /// This node has no controller yet (it is starting).
    NotReady,
    /// The heartbeat counted: the broker is registered and (unless shutting down) unfenced.
    Alive,
    Quorum(QuorumDescription),
}

/// Why a proposal did not land.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// Applying it refused it; nothing changed.
    Refused(ResponseError, String),
    /// No controller answered before the deadline; it may or may not have landed.
    Unavailable(String),
}

/// How long a proposal may look for an active controller (an election takes about a second).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call to another controller may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct MetadataQuorum {
    raft: Raft<QuorumConfig>,
    node_id: u64,
    voters: BTreeMap<u64, BasicNode>,
    image: watch::Receiver<Arc<ClusterMetadata>>,
    log: sluice_storage::PartitionLog,
    /// Answers controller requests on this node (set once the controller exists).
    pub service: ServiceSlot,
    runtime: tokio::runtime::Handle,
}

/// Runs `future` on `runtime` and blocks this thread until it is done: what a blocking caller
/// (one that may be a runtime worker, unlike `block_on`'s) does to wait for async work.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        tx.send(future.await).ok();
    });
    rx.recv().map_err(|_| Error::Metadata("the metadata quorum's task stopped".into()))
}

/// The voter set: node id to the address of its controller listener.
pub type Voters = BTreeMap<i32, String>;

fn raft_config() -> Result<Arc<openraft::Config>> {
    let config = openraft::Config {
        cluster_name: "sluice".into(),
        // Leaders heartbeat every 100 ms; a follower that hears nothing for 0.5-1 s calls an
        // election. Wider than openraft's defaults (50 ms, 150-300 ms) so that a fully loaded
        // two-core machine does not depose a live leader.
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        install_snapshot_timeout: 10_000,
        // Metadata records are small: a snapshot every 4096 entries bounds replay at start.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(4096),
        max_in_snapshot_log_to_keep: 512,
        ..Default::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| Error::Config(format!("raft config: {e}")))?))
}

impl MetadataQuorum {
    /// Opens the metadata log under `data_dir` and starts this node's Raft on `runtime`.
    /// Blocking. `publish` gets every image the state machine makes.
    pub fn open(
        data_dir: &Path,
        node_id: i32,
        voters: &Voters,
        cache: Arc<HandleCache>,
        runtime: tokio::runtime::Handle,
        publish: state_machine::Publish,
    ) -> Result<Arc<MetadataQuorum>> {
        let dir = data_dir.join(METADATA_LOG_DIR);
        let migrated = legacy::take_legacy_log(data_dir, &dir, node_id, cache.clone())?;
        let log_store = log_store::LogStore::open(&dir, cache)?;
        let (image_tx, image) = watch::channel(Arc::new(ClusterMetadata::default()));
        let both: state_machine::Publish = Arc::new(move |image: Arc<ClusterMetadata>| {
            publish(image.clone());
            image_tx.send_replace(image);
        });
        let state_machine = state_machine::StateMachine::open(&dir, both)?;
        let voters: BTreeMap<u64, BasicNode> =
            voters.iter().map(|(id, address)| (*id as u64, BasicNode::new(address.clone()))).collect();
        let log = log_store.log().clone();
        let config = raft_config()?;
        let raft = run_on(
            &runtime,
            Raft::new(node_id as u64, config, network::Network { voters: voters.clone() }, log_store, state_machine),
        )?
        .map_err(|e| Error::Metadata(format!("starting the metadata quorum: {e}")))?;
        let quorum = Arc::new(MetadataQuorum {
            raft,
            node_id: node_id as u64,
            voters,
            image,
            log,
            service: Default::default(),
            runtime: runtime.clone(),
        });
        let starting = quorum.clone();
        run_on(&runtime, async move { starting.initialize().await })??;
        if let Some(records) = migrated {
            quorum.finish_migration(data_dir, records)?;
        }
        Ok(quorum)
    }

    /// Gives a new quorum its voters. Only the lowest voter does: the first entry names the
    /// node that wrote it, so voters initialising on their own would start from different
    /// logs; the others get that entry from the first leader.
    async fn initialize(&self) -> Result<()> {
        let initialized = self.raft.is_initialized().await.map_err(|e| Error::Metadata(e.to_string()))?;
        if initialized || self.voters.keys().next() != Some(&self.node_id) {
            return Ok(());
        }
        match self.raft.initialize(self.voters.clone()).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(err) => Err(Error::Metadata(format!("initialising the metadata quorum: {err}"))),
        }
    }

    /// Proposes what a Sluice from before the quorum kept in its metadata log, then removes
    /// that log. Done again at the next start if interrupted: the proposal lands at most once.
    fn finish_migration(self: &Arc<Self>, data_dir: &Path, records: Vec<MetadataRecord>) -> Result<()> {
        let cluster_id = records.iter().find_map(|r| match r {
            MetadataRecord::Cluster { cluster_id } => Some(cluster_id.clone()),
            _ => None,
        });
        if cluster_id.is_some() && self.image().cluster_id != cluster_id.clone().unwrap_or_default() {
            if !self.image().cluster_id.is_empty() {
                return Err(Error::Metadata("the metadata quorum already names another cluster".into()));
            }
            self.propose_blocking(records).map_err(|e| Error::Metadata(format!("migrating metadata: {e:?}")))?;
            tracing::info!("metadata log migrated to the quorum");
        }
        legacy::remove_legacy_log(data_dir)
    }

    /// The latest image this node has applied.
    pub fn image(&self) -> Arc<ClusterMetadata> {
        self.image.borrow().clone()
    }

    /// Waits until this node's image is at `offset` or later, for up to `timeout`.
    pub async fn wait_for_offset(&self, offset: u64, timeout: Duration) -> bool {
        let mut image = self.image.clone();
        tokio::time::timeout(timeout, image.wait_for(|image| image.offset >= offset)).await.is_ok_and(|r| r.is_ok())
    }

    /// The active controller as this node knows it.
    pub fn leader(&self) -> Option<i32> {
        self.raft.metrics().borrow().current_leader.map(|id| id as i32)
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The last metadata offset this node knows to be committed.
    pub fn committed_offset(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |id| id.index)
    }

    /// The latest Raft term this node knows: a new one starts with every election.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.node_id as i32)
    }

    /// The quorum as this node sees it, if it is the leader.
    pub fn describe(&self) -> Option<QuorumDescription> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node_id) {
            return None;
        }
        let end_of = |matched: Option<&openraft::LogId<u64>>| matched.map_or(-1, |id| id.index as i64 + 1);
        let voters = self
            .voters
            .keys()
            .map(|&id| {
                let end = if id == self.node_id {
                    metrics.last_log_index.map_or(0, |index| index as i64 + 1)
                } else {
                    metrics.replication.as_ref().and_then(|r| r.get(&id)).map_or(-1, |m| end_of(m.as_ref()))
                };
                (id as i32, end)
            })
            .collect();
        Some(QuorumDescription {
            leader: self.node_id as i32,
            term: metrics.current_term,
            high_watermark: end_of(metrics.last_applied.as_ref()).max(0),
            voters,
        })
    }

    /// Whether this node leads and a quorum of voters acknowledged it within `within`: a
    /// leader cut off from the other voters believes it leads until a newer term reaches it.
    pub fn leads_with_quorum(&self, within: Duration) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let acked = || metrics.millis_since_quorum_ack.is_some_and(|ms| u128::from(ms) <= within.as_millis());
        metrics.current_leader == Some(self.node_id) && (self.voters.len() <= 1 || acked())
    }

    /// Changes the metadata: proposes `records` on the active controller (this node, or
    /// forwarded) and returns the offset they were applied at.
    pub async fn propose(&self, records: Vec<MetadataRecord>) -> std::result::Result<u64, ProposeError> {
        match self.call_controller(ControllerRequest::Propose(records)).await? {
            ControllerResponse::Proposed(offset) => Ok(offset),
            ControllerResponse::Refused(code, message) => Err(ProposeError::Refused(
                ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError),
                message,
            )),
            other => Err(ProposeError::Unavailable(format!("unexpected answer {other:?}"))),
        }
    }

    /// [`Self::propose`] from a thread that may block (not one of the runtime's workers'
    /// async tasks), then waits until this node's image has the change.
    pub fn propose_blocking(self: &Arc<Self>, records: Vec<MetadataRecord>) -> std::result::Result<u64, ProposeError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let quorum = self.clone();
        self.runtime.spawn(async move {
            let result = quorum.propose(records).await;
            if let Ok(offset) = result {
                quorum.wait_for_offset(offset, PROPOSE_TIMEOUT).await;
            }
            tx.send(result).ok();
        });
        rx.recv_timeout(PROPOSE_TIMEOUT * 2)
            .unwrap_or_else(|_| Err(ProposeError::Unavailable("the proposal did not finish".into())))
    }

    /// Appends `records` as the leader: the local half of [`Self::propose`].
    pub async fn propose_as_leader(&self, records: Vec<MetadataRecord>) -> ControllerResponse {
        match self.raft.client_write(Proposal { records }).await {
            Ok(written) => match written.data.error {
                None => ControllerResponse::Proposed(written.log_id.index),
                Some((code, message)) => ControllerResponse::Refused(code, message),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => ControllerResponse::NotController,
            Err(err) => ControllerResponse::Refused(ResponseError::UnknownServerError.code(), err.to_string()),
        }
    }

    /// Sends `request` to the active controller, retrying through elections until
    /// [`PROPOSE_TIMEOUT`].
    pub async fn call_controller(
        &self,
        request: ControllerRequest,
    ) -> std::result::Result<ControllerResponse, ProposeError> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let mut last_problem = String::from("no controller is elected");
        while Instant::now() < deadline {
            let response = match self.leader() {
                None => None,
                Some(leader) if leader as u64 == self.node_id => match self.service.get() {
                    Some(service) => Some(service.handle(request.clone()).await),
                    None => None,
                },
                Some(leader) => match self.voters.get(&(leader as u64)) {
                    Some(node) => {
                        let mut connection = network::Connection::new(node.addr.clone());
                        match connection.call(&network::QuorumRequest::Controller(request.clone()), CALL_TIMEOUT).await
                        {
                            Ok(network::QuorumResponse::Controller(response)) => Some(response),
                            Ok(_) => None,
                            Err(err) => {
                                last_problem = format!("controller {leader} at {}: {err}", node.addr);
                                None
                            }
                        }
                    }
                    None => None,
                },
            };
            match response {
                Some(ControllerResponse::NotController | ControllerResponse::NotReady) | None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(response) => return Ok(response),
            }
        }
        Err(ProposeError::Unavailable(last_problem))
    }

    /// Serves the controller listener (Raft between voters, brokers' requests).
    pub async fn serve(&self, listener: tokio::net::TcpListener, stop: watch::Receiver<bool>) {
        network::serve(listener, self.raft.clone(), self.service.clone(), stop).await
    }

    /// Stops Raft and closes the metadata log cleanly.
    pub fn close(&self) {
        let raft = self.raft.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            tx.send(raft.shutdown().await.is_ok()).ok();
        });
        if rx.recv_timeout(Duration::from_secs(5)) != Ok(true) {
            tracing::warn!("the metadata quorum did not stop cleanly");
        }
        if let Err(err) = self.log.clone().close() {
            tracing::error!(%err, "closing the metadata log failed");
        }
    }
}
