//! Group commit: appenders that need their data durable wait here, and one of them at a time
//! (the leader) fsyncs on behalf of everyone who appended before it started.
//!
//! Invariants: `durable_offset` never passes the log end offset and only moves forward except
//! by truncation; after an fsync fails the log accepts no more writes, because the kernel may
//! have dropped the dirty pages it could not write.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::segment::{OpenSegment, RolledSegment};

#[derive(Default)]
struct FlushState {
    /// Every offset below this is on stable storage.
    durable_offset: i64,
    /// A leader is fsyncing right now, for round `round`.
    syncing: bool,
    round: u64,
    /// A lower bound of what the round in flight will make durable.
    round_end: i64,
    /// Waiters per round parity: those sleeping on `rounds[r % 2]` wait for round `r`.
    waiting: [usize; 2],
    failed: Option<String>,
    /// Segments rolled since the last round: their files are not durable yet.
    rolled: Vec<RolledSegment>,
    fsyncs: u64,
    /// Bumped by every truncation, so a round that snapshotted the log before one does not
    /// mark offsets durable that the truncation removed (and later appends reuse).
    truncations: u64,
}

/// What the leader must make durable: everything below `end_offset`, in the rolled segments
/// and `active`. Taken as one snapshot under the log's state lock, so that a segment rolled
/// while the leader waited for that lock is either in `rolled` or past `end_offset`.
pub(crate) struct SyncTarget {
    pub end_offset: i64,
    pub rolled: Vec<RolledSegment>,
    pub active: Arc<OpenSegment>,
    /// The log's directory, fsynced when segments were rolled (their successors' entries).
    pub dir: std::path::PathBuf,
}

/// Waiters sleep on the condition variable of the round that will cover them: the round in
/// flight if it covers their offset, else the next one. When a round ends, everyone waiting
/// for it is acknowledged at once, and one waiter of the next round is woken to lead it; the
/// rest of the next round sleep on. Each waiter is woken about once, instead of every waiter
/// at every fsync, which on a small machine costs more than the fsync itself.
#[derive(Default)]
pub(crate) struct Flusher {
    state: Mutex<FlushState>,
    rounds: [Condvar; 2],
}

pub(crate) enum SyncError {
    /// The log refuses writes since an earlier fsync failure.
    Failed(String),
    /// The log was truncated while the caller waited, and its offsets were not yet durable:
    /// its append may be gone, and the offsets may hold someone else's records.
    Truncated,
    /// Finding what to sync failed (opening the active segment).
    Target(crate::error::Error),
}

