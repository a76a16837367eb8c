//! The metadata quorum's state machine: committed entries applied, in log order, to the
//! cluster metadata image, each image published to the broker as it is made. A snapshot is
//! the image as records (what [`ClusterMetadata::to_records`] gives), kept in one
//! `<index>-<term>.checkpoint` file beside the log (Kafka's snapshot naming); it bounds the
//! log, and is what a voter that fell too far behind is sent.
//!
//! Invariant: the published image is always the result of applying every committed entry up
//! to its `offset`, and offsets only grow.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{ProposalOutcome, QuorumConfig};
use crate::metadata::{ClusterMetadata, MetadataRecord};

type Result<T> = std::result::Result<T, StorageError<u64>>;

const SNAPSHOT_SUFFIX: &str = ".checkpoint";

/// Called with every new image, on openraft's state machine task: must not block.
pub type Publish = Arc<dyn Fn(Arc<ClusterMetadata>) + Send + Sync>;

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    records: Vec<MetadataRecord>,
}

struct State {
    image: ClusterMetadata,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshot: Option<StoredSnapshot>,
}

#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    publish: Publish,
}

fn snapshot_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(SNAPSHOT_SUFFIX))
        .collect();
    files.sort();
    Ok(files)
}

impl StateMachine {
    /// Loads the latest snapshot in `dir`, if any; entries after it are applied by openraft.
    pub fn open(dir: &Path, publish: Publish) -> crate::error::Result<StateMachine> {
        let mut state = State {
            image: ClusterMetadata::default(),
            last_applied: None,
            membership: Default::default(),
            snapshot: None,
        };
        if let Some(latest) = snapshot_files(dir)?.pop() {
            let bytes = std::fs::read(&latest)?;
            let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|err| {
                crate::error::Error::Metadata(format!("metadata snapshot {} is unreadable: {err}", latest.display()))
            })?;
            state.image = image_of(&stored)?;
            state.last_applied = stored.meta.last_log_id;
            state.membership = stored.meta.last_membership.clone();
            state.snapshot = Some(stored);
        }
        publish(Arc::new(state.image.clone()));
        Ok(StateMachine { dir: dir.to_path_buf(), state: Arc::new(Mutex::new(state)), publish })
    }

    fn persist(&self, stored: &StoredSnapshot) -> std::io::Result<()> {
        let last = stored.meta.last_log_id.unwrap_or_default();
        let name = format!("{:020}-{:010}{SNAPSHOT_SUFFIX}", last.index, last.leader_id.term);
        let bytes = serde_json::to_vec(stored).map_err(std::io::Error::other)?;
        let path = self.dir.join(&name);
        crate::data_dir::write_durably(&path, &bytes)?;
        for old in snapshot_files(&self.dir)? {
            if old != path {
                std::fs::remove_file(old)?;
            }
        }
        Ok(())
    }
}

fn image_of(stored: &StoredSnapshot) -> crate::error::Result<ClusterMetadata> {
    let mut image = ClusterMetadata::default();
    image.apply_all(&stored.records).map_err(|rejected| {
        crate::error::Error::Metadata(format!("metadata snapshot is inconsistent: {}", rejected.message))
    })?;
    image.offset = stored.meta.last_log_id.map_or(0, |id| id.index);
    Ok(image)
}

impl RaftSnapshotBuilder<QuorumConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<QuorumConfig>> {
        let stored = {
            let state = self.state.lock();
            let last = state.last_applied.unwrap_or_default();
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: state.last_applied,
                    last_membership: state.membership.clone(),
                    snapshot_id: format!("{}-{}", last.index, last.leader_id.term),
                },
                records: state.image.to_records(),
            }
        };
        let machine = self.clone();
        let saved = stored.clone();
        tokio::task::spawn_blocking(move || machine.persist(&saved))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.state.lock().snapshot = Some(stored.clone());
        tracing::info!(index = stored.meta.last_log_id.map(|l| l.index), "metadata snapshot written");
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(stored.records) })
    }
}

impl RaftStateMachine<QuorumConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let state = self.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalOutcome>>
    where
        I: IntoIterator<Item = Entry<QuorumConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        let image = {
            let mut state = self.state.lock();
            for entry in entries {
                let outcome = match entry.payload {
                    EntryPayload::Blank => ProposalOutcome::default(),
                    EntryPayload::Normal(proposal) => match state.image.apply_all(&proposal.records) {
                        Ok(()) => ProposalOutcome::default(),
                        Err(rejected) => ProposalOutcome { error: Some((rejected.code.code(), rejected.message)) },
                    },
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), membership);
                        ProposalOutcome::default()
                    }
                };
                state.image.offset = entry.log_id.index;
                state.last_applied = Some(entry.log_id);
                outcomes.push(outcome);
            }
            Arc::new(state.image.clone())
        };
        (self.publish)(image);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<MetadataRecord>>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Vec<MetadataRecord>>,
    ) -> Result<()> {
        let stored = StoredSnapshot { meta: meta.clone(), records: *snapshot };
        let image = image_of(&stored).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let machine = self.clone();
        let saved = stored.clone();
        tokio::task::spawn_blocking(move || machine.persist(&saved))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let published = Arc::new(image.clone());
        {
            let mut state = self.state.lock();
            state.image = image;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.snapshot = Some(stored);
        }
        tracing::info!(index = meta.last_log_id.map(|l| l.index), "installed a metadata snapshot from the leader");
        (self.publish)(published);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<QuorumConfig>>> {
        let state = self.state.lock();
        Ok(state.snapshot.clone().map(|s| Snapshot { meta: s.meta, snapshot: Box::new(s.records) }))
    }
}
