//! The Restoring state: a job is rebuilt from its last checkpoint and nothing else. The
//! steps, in this order: its topics exist (changelogs decide the key groups); opening the
//! sink fences any earlier instance and completes or aborts its last transaction; keyed
//! state is read back from the changelogs, read_committed; a checkpoint that cannot be
//! right (state without offsets, another definition's) is refused; sources resume at the
//! committed offsets with the watermark state their metadata holds.

use sluice_storage::Offset;

use crate::dataflow::{Dataflow, KeyGroup};
use crate::error::{Error, Result};
use crate::operators::watermark::{Watermarks, NO_WATERMARK};
use crate::runtime::changelog;
use crate::runtime::checkpoint::{self, JobCounters, PartitionCheckpoint};
use crate::runtime::context::JobContext;
use crate::runtime::running::RunningJob;
use crate::runtime::sink::TransactionalSink;
use crate::runtime::source::{Isolation, LogSource};
use crate::runtime::tasks::SourceTask;

/// The transaction timeout the job's producer id is registered with.
const TRANSACTION_TIMEOUT_MS: i32 = 60_000;

/// Per input partition, its committed offset and the checkpoint in its metadata.
type Committed = Vec<(Option<i64>, Option<PartitionCheckpoint>)>;

impl<D: Dataflow> RunningJob<D> {
    /// Rebuilds the job from its last checkpoint, fencing any earlier instance.
    pub(crate) fn restore(context: &JobContext<D>) -> Result<RunningJob<D>> {
        let spec = &context.spec;
        let partitions =
            context.client.partition_count(&spec.input).ok_or_else(|| Error::NoInputTopic(spec.input.clone()))?;
        let (changelogs, groups) = ensure_topics(context, partitions)?;
        // Opening the sink fences the previous instance and completes or aborts its last
        // transaction, so what is read below is exactly the last checkpoint.
        let sink = TransactionalSink::open(&context.client, &spec.transactional_id(), TRANSACTION_TIMEOUT_MS)?;
        let (mut key_groups, records) = restore_groups(context, &changelogs, groups)?;
        let committed = checkpoint::committed(&context.client, spec, partitions);
        check_checkpoint(context, &committed, &records)?;
        let now = context.clock.now_ms();
        let (sources, watermarks, counters) = resume_sources(context, &committed, now)?;
        let watermark = watermarks.current();
        if watermark != NO_WATERMARK {
            for group in &mut key_groups {
                group.restore_watermark(watermark);
            }
        }
        Ok(RunningJob {
            sink,
            sources,
            groups: key_groups.into_iter().map(Some).collect(),
            watermarks,
            changelogs,
            counters,
            last_commit_ms: now,
            dirty: false,
        })
    }
}

/// Creates what is missing of the job's changelogs and output topics; returns the
/// changelog topics, by operator, and the key groups (the changelogs' partitions: one per
/// input partition when they are first made, whatever the input has since).
fn ensure_topics<D: Dataflow>(context: &JobContext<D>, partitions: i32) -> Result<(Vec<String>, usize)> {
    let (client, spec) = (&context.client, &context.spec);
    let operators = context.dataflow.operators();
    let changelogs: Vec<String> = operators.iter().map(|op| changelog::topic(&spec.name, op)).collect();
    let mut groups = partitions;
    for topic in &changelogs {
        groups = changelog::ensure(client, topic, groups)?;
    }
    for topic in context.dataflow.output_topics() {
        if let Err(source) = client.ensure_topic(&topic, partitions, spec.output_topic_configs()) {
            return Err(Error::CreateTopic { role: "output", topic, source });
        }
    }
    Ok((changelogs, groups as usize))
}

/// Fresh key groups with the committed state of every changelog applied, and the records
/// each group's changelogs hold.
fn restore_groups<D: Dataflow>(
    context: &JobContext<D>,
    changelogs: &[String],
    groups: usize,
) -> Result<(Vec<D::Group>, Vec<u64>)> {
    let mut key_groups: Vec<D::Group> = (0..groups).map(|_| context.dataflow.new_group()).collect();
    let mut records = vec![0u64; groups];
    for (operator, topic) in changelogs.iter().enumerate() {
        for (group, state) in key_groups.iter_mut().enumerate() {
            let restored = changelog::read(&context.client, topic, group as i32)?;
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
    Ok((key_groups, records))
}

/// Refuses state without positions (reading the input again would count it twice) and a
/// checkpoint made by another definition.
fn check_checkpoint<D>(context: &JobContext<D>, committed: &Committed, records: &[u64]) -> Result<()> {
    let spec = &context.spec;
    if committed.iter().all(|(offset, _)| offset.is_none()) && records.iter().any(|&r| r > 0) {
        return Err(Error::StateWithoutOffsets { job: spec.name.clone(), group: spec.group() });
    }
    if let Some(other) = committed.iter().filter_map(|(_, cp)| cp.as_ref()?.definition.as_ref()).next() {
        if !spec.fingerprint.is_empty() && *other != spec.fingerprint {
            return Err(Error::CheckpointOfAnotherDefinition(spec.name.clone()));
        }
    }
    Ok(())
}

/// A source task per input partition at its committed offset (the log start without one),
/// with the watermarks and the job's counters as the checkpoint left them.
fn resume_sources<D: Dataflow>(
    context: &JobContext<D>,
    committed: &Committed,
    now: i64,
) -> Result<(Vec<SourceTask>, Watermarks, JobCounters)> {
    let spec = &context.spec;
    let mut watermarks = Watermarks::new(committed.len(), spec.watermark_bound_ms, spec.idle_timeout_ms);
    let mut sources = Vec::new();
    let mut counters = JobCounters { records_out: 0, late: vec![0; context.dataflow.operators().len()] };
    for (index, (offset, checkpoint)) in committed.iter().enumerate() {
        let reader = context.client.reader(&spec.input, index as i32)?;
        let start = offset.unwrap_or(reader.log_start_offset().0);
        sources.push(SourceTask {
            partition: index,
            source: LogSource::new(reader, Offset(start), Isolation::ReadCommitted),
            committed: start,
            checkpoint: checkpoint.clone().unwrap_or_default(),
        });
        let Some(cp) = checkpoint else { continue };
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
    Ok((sources, watermarks, counters))
}
