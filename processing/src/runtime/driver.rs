//! The job driver: a thread per job that moves it through its states, the one place they
//! and their transitions are:
//!
//! ```text
//! Starting -> Restoring -> Running -> Stopped
//!                 ^           |
//!                 +- Failed <-+   (after a backoff, doubling up to 30 s)
//! ```
//!
//! Restoring rebuilds the job from its last checkpoint (`restore`); Running drives rounds
//! and, every commit interval, a checkpoint (`running`). A failure (a refused commit, a
//! panicking task, a fenced transaction) drops everything since the last checkpoint: the
//! restored state and offsets are exactly those of the last commit, so outputs are
//! exactly-once. Stopping commits what the job has done first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_broker::InProcessClient;

use crate::dataflow::{Dataflow, KeyGroup};
use crate::error::{Error, Result};
use crate::runtime::context::{JobContext, RunSpec};
use crate::runtime::pool::WorkerPool;
use crate::runtime::running::RunningJob;
use crate::runtime::status::{JobState, JobStatus, PartitionStatus};

/// How long a round that found nothing waits before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(5);
/// A job commits its offsets at least this often even when idle, so that the offsets
/// retention (`offsets.retention.minutes`) never expires a quiet job's position.
const KEEPALIVE_COMMIT_MS: i64 = 60 * 60 * 1000;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Output and state records held for the next commit: past this a checkpoint comes early,
/// so catching up on a backlog does not buffer the whole backlog's output in memory.
const MAX_PENDING_RECORDS: usize = 200_000;

/// A running job as its host sees it.
pub struct JobHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub status: Arc<Mutex<JobStatus>>,
}

impl JobHandle {
    /// Asks the job to stop (it commits what it has) and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// Starts a job's driver thread; the job reads the broker's clock (`client.clock()`).
pub fn spawn<D: Dataflow>(
    client: InProcessClient,
    pool: Arc<WorkerPool>,
    spec: RunSpec,
    kind: &str,
    dataflow: D,
) -> JobHandle {
    let status = Arc::new(Mutex::new(JobStatus::new(&spec.name, kind, &spec.input)));
    let stop = Arc::new(AtomicBool::new(false));
    let clock = client.clock();
    let context = JobContext { spec, dataflow: Arc::new(dataflow), client, pool, clock };
    let driver = Driver { context, status: status.clone(), stop: stop.clone() };
    let thread = std::thread::Builder::new()
        .name(format!("sluice-job-{}", driver.context.spec.name))
        .spawn(move || driver.run())
        .expect("spawn a job driver thread");
    JobHandle { stop, thread: Some(thread), status }
}

struct Driver<D> {
    context: JobContext<D>,
    status: Arc<Mutex<JobStatus>>,
    stop: Arc<AtomicBool>,
}

impl<D: Dataflow> Driver<D> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn set_state(&self, state: JobState, error: Option<String>) {
        let mut status = self.status.lock();
        status.state = state;
        status.error = error;
    }

    /// The state machine's loop: restore and run until stopped; after a failure, back off
    /// and restore again from the last checkpoint.
    fn run(self) {
        let clock = self.context.clock.clone();
        let mut backoff = FIRST_BACKOFF;
        while !self.stopping() {
            self.set_state(JobState::Restoring, None);
            let started = clock.now().instant;
            // A panic in the driver's own steps is a failure like any other: the job
            // restarts from its checkpoint rather than dying with its status stuck.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.restore().and_then(|job| self.run_rounds(job))
            }))
            .unwrap_or(Err(Error::Panicked("the job's driver")));
            let Err(error) = result else { break };
            // A job that ran a good while before failing starts its backoff afresh.
            if clock.now().instant.saturating_duration_since(started) > MAX_BACKOFF * 2 {
                backoff = FIRST_BACKOFF;
            }
            self.fail(error);
            let until = clock.now().instant + backoff;
            while clock.now().instant < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(20));
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.set_state(JobState::Stopped, None);
    }

    fn fail(&self, error: Error) {
        tracing::warn!(job = %self.context.spec.name, %error, "job failed; restarting from its last checkpoint");
        let mut status = self.status.lock();
        status.state = JobState::Failed;
        status.error = Some(error.to_string());
        status.restarts += 1;
    }

    /// Restoring: the job from its last checkpoint.
    fn restore(&self) -> Result<RunningJob<D>> {
        let job = RunningJob::restore(&self.context)?;
        let mut status = self.status.lock();
        status.key_groups = job.groups.len();
        status.watermark = job.watermark();
        drop(status);
        Ok(job)
    }

    /// Running: rounds until stopped (then a last checkpoint) or failed.
    fn run_rounds(&self, mut job: RunningJob<D>) -> Result<()> {
        self.set_state(JobState::Running, None);
        let interval_ms = self.context.spec.commit_interval_ms as i64;
        loop {
            let stopping = self.stopping();
            let now = self.context.clock.now_ms();
            let due = stopping
                || (job.dirty && now - job.last_commit_ms >= interval_ms)
                || job.sink.pending() > MAX_PENDING_RECORDS
                || now - job.last_commit_ms >= KEEPALIVE_COMMIT_MS;
            let read = job.round(&self.context, due, now)?;
            if due {
                let commit = job.checkpoint(&self.context)?;
                let mut status = self.status.lock();
                status.commits += 1;
                status.last_commit = Some(commit);
            }
            self.publish(&job);
            if stopping {
                return Ok(());
            }
            if read == 0 {
                std::thread::sleep(IDLE_WAIT);
            }
        }
    }

    /// Copies the job's figures into its status (a short lock, once per round).
    fn publish(&self, job: &RunningJob<D>) {
        let partitions: Vec<PartitionStatus> = job
            .sources
            .iter()
            .map(|task| {
                let log_end = task.source.reader().last_stable_offset().0;
                let offset = task.source.position().0;
                PartitionStatus {
                    partition: task.partition as i32,
                    offset,
                    committed_offset: task.committed,
                    log_end_offset: log_end,
                    lag: (log_end - offset).max(0),
                }
            })
            .collect();
        let state_entries = job.groups.iter().flatten().map(|g| g.state_entries() as u64).sum();
        let names = self.context.dataflow.operators();
        let mut status = self.status.lock();
        status.watermark = job.watermark();
        status.records_in = job.sources.iter().map(|t| t.checkpoint.records_in).sum();
        status.malformed_records = job.sources.iter().map(|t| t.checkpoint.malformed).sum();
        status.absurd_timestamps = job.sources.iter().map(|t| t.checkpoint.absurd).sum();
        status.records_out = job.counters.records_out;
        status.late_records = names.iter().map(|n| n.to_string()).zip(job.counters.late.iter().copied()).collect();
        status.state_entries = state_entries;
        status.partitions = partitions;
    }
}
