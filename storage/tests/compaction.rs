//! Log compaction against a model (a map of each key's latest value): whatever sequence of
//! appends, cleaning passes (with dedupe budgets small enough to need several passes) and
//! clean or unclean reopens, every record the log still holds is exactly what was appended at
//! its offset, the latest record of every key is there, offsets only grow, and once the log
//! is cleaned through, each key has one record below the clean point. Plus tombstones,
//! aborted transactions, and a crash in the middle of a swap.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use sluice_storage::{
    Compression, HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatch, RecordBatchBuilder,
};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2_000,
        index_interval_bytes: 100,
        retention_ms: None,
        compact: true,
        delete: false,
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: i64::MAX / 2,
        ..LogConfig::default()
    }
}

fn open(dir: &Path) -> PartitionLog {
    PartitionLog::open(dir, config(), HandleCache::new(64)).unwrap()
}

/// Every record the log holds, in order: (offset, key, value).
fn contents(log: &PartitionLog) -> Vec<(i64, Vec<u8>, Option<Vec<u8>>)> {
    let end = log.log_end_offset();
    let mut next = log.log_start_offset();
    let mut out = Vec::new();
    while next < end {
        let records = log.read(next, 1 << 20, end).unwrap().records;
        if records.is_empty() {
            break;
        }
        for batch in RecordBatch::iter_batches(records) {
            let batch = batch.unwrap();
            batch.verify_crc().unwrap();
            for record in batch.records().unwrap() {
                let record = record.unwrap();
                out.push((record.offset, record.key.unwrap().to_vec(), record.value.map(|v| v.to_vec())));
            }
            next = Offset(batch.last_offset() + 1);
        }
    }
    out
}

/// Flushes and checkpoints (cleaning stays below the persisted recovery point), then cleans
/// until no pass is due.
fn clean_through(log: &PartitionLog, budget: usize) -> usize {
    log.flush().unwrap();
    log.checkpoint().unwrap();
    let mut passes = 0;
    while log.clean(1_000_000, budget).unwrap().is_some() {
        passes += 1;
        assert!(passes < 1_000, "cleaning never finished");
    }
    passes
}

#[derive(Clone, Debug)]
enum Op {
    Append { records: Vec<(u8, Option<u8>)>, zstd: bool },
    Clean { budget: usize },
    Reopen { clean: bool },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (proptest::collection::vec((0u8..12, proptest::option::weighted(0.9, any::<u8>())), 1..6), any::<bool>())
            .prop_map(|(records, zstd)| Op::Append { records, zstd }),
        2 => (32usize..2_000).prop_map(|budget| Op::Clean { budget }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn compaction_keeps_the_latest_record_of_every_key_and_changes_nothing_else(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Some(open(dir.path()));
        let mut appended: BTreeMap<i64, (Vec<u8>, Option<Vec<u8>>)> = BTreeMap::new();
        let mut latest: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for op in ops {
            let current = log.as_ref().unwrap();
            match op {
                Op::Append { records, zstd } => {
                    let codec = if zstd { Compression::Zstd } else { Compression::None };
                    let mut builder = RecordBatchBuilder::new(1_000).compression(codec);
                    for (key, value) in &records {
                        let value = value.map(|v| vec![v; 30]);
                        builder.push(1_000, Some(&[b'k', *key]), value.as_deref(), &[]);
                    }
                    let base = current.append(&builder.build().unwrap(), LeaderEpoch(0), 1_000).unwrap().base_offset.0;
                    for (i, (key, value)) in records.iter().enumerate() {
                        let offset = base + i as i64;
                        appended.insert(offset, (vec![b'k', *key], value.map(|v| vec![v; 30])));
                        latest.insert(vec![b'k', *key], offset);
                    }
                    current.set_high_watermark(current.log_end_offset());
                }
                Op::Clean { budget } => {
                    current.flush().unwrap();
                    current.checkpoint().unwrap();
                    current.clean(1_000_000, budget).unwrap();
                }
                Op::Reopen { clean } => {
                    let old = log.take().unwrap();
                    if clean { old.close().unwrap() } else { drop(old) }
                    let reopened = open(dir.path());
                    reopened.set_high_watermark(reopened.log_end_offset());
                    log = Some(reopened);
                }
            }
            let current = log.as_ref().unwrap();
            let held = contents(current);
            // Offsets grow, and each record is what was appended there.
            prop_assert!(held.windows(2).all(|w| w[0].0 < w[1].0));
            for (offset, key, value) in &held {
                prop_assert_eq!(appended.get(offset), Some(&(key.clone(), value.clone())), "record at {}", offset);
            }
            // The latest record of every key is there.
            let offsets: std::collections::HashSet<i64> = held.iter().map(|r| r.0).collect();
            for (key, offset) in &latest {
                prop_assert!(offsets.contains(offset), "latest record of {:?} (offset {}) is gone", key, offset);
            }
            prop_assert_eq!(current.log_end_offset().0, appended.len() as i64);
        }
        // Cleaned through, with room for every key: one record per key in what was cleaned.
        let current = log.as_ref().unwrap();
        clean_through(current, 1 << 20);
        let held = contents(current);
        let mut seen = std::collections::HashSet::new();
        let active_base = current.segment_base_offsets().last().unwrap().0;
        for (offset, key, _) in held.iter().filter(|r| r.0 < active_base) {
            prop_assert!(seen.insert(key.clone()), "{:?} twice below the active segment (offset {})", key, offset);
        }
        current.verify().unwrap();
    }
}

fn keyed(key: &str, value: Option<&str>, timestamp_ms: i64) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new(timestamp_ms);
    builder.push(timestamp_ms, Some(key.as_bytes()), value.map(str::as_bytes), &[]);
    builder.build().unwrap()
}

