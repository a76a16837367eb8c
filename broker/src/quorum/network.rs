//! The controller listener's protocol: Raft's RPCs between voters, and the requests brokers
//! send the active controller (proposals forwarded by a broker that is not the leader,
//! heartbeats). Each message is one frame, a 4-byte big-endian length and a JSON body; a
//! connection carries one request at a time. Frames are bounded before anything is allocated
//! for them, and a peer that sends garbage loses its connection, nothing else.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, Raft, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{ControllerRequest, ControllerResponse, QuorumConfig};
use crate::metadata::MetadataRecord;

/// A metadata snapshot of a very large cluster (100k partitions) is tens of MB as JSON.
const MAX_FRAME_BYTES: usize = 256 << 20;
/// How long a connect may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Serialize, Deserialize)]
pub enum QuorumRequest {
    AppendEntries(AppendEntriesRequest<QuorumConfig>),
    Vote(VoteRequest<u64>),
    Snapshot { vote: Vote<u64>, meta: SnapshotMeta<u64, BasicNode>, records: Vec<MetadataRecord> },
    Controller(ControllerRequest),
}

#[derive(Serialize, Deserialize)]
pub enum QuorumResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<SnapshotResponse<u64>, String>),
    Controller(ControllerResponse),
}

/// What answers [`ControllerRequest`]s on this node: the controller, once it exists.
pub trait ControllerService: Send + Sync {
    fn handle(&self, request: ControllerRequest) -> Pin<Box<dyn Future<Output = ControllerResponse> + Send + '_>>;
}

pub type ServiceSlot = Arc<OnceLock<Arc<dyn ControllerService>>>;

async fn read_frame<R: AsyncReadExt + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let len = reader.read_u32().await? as usize;
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a {len}-byte frame is over the {MAX_FRAME_BYTES}-byte limit"),
        ));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame<W: AsyncWriteExt + Unpin>(writer: &mut W, body: &[u8]) -> std::io::Result<()> {
    writer.write_u32(body.len() as u32).await?;
    writer.write_all(body).await?;
    writer.flush().await
}

/// One connection to a peer's controller listener, reopened after any failure.
pub struct Connection {
    address: String,
    stream: Option<(BufReader<tokio::net::tcp::OwnedReadHalf>, BufWriter<tokio::net::tcp::OwnedWriteHalf>)>,
}

impl Connection {
    pub fn new(address: String) -> Connection {
        Connection { address, stream: None }
    }

    /// Sends `request` and waits up to `timeout` for the answer.
    pub async fn call(&mut self, request: &QuorumRequest, timeout: Duration) -> std::io::Result<QuorumResponse> {
        let body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        let answer = tokio::time::timeout(timeout, self.exchange(&body)).await;
        let result = match answer {
            Ok(result) => result,
            Err(_) => {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{} did not answer", self.address)))
            }
        };
        if result.is_err() {
            self.stream = None;
        }
        let bytes = result?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    async fn exchange(&mut self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        if self.stream.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            let (read, write) = stream.into_split();
            self.stream = Some((BufReader::new(read), BufWriter::new(write)));
        }
        let (reader, writer) = self.stream.as_mut().expect("connected above");
        write_frame(writer, body).await?;
        read_frame(reader).await
    }
}

/// Opens connections to voters for openraft, at the addresses this node's
/// `controller.quorum.voters` gives (as in Kafka, each node's own list: the one in the
/// membership is the first voter's).
pub struct Network {
    pub voters: BTreeMap<u64, BasicNode>,
}

impl RaftNetworkFactory<QuorumConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Connection {
        Connection::new(self.voters.get(&target).unwrap_or(node).addr.clone())
    }
}

fn unreachable<E: std::error::Error>(err: std::io::Error) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&err))
}

fn unexpected<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("the peer answered another request")))
}

impl RaftNetwork<QuorumConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<QuorumConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&QuorumRequest::AppendEntries(rpc), option.hard_ttl()).await.map_err(unreachable)? {
            QuorumResponse::AppendEntries(Ok(response)) => Ok(response),
            QuorumResponse::AppendEntries(Err(err)) => Err(RPCError::RemoteError(RemoteError::new(0, err))),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&QuorumRequest::Vote(rpc), option.hard_ttl()).await.map_err(unreachable)? {
            QuorumResponse::Vote(Ok(response)) => Ok(response),
            QuorumResponse::Vote(Err(err)) => Err(RPCError::RemoteError(RemoteError::new(0, err))),
            _ => Err(unexpected()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<QuorumConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<QuorumConfig, Fatal<u64>>> {
        let request = QuorumRequest::Snapshot { vote, meta: snapshot.meta, records: *snapshot.snapshot };
        let response = self
            .call(&request, option.hard_ttl().max(Duration::from_secs(10)))
            .await
            .map_err(|err| StreamingError::Unreachable(Unreachable::new(&err)))?;
        match response {
            QuorumResponse::Snapshot(Ok(response)) => Ok(response),
            QuorumResponse::Snapshot(Err(message)) => {
                Err(StreamingError::Network(NetworkError::new(&std::io::Error::other(message))))
            }
            _ => Err(StreamingError::Network(NetworkError::new(&std::io::Error::other("unexpected answer")))),
        }
    }
}

/// Serves the controller listener until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    raft: Raft<QuorumConfig>,
    service: ServiceSlot,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (raft, service, stop) = (raft.clone(), service.clone(), stop.clone());
                    tokio::spawn(async move {
                        if let Err(err) = serve_connection(stream, raft, service, stop).await {
                            tracing::debug!(%err, "controller connection closed");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "accepting a controller connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    raft: Raft<QuorumConfig>,
    service: ServiceSlot,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let (mut reader, mut writer) = (BufReader::new(read), BufWriter::new(write));
    loop {
        let body = tokio::select! {
            body = read_frame(&mut reader) => body?,
            _ = stop.changed() => return Ok(()),
        };
        let request: QuorumRequest =
            serde_json::from_slice(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let response = answer(&raft, &service, request).await;
        let bytes = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        write_frame(&mut writer, &bytes).await?;
    }
}

async fn answer(raft: &Raft<QuorumConfig>, service: &ServiceSlot, request: QuorumRequest) -> QuorumResponse {
    match request {
        QuorumRequest::AppendEntries(rpc) => QuorumResponse::AppendEntries(raft.append_entries(rpc).await),
        QuorumRequest::Vote(rpc) => QuorumResponse::Vote(raft.vote(rpc).await),
        QuorumRequest::Snapshot { vote, meta, records } => {
            let snapshot = Snapshot { meta, snapshot: Box::new(records) };
            QuorumResponse::Snapshot(raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string()))
        }
        QuorumRequest::Controller(request) => match service.get() {
            Some(service) => QuorumResponse::Controller(service.handle(request).await),
            None => QuorumResponse::Controller(ControllerResponse::NotReady),
        },
    }
}
