//! A job in its Running state: rounds of tasks on the worker pool (one source task per
//! input partition reads, parses and routes; then one task per key group applies its
//! events, fires what the job's watermark completes and, at a checkpoint, reports its state
//! changes), each round's outputs and state changes sent to the open transaction, and the
//! commit that makes them visible together with the source offsets.
//!
//! Invariant: the job's watermark never goes back from one round to the next.

use std::sync::Arc;

use sluice_broker::in_process::OffsetCommit;

use crate::dataflow::EventTime;
use crate::dataflow::{Dataflow, OutputRecord, StateRecord};
use crate::error::{Error, Result};
use crate::operators::watermark::{Watermarks, NO_WATERMARK};
use crate::runtime::checkpoint::JobCounters;
use crate::runtime::context::JobContext;
use crate::runtime::sink::{kafka_partition, TransactionalSink};
use crate::runtime::status::CommitStatus;
use crate::runtime::tasks::{GroupDone, GroupWork, Inbound, SourceTask};

/// A restored job between rounds.
pub(crate) struct RunningJob<D: Dataflow> {
    pub(crate) sink: TransactionalSink,
    pub(crate) sources: Vec<SourceTask>,
    /// Each group is taken out for its task during a round and put back after it.
    pub(crate) groups: Vec<Option<D::Group>>,
    pub(crate) watermarks: Watermarks,
    pub(crate) changelogs: Vec<String>,
    pub(crate) counters: JobCounters,
    pub(crate) last_commit_ms: i64,
    /// Something was read or produced since the last commit.
    pub(crate) dirty: bool,
}

impl<D: Dataflow> RunningJob<D> {
    /// The job's watermark (`None` before the first).
    pub(crate) fn watermark(&self) -> Option<EventTime> {
        let watermark = self.watermarks.current();
        (watermark != NO_WATERMARK).then_some(watermark)
    }

    /// One round at processing time `now`: sources, then key groups (reporting their state
    /// changes when `checkpoint`), then the results and changes to the sink. Returns the
    /// records read.
    pub(crate) fn round(&mut self, context: &JobContext<D>, checkpoint: bool, now: i64) -> Result<u64> {
        let (inbound, read) = self.run_sources(context, now)?;
        self.dirty |= read > 0;
        let before = self.watermarks.current();
        let watermark = self.watermarks.advance(now);
        debug_assert!(watermark >= before, "the job's watermark went back from {before} to {watermark}");
        let done = self.run_groups(context, inbound, watermark, checkpoint)?;
        let mut results = Vec::new();
        let mut state = Vec::new();
        for group in done {
            if let Some(error) = group.state_error {
                return Err(Error::CheckpointState { group: group.index, source: Box::new(error) });
            }
            results.extend(group.results);
            for (total, count) in self.counters.late.iter_mut().zip(group.late) {
                *total += count;
            }
            state.push((group.index, group.state));
            self.groups[group.index] = Some(group.group);
        }
        let mut records: Vec<OutputRecord> = Vec::new();
        context.dataflow.finish(results, &mut records);
        self.counters.records_out += records.len() as u64;
        self.dirty |= !records.is_empty();
        self.send_outputs(context, records);
        for (group, changes) in state {
            self.send_state(group, changes, now);
        }
        Ok(read)
    }

    /// Every source task reads and routes its partition's next records; returns the events
    /// for each key group and the records read.
    fn run_sources(&mut self, context: &JobContext<D>, now: i64) -> Result<(Inbound<D>, u64)> {
        let groups = self.groups.len();
        let dataflow = context.dataflow.clone();
        let sources = std::mem::take(&mut self.sources);
        let polled = context.pool.run_all(sources, move |mut task: SourceTask| {
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
                self.watermarks.observe(task.partition, max_ts, now);
            }
            for (group, events) in polled.routed.into_iter().enumerate() {
                if !events.is_empty() {
                    inbound[group].push(events);
                }
            }
            self.sources.push(task);
        }
        Ok((inbound, read))
    }

    /// Every key group applies its events, fires what the watermark completes and, at a
    /// checkpoint, reports its state changes.
    fn run_groups(
        &mut self,
        context: &JobContext<D>,
        inbound: Inbound<D>,
        watermark: EventTime,
        checkpoint: bool,
    ) -> Result<Vec<GroupDone<D>>> {
        let work: Vec<GroupWork<D>> = self
            .groups
            .iter_mut()
            .zip(inbound)
            .enumerate()
            .map(|(index, (group, inbound))| {
                let group = group.take().expect("every key group is home between rounds");
                GroupWork { index, group, inbound }
            })
            .collect();
        let operators = context.dataflow.operators().len();
        let done = context.pool.run_all(work, move |work: GroupWork<D>| work.run(operators, watermark, checkpoint));
        done.into_iter().map(|d| d.ok_or(Error::Panicked("a key group task"))).collect()
    }

    /// Sends a round's outputs, each to the partition Kafka's partitioner gives its key.
    fn send_outputs(&mut self, context: &JobContext<D>, records: Vec<OutputRecord>) {
        // One metadata lookup per topic and round, not per record.
        let mut partition_counts: Vec<(Arc<str>, i32)> = Vec::new();
        for record in records {
            let partitions = match partition_counts.iter().find(|(topic, _)| *topic == record.topic) {
                Some((_, count)) => *count,
                None => {
                    let count = context.client.partition_count(&record.topic).unwrap_or(1);
                    partition_counts.push((record.topic.clone(), count));
                    count
                }
            };
            let partition = kafka_partition(&record.key, partitions);
            self.sink.send(&record.topic, partition, Some(&record.key), Some(&record.value), record.timestamp_ms);
        }
    }

    /// Queues a key group's state changes for its changelogs (compacted topics: the broker's
    /// cleaner drops what later changes supersede).
    fn send_state(&mut self, group: usize, changes: Vec<StateRecord>, now: i64) {
        for change in changes {
            let topic = &self.changelogs[change.operator];
            self.sink.send(topic, group as i32, Some(&change.key), change.value.as_deref(), now);
        }
    }

    /// Commits the outputs, state changes and source offsets sent since the last commit, in
    /// one transaction.
    pub(crate) fn checkpoint(&mut self, context: &JobContext<D>) -> Result<CommitStatus> {
        let offsets = self.offset_commits(context);
        self.sink.commit(&context.spec.group(), &offsets)?;
        for task in &mut self.sources {
            task.committed = task.source.position().0;
        }
        self.last_commit_ms = context.clock.now_ms();
        self.dirty = false;
        Ok(CommitStatus {
            at_ms: self.last_commit_ms,
            watermark: self.watermark(),
            records_out: self.counters.records_out,
        })
    }

    /// Each source's position, with the watermark state and counters in its metadata.
    fn offset_commits(&self, context: &JobContext<D>) -> Vec<OffsetCommit> {
        let spec = &context.spec;
        let watermark = self.watermark();
        let definition = (!spec.fingerprint.is_empty()).then(|| spec.fingerprint.clone());
        self.sources
            .iter()
            .map(|task| {
                let mut checkpoint = task.checkpoint.clone();
                checkpoint.max_ts = self.watermarks.max_event_time(task.partition);
                checkpoint.watermark = watermark;
                checkpoint.definition = definition.clone();
                if task.partition == 0 {
                    checkpoint.job = Some(self.counters.clone());
                }
                OffsetCommit {
                    topic: spec.input.clone(),
                    partition: task.partition as i32,
                    offset: task.source.position().0,
                    leader_epoch: -1,
                    metadata: serde_json::to_string(&checkpoint).ok(),
                }
            })
            .collect()
    }
}