fn fill(log: &PartitionLog, rounds: usize, timestamp_ms: i64) {
    for round in 0..rounds {
        for key in ["a", "b", "c"] {
            log.append(&keyed(key, Some(&format!("{key}{round}{}", "x".repeat(100))), timestamp_ms), LeaderEpoch(0), 0)
                .unwrap();
        }
    }
    log.set_high_watermark(log.log_end_offset());
}

#[test]
fn tombstones_stay_for_delete_retention_ms_after_a_first_cleaning_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { delete_retention_ms: 10_000, ..config() };
    let log = PartitionLog::open(dir.path(), config, HandleCache::new(64)).unwrap();
    fill(&log, 20, 1_000);
    log.append(&keyed("b", None, 1_000), LeaderEpoch(0), 0).unwrap();
    fill(&log, 20, 1_000);
    log.append(&keyed("a", None, 1_000), LeaderEpoch(0), 0).unwrap();
    fill(&log, 10, 2_000);
    log.set_high_watermark(log.log_end_offset());
    log.flush().unwrap();
    log.checkpoint().unwrap();
    // Young tombstones stay through any number of passes.
    while log.clean(5_000, 1 << 20).unwrap().is_some() {}
    let tombstones = |log: &PartitionLog| contents(log).iter().filter(|r| r.2.is_none()).count();
    // The "a" tombstone is overwritten by later "a" records; "b"'s by later "b" too: the
    // latest of each key is a value, so tombstones below survive only if they are latest.
    assert_eq!(tombstones(&log), 0, "superseded tombstones go like any record");
    log.append(&keyed("c", None, 3_000), LeaderEpoch(0), 0).unwrap();
    fill(&log, 0, 3_000);
    // Roll so the tombstone is in a closed segment.
    for i in 0..30 {
        log.append(&keyed(&format!("z{i}"), Some(&"y".repeat(100)), 3_000), LeaderEpoch(0), 0).unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    log.flush().unwrap();
    log.checkpoint().unwrap();
    while log.clean(5_000, 1 << 20).unwrap().is_some() {}
    assert_eq!(tombstones(&log), 1, "a tombstone younger than delete.retention.ms stays");
    // Past delete.retention.ms (and cleaned once already) it goes.
    for i in 0..30 {
        log.append(&keyed(&format!("w{i}"), Some(&"y".repeat(100)), 3_000), LeaderEpoch(0), 0).unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    log.flush().unwrap();
    log.checkpoint().unwrap();
    while log.clean(20_000, 1 << 20).unwrap().is_some() {}
    assert_eq!(tombstones(&log), 0, "an expired tombstone goes");
    assert!(!contents(&log).iter().any(|r| r.1 == b"c"), "and with it the key");
}

#[test]
fn a_crash_between_the_swaps_of_a_log_file_and_its_indexes_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    fill(&log, 30, 1_000);
    let before: Vec<_> = contents(&log);
    clean_through(&log, 1 << 20);
    let after = contents(&log);
    assert!(after.len() < before.len());
    drop(log);
    // Simulate the crash: a copy whose log was swapped but whose indexes were not (they wait
    // in cleaning/ over stale ones), and a copy not yet begun.
    let cleaning = dir.path().join("cleaning");
    std::fs::create_dir_all(&cleaning).unwrap();
    let first = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .min()
        .unwrap();
    std::fs::copy(&first, cleaning.join(first.file_name().unwrap())).unwrap();
    std::fs::write(&first, vec![0xffu8; 64]).unwrap(); // the stale index the crash left
    std::fs::write(cleaning.join("00000000000000099999.log"), b"half a copy").unwrap();
    let reopened = open(dir.path());
    assert_eq!(contents(&reopened), after);
    assert!(!cleaning.exists());
    reopened.verify().unwrap();
}