impl Flusher {
    pub fn new(durable_offset: i64) -> Flusher {
        Flusher {
            state: Mutex::new(FlushState { durable_offset, ..FlushState::default() }),
            rounds: Default::default(),
        }
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

    pub fn push_rolled(&self, segment: RolledSegment) {
        self.state.lock().rolled.push(segment);
    }

    /// The rolled segments a sync round must fsync; called while snapshotting its target.
    pub fn take_rolled(&self) -> Vec<RolledSegment> {
        std::mem::take(&mut self.state.lock().rolled)
    }

    /// After a truncation, offsets past the new end are no longer durable data.
    pub fn truncate(&self, end_offset: i64) {
        let mut state = self.state.lock();
        state.durable_offset = state.durable_offset.min(end_offset);
        state.truncations += 1;
    }

    /// After the log was emptied and restarted at `start`: everything below it counts as
    /// durable (there is nothing there to lose), and waiters on older offsets are told.
    pub fn restart_at(&self, start: i64) {
        let mut state = self.state.lock();
        state.durable_offset = start;
        state.truncations += 1;
    }

    /// Refuses all further writes (a write that could not be cleaned up after failing).
    pub fn fail(&self, reason: String) {
        let mut state = self.state.lock();
        state.failed.get_or_insert(reason);
        self.rounds.iter().for_each(|round| {
            round.notify_all();
        });
    }

    /// Blocks until every offset below `offset` is durable, fsyncing as the leader when no
    /// one else is. `target` snapshots the log end and active segment for a leader.
    pub fn sync_to(&self, offset: i64, target: impl Fn() -> crate::error::Result<SyncTarget>) -> Result<(), SyncError> {
        let mut state = self.state.lock();
        let truncations_at_start = state.truncations;
        loop {
            if let Some(reason) = &state.failed {
                return Err(SyncError::Failed(reason.clone()));
            }
            if state.truncations != truncations_at_start && state.durable_offset < offset {
                return Err(SyncError::Truncated);
            }
            if state.durable_offset >= offset {
                // A waiter woken to lead the next round may find itself covered already: it
                // passes the wake-up on, or the rest of that round would sleep with no leader.
                let next = ((state.round + 1) % 2) as usize;
                if !state.syncing && state.waiting[next] > 0 {
                    self.rounds[next].notify_one();
                }
                return Ok(());
            }
            if state.syncing {
                let round = if offset <= state.round_end { state.round } else { state.round + 1 };
                let parity = (round % 2) as usize;
                state.waiting[parity] += 1;
                self.rounds[parity].wait(&mut state);
                state.waiting[parity] -= 1;
                continue;
            }
            state.syncing = true;
            state.round += 1;
            state.round_end = offset;
            let round = state.round;
            let truncations = state.truncations;
            drop(state);

            let result = self.run_round(&target);
            state = self.state.lock();
            self.end_round(&mut state, round, truncations, &result);
            result?;
        }
    }

    /// A leader's fsyncs for its round, made without the lock: the rolled segments (and the
    /// directory, for their successors' entries), then the active segment. Returns the end
    /// offset the round made durable.
    fn run_round(&self, target: impl Fn() -> crate::error::Result<SyncTarget>) -> Result<i64, SyncError> {
        let target = target().map_err(SyncError::Target)?;
        self.state.lock().round_end = target.end_offset;
        for rolled in &target.rolled {
            rolled.make_durable().map_err(|err| SyncError::Failed(err.to_string()))?;
        }
        if !target.rolled.is_empty() {
            crate::checkpoint::sync_dir(&target.dir).map_err(|err| SyncError::Failed(err.to_string()))?;
        }
        target.active.sync_data().map_err(|err| SyncError::Failed(err.to_string()))?;
        Ok(target.end_offset)
    }

    /// Ends round `round` under the lock: its waiters are released and one waiter of the next
    /// round is woken to lead it; a failed fsync fails the log and releases everyone.
    fn end_round(&self, state: &mut FlushState, round: u64, truncations: u64, result: &Result<i64, SyncError>) {
        state.syncing = false;
        match result {
            Ok(end_offset) => {
                state.fsyncs += 1;
                // A truncation during the round may have removed offsets it covered.
                if state.truncations == truncations {
                    state.durable_offset = state.durable_offset.max(*end_offset);
                }
                self.rounds[(round % 2) as usize].notify_all();
                if state.waiting[((round + 1) % 2) as usize] > 0 {
                    self.rounds[((round + 1) % 2) as usize].notify_one();
                }
            }
            Err(SyncError::Failed(reason)) => {
                tracing::error!(%reason, "fsync failed; the log refuses further writes until it is reopened and recovered");
                state.failed = Some(reason.clone());
                self.rounds.iter().for_each(|round| {
                    round.notify_all();
                });
            }
            Err(SyncError::Target(_) | SyncError::Truncated) => {
                self.rounds.iter().for_each(|round| {
                    round.notify_all();
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// Many threads "append" (bump an end offset) and wait for durability against a slow
    /// fake fsync, so that waiters queue for the next round while the snapshot of the round in
    /// flight still covers them; every one must be released, within a deadline.
    #[test]
    fn every_waiter_is_released() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000000.log"), b"").unwrap();
        let paths = crate::segment_files::SegmentPaths::new(dir.path(), 0);
        let handle = Arc::new(crate::segment::OpenSegment::open_for_test(&paths));
        let flusher = Arc::new(Flusher::new(0));
        let end = Arc::new(AtomicI64::new(0));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // In lockstep: a released waiter does not append again until everyone is released, so
        // no fresh appender can rescue waiters that were left without a leader.
        let barrier = Arc::new(std::sync::Barrier::new(16));
        for _ in 0..16 {
            let (flusher, end, handle, done) = (flusher.clone(), end.clone(), handle.clone(), done_tx.clone());
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    barrier.wait();
                    let offset = end.fetch_add(1, Ordering::SeqCst) + 1;
                    let target = || {
                        std::thread::sleep(std::time::Duration::from_micros(300));
                        Ok(SyncTarget {
                            end_offset: end.load(Ordering::SeqCst),
                            rolled: Vec::new(),
                            active: handle.clone(),
                            dir: std::path::PathBuf::new(),
                        })
                    };
                    assert!(flusher.sync_to(offset, target).is_ok());
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..16 {
            done_rx.recv_timeout(std::time::Duration::from_secs(30)).expect("a durability waiter was never released");
        }
        assert_eq!(flusher.durable_offset(), 16 * 100);
        assert!(flusher.fsync_count() < 16 * 100, "waiters should share fsyncs");
    }
}
