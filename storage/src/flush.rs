//! Group commit: appenders that need their data durable wait here, and one of them at a time
//! (the leader) fsyncs on behalf of everyone who appended before it started. With 64 waiting
//! appenders, one fsync acknowledges all of them.
//!
//! Invariants: `durable_offset` never passes the log end offset and only moves forward
//! (except by truncation); after an fsync fails, the log accepts no more writes, because the
//! kernel may have dropped the dirty pages it could not write.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::segment::OpenSegment;

#[derive(Default)]
struct FlushState {
    /// Every offset below this is on stable storage.
    durable_offset: i64,
    /// A leader is fsyncing right now.
    syncing: bool,
    failed: Option<String>,
    /// Segments rolled since the last fsync: their tails may still be dirty.
    rolled: Vec<Arc<OpenSegment>>,
    fsyncs: u64,
}

/// What the leader must make durable: everything below `end_offset`, in `active`.
pub(crate) struct SyncTarget {
    pub end_offset: i64,
    pub active: Arc<OpenSegment>,
}

#[derive(Default)]
pub(crate) struct Flusher {
    state: Mutex<FlushState>,
    synced: Condvar,
}

pub(crate) enum SyncError {
    /// The log refuses writes since an earlier fsync failure.
    Failed(String),
    /// Finding what to sync failed (opening the active segment).
    Target(crate::Error),
}

impl Flusher {
    pub fn new(durable_offset: i64) -> Flusher {
        Flusher { state: Mutex::new(FlushState { durable_offset, ..FlushState::default() }), synced: Condvar::new() }
    }

    pub fn durable_offset(&self) -> i64 {
        self.state.lock().durable_offset
    }

    pub fn fsync_count(&self) -> u64 {
        self.state.lock().fsyncs
    }

    pub fn failure(&self) -> Option<String> {
        self.state.lock().failed.clone()
    }

    pub fn has_rolled(&self) -> bool {
        !self.state.lock().rolled.is_empty()
    }

    pub fn push_rolled(&self, segment: Arc<OpenSegment>) {
        self.state.lock().rolled.push(segment);
    }

    /// After a truncation, offsets past the new end are no longer durable data.
    pub fn truncate(&self, end_offset: i64) {
        let mut state = self.state.lock();
        state.durable_offset = state.durable_offset.min(end_offset);
    }

    /// Blocks until every offset below `offset` is durable, fsyncing as the leader when no
    /// one else is. `target` snapshots the log end and active segment for a leader.
    pub fn sync_to(&self, offset: i64, target: impl Fn() -> crate::Result<SyncTarget>) -> Result<(), SyncError> {
        let mut state = self.state.lock();
        loop {
            if let Some(reason) = &state.failed {
                return Err(SyncError::Failed(reason.clone()));
            }
            if state.durable_offset >= offset {
                return Ok(());
            }
            if state.syncing {
                self.synced.wait(&mut state);
                continue;
            }
            state.syncing = true;
            let rolled = std::mem::take(&mut state.rolled);
            drop(state);

            let result = target().map_err(SyncError::Target).and_then(|target| {
                for segment in rolled.iter().chain(std::iter::once(&target.active)) {
                    segment.sync_data().map_err(|err| SyncError::Failed(err.to_string()))?;
                }
                Ok(target.end_offset)
            });

            state = self.state.lock();
            state.syncing = false;
            match &result {
                Ok(end_offset) => {
                    state.fsyncs += 1;
                    state.durable_offset = state.durable_offset.max(*end_offset);
                }
                Err(SyncError::Failed(reason)) => {
                    tracing::error!(%reason, "fsync failed; the log refuses further writes until it is reopened and recovered");
                    state.failed = Some(reason.clone());
                }
                Err(SyncError::Target(_)) => state.rolled.extend(rolled),
            }
            self.synced.notify_all();
            result?;
        }
    }
}
