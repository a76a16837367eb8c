//! Property test: a partition log against a simple in-memory model. Whatever is appended is
//! read back byte-identical and in order, across segment rolls, index-full rolls, truncations,
//! record deletions, and clean and unclean reopens; offset and timestamp lookups agree.

use std::sync::Arc;

use proptest::prelude::*;
use sluice_storage::{
    Error, HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatch, RecordBatchBuilder,
};

#[derive(Clone, Debug)]
enum Op {
    Append { records: Vec<(i64, usize)> },
    Read { at: f64, max_bytes: usize },
    Truncate { at: f64 },
    DeleteRecords { at: f64 },
    Reopen { clean: bool },
    TimestampLookup { ts: i64 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((0i64..10_000, 0usize..200), 1..6).prop_map(|records| Op::Append { records }),
        3 => (0.0..1.0f64, 1usize..2_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (0.0..1.0f64).prop_map(|at| Op::Truncate { at }),
        1 => (0.0..1.0f64).prop_map(|at| Op::DeleteRecords { at }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        2 => (0i64..11_000).prop_map(|ts| Op::TimestampLookup { ts }),
    ]
}

struct ModelBatch {
    base_offset: i64,
    /// The batch as the log must store it: the producer's bytes with offset and epoch stamped.
    stored: Vec<u8>,
    timestamps: Vec<i64>,
}

impl ModelBatch {
    fn last_offset(&self) -> i64 {
        self.base_offset + self.timestamps.len() as i64 - 1
    }
}

#[derive(Default)]
struct Model {
    batches: Vec<ModelBatch>,
    log_start_offset: i64,
    log_end_offset: i64,
    records_deleted: bool,
}

impl Model {
    fn batch_containing(&self, offset: i64) -> Option<usize> {
        self.batches.iter().position(|b| b.last_offset() >= offset)
    }

    fn offset_at(&self, fraction: f64) -> i64 {
        let span = self.log_end_offset - self.log_start_offset;
        self.log_start_offset + (span as f64 * fraction) as i64
    }
}

const EPOCH: i32 = 3;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1_500,
        index_interval_bytes: 200,
        // Room for 12 offset entries and 8 time entries: index-full rolls happen too.
        segment_index_bytes: 96,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn stamp(batch: &[u8], base_offset: i64) -> Vec<u8> {
    let mut stored = batch.to_vec();
    stored[..8].copy_from_slice(&base_offset.to_be_bytes());
    stored[12..16].copy_from_slice(&EPOCH.to_be_bytes());
    stored
}

fn check_read(log: &PartitionLog, model: &Model, offset: i64, max_bytes: usize) -> Result<(), TestCaseError> {
    let result = log.read(Offset(offset), max_bytes, Offset(model.log_end_offset)).unwrap();
    prop_assert_eq!(result.log_end_offset, Offset(model.log_end_offset));
    prop_assert_eq!(result.log_start_offset, Offset(model.log_start_offset));
    let batches: Vec<RecordBatch> =
        RecordBatch::iter_batches(result.records.clone()).collect::<Result<_, _>>().unwrap();
    let Some(first) = model.batch_containing(offset) else {
        prop_assert!(batches.is_empty(), "read past the end returned data");
        return Ok(());
    };
    prop_assert!(!batches.is_empty(), "no batch returned for offset {}", offset);
    prop_assert!(batches.len() == 1 || result.records.len() <= max_bytes, "read returned more than max_bytes");
    for (i, batch) in batches.iter().enumerate() {
        let expected = &model.batches[first + i];
        prop_assert_eq!(batch.as_bytes().as_ref(), &expected.stored[..], "batch {} differs", expected.base_offset);
    }
    Ok(())
}

/// Reads the whole log in order, following returned batches, and compares with the model.
fn check_full_scan(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
    let mut offset = model.log_start_offset;
    let mut index = model.batch_containing(offset).unwrap_or(model.batches.len());
    for _ in 0..10_000 {
        if offset >= model.log_end_offset {
            break;
        }
        let result = log.read(Offset(offset), 700, Offset(model.log_end_offset)).unwrap();
        let batches: Vec<RecordBatch> = RecordBatch::iter_batches(result.records).collect::<Result<_, _>>().unwrap();
        prop_assert!(!batches.is_empty(), "scan stalled at {}", offset);
        for batch in batches {
            prop_assert_eq!(batch.as_bytes().as_ref(), &model.batches[index].stored[..]);
            index += 1;
            offset = batch.last_offset() + 1;
        }
    }
    prop_assert_eq!(index, model.batches.len());
    Ok(())
}

fn expected_timestamp_lookup(model: &Model, ts: i64) -> Option<(i64, i64)> {
    model
        .batches
        .iter()
        .flat_map(|b| b.timestamps.iter().enumerate().map(move |(i, t)| (b.base_offset + i as i64, *t)))
        .find(|(offset, t)| *offset >= model.log_start_offset && *t >= ts)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let cache = HandleCache::new(4);
    let open = |cache: &Arc<HandleCache>| PartitionLog::open(dir.path(), config(), cache.clone()).unwrap();
    let mut log = open(&cache);
    let mut model = Model::default();
    let mut now = 1_000_000;

    for op in ops {
        now += 1;
        match op {
            Op::Append { records } => {
                let mut builder = RecordBatchBuilder::new(records[0].0);
                for (i, (ts, size)) in records.iter().enumerate() {
                    let value = vec![(model.log_end_offset as u8).wrapping_add(i as u8); *size];
                    builder.push(*ts, Some(format!("key-{i}").as_bytes()), Some(&value), &[(b"h", Some(b"v"))]);
                }
                let batch = builder.build().unwrap();
                let outcome = log.append(&batch, LeaderEpoch(EPOCH), now).unwrap();
                prop_assert_eq!(outcome.base_offset, Offset(model.log_end_offset));
                model.batches.push(ModelBatch {
                    base_offset: model.log_end_offset,
                    stored: stamp(&batch, model.log_end_offset),
                    timestamps: records.iter().map(|r| r.0).collect(),
                });
                model.log_end_offset += records.len() as i64;
                log.set_high_watermark(Offset(model.log_end_offset));
            }
            Op::Read { at, max_bytes } => check_read(&log, &model, model.offset_at(at), max_bytes)?,
            Op::Truncate { at } => {
                let offset = model.offset_at(at);
                let end = log.truncate_to(Offset(offset)).unwrap();
                if offset <= model.log_start_offset {
                    model.batches.clear();
                    model.log_start_offset = offset;
                    model.log_end_offset = offset;
                } else if let Some(i) = model.batch_containing(offset) {
                    model.log_end_offset = model.batches[i].base_offset;
                    model.batches.truncate(i);
                    if model.log_end_offset < model.log_start_offset {
                        model.batches.clear();
                        model.log_end_offset = model.log_start_offset;
                    }
                }
                prop_assert_eq!(end, Offset(model.log_end_offset));
                log.set_high_watermark(Offset(model.log_end_offset));
            }
            Op::DeleteRecords { at } => {
                let offset = model.offset_at(at);
                log.delete_records_before(Offset(offset)).unwrap();
                if offset > model.log_start_offset {
                    model.log_start_offset = offset;
                    model.records_deleted = true;
                }
                let below = model.log_start_offset - 1;
                if below >= 0 {
                    let refused = log.read(Offset(below), 100, Offset(model.log_end_offset));
                    prop_assert!(
                        matches!(refused, Err(Error::OffsetOutOfRange { .. })),
                        "read below the log start was not refused"
                    );
                }
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().unwrap();
                } else {
                    drop(log);
                }
                log = open(&cache);
                log.set_high_watermark(Offset(model.log_end_offset));
                prop_assert_eq!(log.log_end_offset(), Offset(model.log_end_offset));
                prop_assert_eq!(log.log_start_offset(), Offset(model.log_start_offset));
                log.verify().unwrap();
            }
            Op::TimestampLookup { ts } => {
                let found = log.offset_for_timestamp(ts, Offset(model.log_end_offset)).unwrap();
                prop_assert_eq!(
                    found.map(|(o, t)| (o.0, t)),
                    expected_timestamp_lookup(&model, ts),
                    "lookup of {}",
                    ts
                );
            }
        }
        prop_assert_eq!(log.log_end_offset(), Offset(model.log_end_offset));
    }
    check_full_scan(&log, &model)?;
    if !model.records_deleted {
        let max = model.batches.iter().flat_map(|b| b.timestamps.iter().copied()).max();
        let expected = max.map(|max| (expected_timestamp_lookup(&model, max).unwrap().0, max));
        prop_assert_eq!(log.max_timestamp().map(|(o, t)| (o.0, t)), expected);
    }
    drop(log);
    let reopened = open(&cache);
    reopened.set_high_watermark(Offset(model.log_end_offset));
    check_full_scan(&reopened, &model)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op_strategy(), 1..80)) {
        run(ops)?;
    }
}

#[test]
fn reading_hands_out_slices_of_the_mapping_not_copies() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default(), HandleCache::new(8)).unwrap();
    let mut builder = RecordBatchBuilder::new(0);
    builder.push(0, None, Some(&[7u8; 4096]), &[]);
    log.append(&builder.build().unwrap(), LeaderEpoch(0), 0).unwrap();
    let a = log.read(Offset(0), 1 << 20, Offset(1)).unwrap().records;
    let b = log.read(Offset(0), 1 << 20, Offset(1)).unwrap().records;
    assert!(!a.is_empty());
    assert_eq!(a.as_ptr(), b.as_ptr(), "two reads of the same batch should share the mapped bytes");
}