#[test]
fn markers_of_transactions_cleaned_away_go_after_delete_retention_ms() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        PartitionLog::open(dir.path(), LogConfig { delete_retention_ms: 10_000, ..config() }, HandleCache::new(64))
            .unwrap();
    // Many transactions of one producer rewriting the same key, as a job's changelog sees.
    for sequence in 0..60 {
        let mut builder = RecordBatchBuilder::new(1_000).producer(5, 0, sequence).transactional(true);
        builder.push(1_000, Some(b"state"), Some(format!("{sequence}{}", "s".repeat(50)).as_bytes()), &[]);
        log.append(&builder.build().unwrap(), LeaderEpoch(0), 0).unwrap();
        log.append_marker(
            sluice_storage::ProducerId(5),
            0,
            sluice_storage::MarkerKind::Commit,
            0,
            LeaderEpoch(0),
            1_000,
        )
        .unwrap();
    }
    fill(&log, 20, 1_000);
    let markers = |log: &PartitionLog| contents(log).iter().filter(|r| r.1.len() == 4).count();
    assert_eq!(markers(&log), 60);
    log.flush().unwrap();
    log.checkpoint().unwrap();
    while log.clean(5_000, 1 << 20).unwrap().is_some() {}
    assert_eq!(markers(&log), 60, "markers younger than delete.retention.ms stay");
    fill(&log, 20, 1_000);
    log.flush().unwrap();
    log.checkpoint().unwrap();
    while log.clean(8_000, 1 << 20).unwrap().is_some() {}
    assert_eq!(markers(&log), 60, "still younger");
    // Past delete.retention.ms (and with the producer snapshot past them), cleaned again.
    fill(&log, 20, 1_000);
    log.flush().unwrap();
    log.checkpoint().unwrap();
    while log.clean(1_000_000, 1 << 20).unwrap().is_some() {}
    let left = markers(&log);
    assert!(left <= 1, "only the marker of the transaction whose record is latest stays ({left} left)");
    let state: Vec<_> = contents(&log).into_iter().filter(|r| r.1 == b"state").collect();
    assert_eq!(state.len(), 1);
    assert!(state[0].2.as_ref().unwrap().starts_with(b"59"));
}

#[test]
fn aborted_transactions_are_removed_and_markers_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let txn = |sequence: i32, value: &str| {
        let mut builder = RecordBatchBuilder::new(1_000).producer(9, 0, sequence).transactional(true);
        builder.push(1_000, Some(b"t"), Some(value.as_bytes()), &[]);
        builder.build().unwrap()
    };
    log.append(&txn(0, "aborted"), LeaderEpoch(0), 0).unwrap();
    log.append_marker(sluice_storage::ProducerId(9), 0, sluice_storage::MarkerKind::Abort, 0, LeaderEpoch(0), 0)
        .unwrap();
    log.append(&txn(1, "committed"), LeaderEpoch(0), 0).unwrap();
    log.append_marker(sluice_storage::ProducerId(9), 0, sluice_storage::MarkerKind::Commit, 0, LeaderEpoch(0), 0)
        .unwrap();
    fill(&log, 30, 1_000);
    clean_through(&log, 1 << 20);
    let values: Vec<Option<Vec<u8>>> = contents(&log).into_iter().filter(|r| r.1 == b"t").map(|r| r.2).collect();
    assert_eq!(values, vec![Some(b"committed".to_vec())]);
}
