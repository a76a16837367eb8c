//! Runs one job: a driver thread that moves the job through its states and, while it runs,
//! drives rounds of tasks on the shared worker pool: one source task per input partition
//! (read in-process, parse, route by key), then one task per key group (keyed state,
//! windows fired at the job's watermark), then the round's results go to the sink. Every
//! commit interval a checkpoint writes, in one transaction, the outputs since the last one,
//! the changed keyed state (changelogs) and the source offsets with the watermark state.
//!
//! States: Starting -> Restoring -> Running -> (Stopped | Failed). A failure (a refused
//! commit, a panicking task, a fenced transaction) drops everything since the last
//! checkpoint and goes back to Restoring after a backoff: the restored state and offsets
//! are exactly those of the last commit, so outputs are exactly-once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_broker::clock::Clock;
use sluice_broker::group::OffsetCommit;
use sluice_broker::InProcessClient;
use sluice_storage::Offset;

use crate::dataflow::{Dataflow, KeyGroup, OutputRecord, StateRecord};
use crate::error::{Error, Result};
use crate::operators::watermark::{EventTime, Watermarks, NO_WATERMARK};
use changelog::Growth;
use sink::kafka_partition;

pub(crate) mod changelog;
pub(crate) mod pool;
pub(crate) mod sink;
pub(crate) mod source;
mod status;
mod tasks;

pub use changelog::REWRITE_SLACK_RECORDS;
pub use pool::WorkerPool;
pub use sink::{SinkError, TransactionalSink};
pub use source::{Isolation, LogSource};
pub use status::{CommitStatus, JobState, JobStatus, PartitionStatus};
use tasks::{GroupDone, GroupWork, Inbound, SourceTask};

/// What a job's runtime needs from its definition.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub name: String,
    pub input: String,
    pub commit_interval_ms: u64,
    pub watermark_bound_ms: i64,
    pub idle_timeout_ms: i64,
    /// Changelog records a key group may write beyond twice its live state before its
    /// changelogs are rewritten ([`changelog::REWRITE_SLACK_RECORDS`]).
    pub changelog_slack_records: u64,
    /// Identifies the job's definition; a checkpoint made by another one is refused (empty:
    /// not checked).
    pub fingerprint: String,
}

impl RunSpec {
    pub fn transactional_id(&self) -> String {
        format!("sluice-job-{}", self.name)
    }

    /// The consumer group whose committed offsets are the job's source positions (so
    /// `sluice groups describe` shows its lag like any consumer's).
    pub fn group(&self) -> String {
        format!("sluice-job-{}", self.name)
    }
}

/// Bytes read from one partition per round: small enough that a round stays short (the
/// watermark and the stop flag are looked at between rounds), large enough to amortise it.
const ROUND_BYTES: usize = 512 * 1024;
/// How long a round that found nothing waits before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(5);
/// A job commits its offsets at least this often even when idle, so that the offsets
/// retention (`offsets.retention.minutes`) never expires a quiet job's position.
const KEEPALIVE_COMMIT_MS: i64 = 60 * 60 * 1000;
/// The transaction timeout the job's producer id is registered with.
const TRANSACTION_TIMEOUT_MS: i32 = 60_000;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Output and state records held for the next commit: past this a checkpoint comes early,
/// so catching up on a backlog does not buffer the whole backlog's output in memory.
const MAX_PENDING_RECORDS: usize = 200_000;

/// Counters carried in the checkpoint (the offset commit metadata of each partition), so
/// that a restarted job reports what its committed outputs reflect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PartitionCheckpoint {
    max_ts: Option<EventTime>,
    watermark: Option<EventTime>,
    records_in: u64,
    malformed: u64,
    absurd: u64,
    /// Job-wide, on partition 0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<JobCounters>,
    /// The fingerprint of the definition that made this checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    definition: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct JobCounters {
    records_out: u64,
    late: Vec<u64>,
}

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

/// Starts a job's driver thread.
pub fn spawn<D: Dataflow>(
    client: InProcessClient,
    pool: Arc<WorkerPool>,
    spec: RunSpec,
    kind: &str,
    dataflow: D,
) -> JobHandle {
    let status = Arc::new(Mutex::new(JobStatus {
        name: spec.name.clone(),
        kind: kind.to_string(),
        state: JobState::Starting,
        error: None,
        input: spec.input.clone(),
        key_groups: 0,
        watermark: None,
        records_in: 0,
        records_out: 0,
        malformed_records: 0,
        absurd_timestamps: 0,
        late_records: Default::default(),
        state_entries: 0,
        partitions: Vec::new(),
        last_commit: None,
        commits: 0,
        restarts: 0,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let clock = client.clock();
    let dataflow = Arc::new(dataflow);
    let driver = Driver { client, clock, pool, spec, dataflow, status: status.clone(), stop: stop.clone() };
    let thread = std::thread::Builder::new()
        .name(format!("sluice-job-{}", driver.spec.name))
        .spawn(move || driver.run())
        .expect("spawn a job driver thread");
    JobHandle { stop, thread: Some(thread), status }
}

struct Driver<D: Dataflow> {
    client: InProcessClient,
    /// The broker's clock: every time the driver acts on (commit intervals, idle partitions,
    /// backoff) is read from it, so tests can drive it by hand.
    clock: Arc<dyn Clock>,
    pool: Arc<WorkerPool>,
    spec: RunSpec,
    dataflow: Arc<D>,
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
        const FIRST_BACKOFF: Duration = Duration::from_millis(200);
        let mut backoff = FIRST_BACKOFF;
        while !self.stopping() {
            self.set_state(JobState::Restoring, None);
            let started = self.clock.now().instant;
            // A panic in the driver's own steps is a failure like any other: the job
            // restarts from its checkpoint rather than dying with its status stuck.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.restore().and_then(|job| self.run_rounds(job))
            }))
            .unwrap_or(Err(Error::Panicked("the job's driver")));
            match result {
                Ok(()) => break,
                Err(error) => {
                    // A job that ran a good while before failing starts its backoff afresh.
                    if self.clock.now().instant.saturating_duration_since(started) > MAX_BACKOFF * 2 {
                        backoff = FIRST_BACKOFF;
                    }
                    tracing::warn!(job = %self.spec.name, %error, "job failed; restarting from its last checkpoint");
                    {
                        let mut status = self.status.lock();
                        status.state = JobState::Failed;
                        status.error = Some(error.to_string());
                        status.restarts += 1;
                    }
                    let until = self.clock.now().instant + backoff;
                    while self.clock.now().instant < until && !self.stopping() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.set_state(JobState::Stopped, None);
    }

    /// Restoring: fences any earlier instance, then rebuilds keyed state from the
    /// changelogs and the source positions and watermarks from the committed offsets.
    fn restore(&self) -> Result<RunningJob<D>> {
        let client = &self.client;
        let partitions =
            client.partition_count(&self.spec.input).ok_or_else(|| Error::NoInputTopic(self.spec.input.clone()))?;
        let operators = self.dataflow.operators();
        let changelogs: Vec<String> = operators.iter().map(|op| changelog::topic(&self.spec.name, op)).collect();
        let mut groups = partitions;
        for topic in &changelogs {
            groups = changelog::ensure(client, topic, groups)?;
        }
        for topic in self.dataflow.output_topics() {
            if let Err(source) = client.ensure_topic(&topic, partitions, Default::default()) {
                return Err(Error::CreateTopic { role: "output", topic, source });
            }
        }
        // Opening the sink fences the previous instance and completes or aborts its last
        // transaction, so what is read below is exactly the last checkpoint.
        let sink = TransactionalSink::open(client, &self.spec.transactional_id(), TRANSACTION_TIMEOUT_MS)?;

        let groups = groups as usize;
        let mut key_groups: Vec<D::Group> = (0..groups).map(|_| self.dataflow.new_group()).collect();
        let mut records = vec![0u64; groups];
        for (operator, topic) in changelogs.iter().enumerate() {
            for (group, state) in key_groups.iter_mut().enumerate() {
                let restored = changelog::read(client, topic, group as i32)?;
                records[group] += restored.records;
                for (key, value) in &restored.entries {
                    state.restore(operator, key, value).map_err(|source| Error::RestoreState {
                        topic: topic.clone(),
                        group,
                        source: Box::new(source),
                    })?;
                }
            }
        }

        let committed = self.committed_offsets(partitions);
        if committed.iter().all(|(offset, _)| offset.is_none()) && records.iter().any(|&r| r > 0) {
            // State without positions: reading the input again would count it twice.
            return Err(Error::StateWithoutOffsets { job: self.spec.name.clone(), group: self.spec.group() });
        }
        if let Some(other) = committed.iter().filter_map(|(_, cp)| cp.as_ref()?.definition.as_ref()).next() {
            if !self.spec.fingerprint.is_empty() && *other != self.spec.fingerprint {
                return Err(Error::CheckpointOfAnotherDefinition(self.spec.name.clone()));
            }
        }
        let now = self.clock.now_ms();
        let mut watermarks =
            Watermarks::new(partitions as usize, self.spec.watermark_bound_ms, self.spec.idle_timeout_ms);
        let mut sources = Vec::new();
        let mut counters = Counters { late: vec![0; operators.len()], ..Counters::default() };
        for (index, (offset, checkpoint)) in committed.iter().enumerate() {
            let reader = client.reader(&self.spec.input, index as i32)?;
            let start = offset.unwrap_or(reader.log_start_offset().0);
            sources.push(SourceTask {
                partition: index,
                source: LogSource::new(reader, Offset(start), Isolation::ReadCommitted),
                committed: start,
                checkpoint: checkpoint.clone().unwrap_or_default(),
            });
            if let Some(cp) = checkpoint {
                if let Some(max_ts) = cp.max_ts {
                    watermarks.restore(index, max_ts, now);
                }
                if let Some(watermark) = cp.watermark {
                    watermarks.restore_current(watermark);
                }
                if let Some(job) = &cp.job {
                    counters.records_out = job.records_out;
                    for (total, late) in counters.late.iter_mut().zip(&job.late) {
                        *total = *late;
                    }
                }
            }
        }
        let watermark = watermarks.current();
        if watermark != NO_WATERMARK {
            for group in &mut key_groups {
                group.restore_watermark(watermark);
            }
        }
        {
            let mut status = self.status.lock();
            status.key_groups = groups;
            status.watermark = (watermark != NO_WATERMARK).then_some(watermark);
        }
        Ok(RunningJob {
            sink,
            sources,
            groups: key_groups.into_iter().map(Some).collect(),
            watermarks,
            changelogs,
            growth: Growth::new(records, self.spec.changelog_slack_records),
            pending_rewrites: Vec::new(),
            counters,
            last_commit_ms: now,
            dirty: false,
        })
    }

    /// (offset, checkpoint) per input partition from the job's committed offsets.
    fn committed_offsets(&self, partitions: i32) -> Vec<(Option<i64>, Option<PartitionCheckpoint>)> {
        self.client
            .committed_offsets(&self.spec.group(), &self.spec.input, partitions)
            .into_iter()
            .map(|committed| match committed {
                Some(committed) => (Some(committed.offset), serde_json::from_str(&committed.metadata).ok()),
                None => (None, None),
            })
            .collect()
    }

    /// Running: rounds until stopped (then a last checkpoint) or failed.
    fn run_rounds(&self, mut job: RunningJob<D>) -> Result<()> {
        self.set_state(JobState::Running, None);
        let interval_ms = self.spec.commit_interval_ms as i64;
        loop {
            let stopping = self.stopping();
            let now = self.clock.now_ms();
            let due = stopping
                || (job.dirty && now - job.last_commit_ms >= interval_ms)
                || job.sink.pending() > MAX_PENDING_RECORDS
                || now - job.last_commit_ms >= KEEPALIVE_COMMIT_MS;
            let read = self.round(&mut job, due, now)?;
            if due {
                self.checkpoint(&mut job)?;
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

    /// One round: sources, then key groups (checkpointing their state when `checkpoint`),
    /// then the results to the sink, at processing time `now`. Returns the records read.
    fn round(&self, job: &mut RunningJob<D>, checkpoint: bool, now: i64) -> Result<u64> {
        let (inbound, read) = self.run_sources(job, now)?;
        job.dirty |= read > 0;
        let watermark = job.watermarks.advance(now);
        let done = self.run_groups(job, inbound, watermark, checkpoint)?;
        let mut results = Vec::new();
        let mut state = Vec::new();
        for group in done {
            if let Some(error) = group.state_error {
                return Err(Error::CheckpointState { group: group.index, source: Box::new(error) });
            }
            results.extend(group.results);
            for (total, count) in job.counters.late.iter_mut().zip(group.late) {
                *total += count;
            }
            state.push((group.index, group.state, group.rewrite));
            job.groups[group.index] = Some(group.group);
        }
        let mut records: Vec<OutputRecord> = Vec::new();
        self.dataflow.finish(results, &mut records);
        job.counters.records_out += records.len() as u64;
        job.dirty |= !records.is_empty();
        // One metadata lookup per topic and round, not per record.
        let mut partition_counts: Vec<(Arc<str>, i32)> = Vec::new();
        for record in records {
            let partitions = match partition_counts.iter().find(|(topic, _)| *topic == record.topic) {
                Some((_, count)) => *count,
                None => {
                    let count = self.client.partition_count(&record.topic).unwrap_or(1);
                    partition_counts.push((record.topic.clone(), count));
                    count
                }
            };
            let partition = kafka_partition(&record.key, partitions);
            job.sink.send(&record.topic, partition, Some(&record.key), Some(&record.value), record.timestamp_ms);
        }
        for (group, changes, rewrite) in state {
            self.send_state(job, group, changes, rewrite, now);
        }
        Ok(read)
    }

    /// Every source task reads and routes its partition's next records; returns the events
    /// for each key group and the records read.
    fn run_sources(&self, job: &mut RunningJob<D>, now: i64) -> Result<(Inbound<D>, u64)> {
        let groups = job.groups.len();
        let dataflow = self.dataflow.clone();
        let sources = std::mem::take(&mut job.sources);
        let polled = self.pool.run_all(sources, move |mut task: SourceTask| {
            let result = task.poll(&*dataflow, groups, now);
            (task, result)
        });
        let mut inbound: Inbound<D> = (0..groups).map(|_| Vec::new()).collect();
        let mut read = 0;
        for result in polled {
            let (task, polled) = result.ok_or(Error::Panicked("a source task"))?;
            let polled = polled?;
            read += polled.records;
            if let Some(max_ts) = polled.max_ts {
                job.watermarks.observe(task.partition, max_ts, now);
            }
            for (group, events) in polled.routed.into_iter().enumerate() {
                if !events.is_empty() {
                    inbound[group].push(events);
                }
            }
            job.sources.push(task);
        }
        Ok((inbound, read))
    }

    /// Every key group applies its events, fires what the watermark completes and, at a
    /// checkpoint, reports its state changes.
    fn run_groups(
        &self,
        job: &mut RunningJob<D>,
        inbound: Inbound<D>,
        watermark: EventTime,
        checkpoint: bool,
    ) -> Result<Vec<GroupDone<D>>> {
        let work: Vec<GroupWork<D>> = job
            .groups
            .iter_mut()
            .zip(inbound)
            .enumerate()
            .map(|(index, (group, inbound))| {
                let group = group.take().expect("every key group is home between rounds");
                let rewrite = checkpoint && job.growth.needs_rewrite(index, group.state_entries());
                GroupWork { index, group, inbound, rewrite }
            })
            .collect();
        let operators = self.dataflow.operators().len();
        let done = self.pool.run_all(work, move |work: GroupWork<D>| work.run(operators, watermark, checkpoint));
        done.into_iter().map(|d| d.ok_or(Error::Panicked("a key group task"))).collect()
    }

    /// Queues a key group's state changes for its changelogs; a rewrite remembers where each
    /// changelog ended before it, to delete what it supersedes once committed.
    fn send_state(&self, job: &mut RunningJob<D>, group: usize, changes: Vec<StateRecord>, rewrite: bool, now: i64) {
        job.growth.wrote(group, changes.len() as u64, rewrite);
        if rewrite {
            let before: Vec<Offset> = job
                .changelogs
                .iter()
                .map(|t| self.client.reader(t, group as i32).map_or(Offset(0), |r| r.log_end_offset()))
                .collect();
            job.pending_rewrites.push((group, before));
        }
        for change in changes {
            let topic = &job.changelogs[change.operator];
            job.sink.send(topic, group as i32, Some(&change.key), change.value.as_deref(), now);
        }
    }

    /// Commits the outputs, state changes and source offsets sent since the last commit.
    fn checkpoint(&self, job: &mut RunningJob<D>) -> Result<()> {
        let watermark = job.watermarks.current();
        let watermark = (watermark != NO_WATERMARK).then_some(watermark);
        let offsets: Vec<OffsetCommit> = job
            .sources
            .iter()
            .map(|task| {
                let mut checkpoint = task.checkpoint.clone();
                checkpoint.max_ts = job.watermarks.max_event_time(task.partition);
                checkpoint.watermark = watermark;
                checkpoint.definition = (!self.spec.fingerprint.is_empty()).then(|| self.spec.fingerprint.clone());
                if task.partition == 0 {
                    checkpoint.job =
                        Some(JobCounters { records_out: job.counters.records_out, late: job.counters.late.clone() });
                }
                OffsetCommit {
                    topic: self.spec.input.clone(),
                    partition: task.partition as i32,
                    offset: task.source.position().0,
                    leader_epoch: -1,
                    metadata: serde_json::to_string(&checkpoint).ok(),
                }
            })
            .collect();
        job.sink.commit(&self.spec.group(), &offsets)?;
        for (group, before) in std::mem::take(&mut job.pending_rewrites) {
            changelog::truncate_before(&self.client, &job.changelogs, group, &before);
        }
        for task in &mut job.sources {
            task.committed = task.source.position().0;
        }
        job.last_commit_ms = self.clock.now_ms();
        job.dirty = false;
        let mut status = self.status.lock();
        status.commits += 1;
        status.last_commit =
            Some(CommitStatus { at_ms: job.last_commit_ms, watermark, records_out: job.counters.records_out });
        Ok(())
    }

    /// Copies the job's figures into its status (a short lock, once per round).
    fn publish(&self, job: &RunningJob<D>) {
        let watermark = job.watermarks.current();
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
        let names = self.dataflow.operators();
        let mut status = self.status.lock();
        status.watermark = (watermark != NO_WATERMARK).then_some(watermark);
        status.records_in = job.sources.iter().map(|t| t.checkpoint.records_in).sum();
        status.malformed_records = job.sources.iter().map(|t| t.checkpoint.malformed).sum();
        status.absurd_timestamps = job.sources.iter().map(|t| t.checkpoint.absurd).sum();
        status.records_out = job.counters.records_out;
        status.late_records = names.iter().map(|n| n.to_string()).zip(job.counters.late.iter().copied()).collect();
        status.state_entries = state_entries;
        status.partitions = partitions;
    }
}

#[derive(Default)]
struct Counters {
    records_out: u64,
    late: Vec<u64>,
}

/// A restored job between rounds.
struct RunningJob<D: Dataflow> {
    sink: TransactionalSink,
    sources: Vec<SourceTask>,
    /// Each group is taken out for its task during a round and put back after it.
    groups: Vec<Option<D::Group>>,
    watermarks: Watermarks,
    changelogs: Vec<String>,
    growth: Growth,
    counters: Counters,
    /// Groups whose changelogs this checkpoint rewrites, with where each partition ended
    /// before it.
    pending_rewrites: Vec<(usize, Vec<Offset>)>,
    last_commit_ms: i64,
    /// Something was read or produced since the last commit.
    dirty: bool,
}

#[cfg(test)]
mod tests;
