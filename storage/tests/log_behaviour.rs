//! Behaviour of a partition log that users rely on: bad batches change nothing, torn tails
//! are cut, corruption is reported with file and position, retention deletes whole closed
//! segments, open files stay bounded, and the flush policies do what they promise.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sluice_storage::{
    Error, FlushPolicy, HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatch, RecordBatchBuilder,
    TimestampType,
};

fn batch(timestamp_ms: i64, records: usize, value_size: usize) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new(timestamp_ms);
    for i in 0..records {
        builder.push(timestamp_ms + i as i64, Some(b"key"), Some(&vec![b'v'; value_size]), &[]);
    }
    builder.build().unwrap()
}

fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, config, HandleCache::new(64)).unwrap()
}

fn small_segments() -> LogConfig {
    LogConfig { segment_bytes: 4096, index_interval_bytes: 512, retention_ms: None, ..LogConfig::default() }
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn read_all(log: &PartitionLog) -> Vec<RecordBatch> {
    let end = log.log_end_offset();
    let mut next = log.log_start_offset();
    let mut out = Vec::new();
    while next < end {
        let records = log.read(next, 1 << 20, end).unwrap().records;
        for batch in RecordBatch::iter_batches(records) {
            let batch = batch.unwrap();
            next = Offset(batch.last_offset() + 1);
            out.push(batch);
        }
    }
    out
}

#[test]
fn invalid_batches_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { max_message_bytes: 10_000, ..LogConfig::default() });
    let good = batch(1, 2, 10);
    log.append(&good, LeaderEpoch(0), 0).unwrap();
    let size_before = log.size_bytes();

    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 1;
    assert!(matches!(log.append(&bad_crc, LeaderEpoch(0), 0), Err(Error::CorruptBatch(_))));

    let mut old_magic = good.clone();
    old_magic[16] = 1;
    assert!(matches!(log.append(&old_magic, LeaderEpoch(0), 0), Err(Error::UnsupportedMagic(1))));

    assert!(matches!(log.append(&good[..good.len() - 5], LeaderEpoch(0), 0), Err(Error::CorruptBatch(_))));
    assert!(matches!(log.append(&good[..30], LeaderEpoch(0), 0), Err(Error::CorruptBatch(_))));
    assert!(matches!(log.append(&[], LeaderEpoch(0), 0), Err(Error::CorruptBatch(_))));

    let mut absurd_length = good.clone();
    absurd_length[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(log.append(&absurd_length, LeaderEpoch(0), 0), Err(Error::CorruptBatch(_))));

    let too_big = batch(1, 1, 20_000);
    assert!(matches!(log.append(&too_big, LeaderEpoch(0), 0), Err(Error::BatchTooLarge { max: 10_000, .. })));

    assert_eq!(log.log_end_offset(), Offset(2));
    assert_eq!(log.size_bytes(), size_before);
    let batches = read_all(&log);
    assert_eq!(batches.len(), 1);
    assert_eq!(&batches[0].as_bytes()[16..], &good[16..]);
}

#[test]
fn torn_tail_is_truncated_on_unclean_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    for i in 0..10 {
        log.append(&batch(i, 3, 50), LeaderEpoch(0), 0).unwrap();
    }
    let end = log.log_end_offset();
    drop(log); // no clean shutdown

    // A torn write: the first half of another batch at the end of the active segment.
    let active = log_files(dir.path()).pop().unwrap();
    let torn = batch(99, 3, 50);
    OpenOptions::new().append(true).open(&active).unwrap().write_all(&torn[..torn.len() / 2]).unwrap();

    let log = open(dir.path(), LogConfig::default());
    assert_eq!(log.log_end_offset(), end);
    log.verify().unwrap();
    assert_eq!(read_all(&log).len(), 10);
    let outcome = log.append(&batch(100, 1, 5), LeaderEpoch(0), 0).unwrap();
    assert_eq!(outcome.base_offset, end);
}

#[test]
fn corruption_below_the_recovery_point_is_an_error_naming_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let mut positions = Vec::new();
    for i in 0..10 {
        positions.push(log.size_bytes());
        log.append(&batch(i, 2, 100), LeaderEpoch(0), 0).unwrap();
    }
    log.flush().unwrap();
    log.checkpoint().unwrap(); // records the recovery point
    drop(log);

    let active = log_files(dir.path()).pop().unwrap();
    let file = OpenOptions::new().read(true).write(true).open(&active).unwrap();
    let position = positions[3] + 70; // inside the fourth batch's records
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], position).unwrap();

    match PartitionLog::open(dir.path(), LogConfig::default(), HandleCache::new(4)) {
        Err(Error::CorruptSegment { path, position: at, reason }) => {
            assert_eq!(path, active);
            assert_eq!(at, positions[3]);
            assert!(reason.contains("CRC"), "{reason}");
        }
        Err(other) => panic!("expected CorruptSegment, got {other}"),
        Ok(_) => panic!("a log corrupted below its recovery point opened"),
    }
}

#[test]
fn flipped_byte_in_a_closed_segment_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments());
    for i in 0..40 {
        log.append(&batch(i, 2, 200), LeaderEpoch(0), 0).unwrap();
    }
    assert!(log.segment_count() > 2);
    log.close().unwrap();

    let first = log_files(dir.path()).remove(0);
    let file = OpenOptions::new().read(true).write(true).open(&first).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, 300).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], 300).unwrap();

    let log = open(dir.path(), small_segments());
    match log.verify() {
        Err(Error::CorruptSegment { path, .. }) => assert_eq!(path, first),
        other => panic!("expected CorruptSegment, got {other:?}"),
    }
}

#[test]
fn retention_deletes_whole_closed_segments_by_time_and_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_ms: Some(1_000), ..small_segments() };
    let log = open(dir.path(), config.clone());
    // Old records, then new ones.
    for i in 0..30 {
        log.append(&batch(10_000 + i, 2, 200), LeaderEpoch(0), 0).unwrap();
    }
    for i in 0..30 {
        log.append(&batch(100_000 + i, 2, 200), LeaderEpoch(0), 0).unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    let segments = log.segment_count();
    let deleted = log.apply_retention(100_500).unwrap();
    assert!(deleted > 0 && deleted < segments);
    // Old batches remain only in the one segment that also holds new ones; every new one stays.
    let remaining = read_all(&log);
    let old = remaining.iter().filter(|b| b.max_timestamp_ms() < 100_000).count();
    assert!(old <= 4096 / 250, "{old} old batches survived");
    assert_eq!(remaining.len() - old, 30);
    assert_eq!(log.log_start_offset().0, log.segment_base_offsets()[0].0);
    assert_eq!(log_files(dir.path()).len(), log.segment_count());

    // By size: keep at most ~3 segments' worth.
    log.set_config(LogConfig { retention_ms: None, retention_bytes: Some(3 * 4096), ..config }).unwrap();
    log.apply_retention(100_500).unwrap();
    assert!(log.size_bytes() <= 4 * 4096, "size {}", log.size_bytes());
    assert!(log.segment_count() >= 1);
    // The active segment is never deleted, and the log still reads and appends.
    read_all(&log);
    log.append(&batch(200_000, 1, 10), LeaderEpoch(0), 0).unwrap();
}

#[test]
fn an_expired_active_segment_is_rolled_and_deleted_as_in_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { retention_ms: Some(1_000), ..LogConfig::default() });
    for i in 0..5 {
        log.append(&batch(10_000 + i, 2, 20), LeaderEpoch(0), 0).unwrap();
    }
    log.set_high_watermark(Offset(4));
    assert_eq!(log.apply_retention(100_000).unwrap(), 0, "records above the high watermark stay");
    log.set_high_watermark(log.log_end_offset());
    assert_eq!(log.apply_retention(100_000).unwrap(), 1);
    assert_eq!(log.log_start_offset(), Offset(10));
    assert_eq!(log.segment_count(), 1, "an empty active segment remains");
    assert_eq!(log.apply_retention(100_000).unwrap(), 0, "an empty active segment is not rolled again");
    assert_eq!(log.append(&batch(100_000, 1, 20), LeaderEpoch(0), 0).unwrap().base_offset, Offset(10));
    drop(log);
    let reopened = open(dir.path(), LogConfig::default());
    assert_eq!((reopened.log_start_offset(), reopened.log_end_offset()), (Offset(10), Offset(11)));
}

#[test]
fn retention_never_deletes_above_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { retention_bytes: Some(1), ..small_segments() });
    for i in 0..30 {
        log.append(&batch(i, 2, 200), LeaderEpoch(0), 0).unwrap();
    }
    log.set_high_watermark(Offset(0));
    assert_eq!(log.apply_retention(0).unwrap(), 0);
    log.set_high_watermark(log.log_end_offset());
    assert!(log.apply_retention(0).unwrap() > 0);
    assert_eq!(log.segment_count(), 1);
}

#[test]
fn open_segments_stay_bounded_across_many_partitions() {
    let root = tempfile::tempdir().unwrap();
    let cache = HandleCache::new(8);
    let logs: Vec<PartitionLog> = (0..60)
        .map(|p| PartitionLog::open(root.path().join(format!("topic-{p}")), small_segments(), cache.clone()).unwrap())
        .collect();
    for round in 0..5 {
        for (p, log) in logs.iter().enumerate() {
            log.append(&batch(round * 100 + p as i64, 2, 300), LeaderEpoch(0), 0).unwrap();
            assert!(cache.open_count() <= 8, "{} handles open", cache.open_count());
        }
    }
    for log in &logs {
        let batches = read_all(log);
        assert_eq!(batches.len(), 5);
        assert!(cache.open_count() <= 8);
    }
    for log in logs {
        log.close().unwrap();
    }
}

#[test]
fn a_batch_larger_than_segment_bytes_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { segment_bytes: 1024, ..LogConfig::default() });
    log.append(&batch(0, 1, 10), LeaderEpoch(0), 0).unwrap();
    let big = batch(1, 4, 50_000);
    log.append(&big, LeaderEpoch(0), 0).unwrap();
    log.append(&batch(2, 1, 10), LeaderEpoch(0), 0).unwrap();
    assert_eq!(log.segment_count(), 3);
    let batches = read_all(&log);
    assert_eq!(&batches[1].as_bytes()[16..], &big[16..]);
    log.close().unwrap();
    let log = open(dir.path(), LogConfig { segment_bytes: 1024, ..LogConfig::default() });
    assert_eq!(read_all(&log).len(), 3);
}

#[test]
fn log_append_time_is_stamped_and_returned() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        open(dir.path(), LogConfig { message_timestamp_type: TimestampType::LogAppendTime, ..LogConfig::default() });
    let outcome = log.append(&batch(5, 3, 10), LeaderEpoch(0), 777_000).unwrap();
    assert_eq!(outcome.log_append_time_ms, Some(777_000));
    let stored = read_all(&log).remove(0);
    stored.verify_crc().unwrap();
    assert_eq!(stored.timestamp_type(), TimestampType::LogAppendTime);
    assert!(stored.records().unwrap().all(|r| r.unwrap().timestamp_ms == 777_000));
    assert_eq!(log.offset_for_timestamp(777_000, log.log_end_offset()).unwrap(), Some((Offset(0), 777_000)));
}

#[test]
fn segment_ms_rolls_by_age_of_the_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { segment_ms: Some(1_000), ..LogConfig::default() });
    log.append(&batch(10_000, 1, 10), LeaderEpoch(0), 10_000).unwrap();
    log.append(&batch(10_500, 1, 10), LeaderEpoch(0), 10_500).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(&batch(11_200, 1, 10), LeaderEpoch(0), 11_200).unwrap();
    assert_eq!(log.segment_count(), 2);
}

/// Kafka compares a batch's own timestamp with the segment's first: records produced today
/// with last year's timestamps (a backfill) must not roll a segment per batch.
#[test]
fn segment_ms_goes_by_the_records_timestamps_not_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { segment_ms: Some(1_000), ..LogConfig::default() });
    let now = 1_800_000_000_000;
    for ts in [10_000, 10_300, 10_600, 10_900] {
        log.append(&batch(ts, 1, 10), LeaderEpoch(0), now).unwrap();
    }
    assert_eq!(log.segment_count(), 1, "old timestamps appended now rolled segments");
    log.append(&batch(11_000, 1, 10), LeaderEpoch(0), now).unwrap();
    assert_eq!(log.segment_count(), 2, "a batch segment.ms past the first rolls");
    let log_append_time = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: Some(1_000),
        message_timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let log = open(log_append_time.path(), config);
    log.append(&batch(10_000, 1, 10), LeaderEpoch(0), now).unwrap();
    log.append(&batch(10_000, 1, 10), LeaderEpoch(0), now + 1_000).unwrap();
    assert_eq!(log.segment_count(), 2, "under LogAppendTime the clock decides");
}

#[test]
fn interval_flush_policy_fsyncs_from_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { flush_policy: FlushPolicy::IntervalMs(50), ..LogConfig::default() });
    let outcome = log.append(&batch(0, 1, 10), LeaderEpoch(0), 0).unwrap();
    outcome.wait_durable().unwrap(); // no fsync under this policy
    assert_eq!(log.fsync_count(), 0);
    log.maintain(i64::MAX / 2).unwrap();
    assert_eq!(log.fsync_count(), 1);
}

#[test]
fn concurrent_durable_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { flush_policy: FlushPolicy::EveryAppend, ..LogConfig::default() });
    let per_thread = 50;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    log.append(&batch(t * 1000 + i, 1, 100), LeaderEpoch(0), 0).unwrap().wait_durable().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let appends = 16 * per_thread as u64;
    assert_eq!(log.log_end_offset(), Offset(appends as i64));
    assert!(log.fsync_count() < appends, "{} fsyncs for {appends} appends: no group commit", log.fsync_count());
}

#[test]
fn reads_outside_the_log_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    log.append(&batch(0, 5, 10), LeaderEpoch(0), 0).unwrap();
    assert!(matches!(log.read(Offset(6), 100, Offset(5)), Err(Error::OffsetOutOfRange { .. })));
    assert!(matches!(log.read(Offset(-1), 100, Offset(5)), Err(Error::OffsetOutOfRange { .. })));
    // At the end, or at/after the high watermark bound: empty, not an error.
    assert!(log.read(Offset(5), 100, Offset(5)).unwrap().records.is_empty());
    assert!(log.read(Offset(2), 100, Offset(0)).unwrap().records.is_empty());
    // Inside a batch: the whole batch comes back.
    let batch = RecordBatch::iter_batches(log.read(Offset(3), 1, Offset(5)).unwrap().records).next().unwrap().unwrap();
    assert_eq!(batch.base_offset(), 0);
}

#[test]
fn invalid_config_is_refused_with_the_key_name() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        PartitionLog::open(dir.path(), LogConfig { segment_bytes: 5, ..LogConfig::default() }, HandleCache::new(1))
            .err()
            .unwrap();
    assert!(matches!(err, Error::InvalidConfig(_)));
    assert!(err.to_string().contains("segment.bytes"), "{err}");
}

fn flip(path: &Path, position: u64, bytes: &[u8]) {
    OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, position).unwrap();
}

#[test]
fn a_corrupt_base_offset_is_cut_not_turned_into_a_gap() {
    // The base offset lies outside the CRC; recovery must still refuse a batch whose base
    // offset does not follow the previous batch.
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let mut positions = vec![];
    for i in 0..3 {
        positions.push(log.size_bytes());
        log.append(&batch(i, 2, 20), LeaderEpoch(0), 0).unwrap();
    }
    drop(log);
    flip(&log_files(dir.path()).pop().unwrap(), positions[2] + 3, &[0x01]); // offset 4 -> 4 + 2^32
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(log.log_end_offset(), Offset(4), "the bad batch is a torn tail");
    log.verify().unwrap();

    // A huge base offset is an error, not an arithmetic overflow.
    let at = log.size_bytes();
    log.append(&batch(9, 1, 20), LeaderEpoch(0), 0).unwrap();
    drop(log);
    flip(&log_files(dir.path()).pop().unwrap(), at, &i64::MAX.to_be_bytes());
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(log.log_end_offset(), Offset(4));
}

#[test]
fn acknowledged_data_missing_below_the_recovery_point_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { flush_policy: FlushPolicy::EveryAppend, ..LogConfig::default() };
    let log = open(dir.path(), config.clone());
    let mut positions = vec![];
    for i in 0..10 {
        positions.push(log.size_bytes());
        log.append(&batch(i, 1, 50), LeaderEpoch(0), 0).unwrap().wait_durable().unwrap();
    }
    log.checkpoint().unwrap(); // recovery point 10
    drop(log);
    // Lose batches 5..10 at a batch boundary, as a lost write-back would.
    OpenOptions::new().write(true).open(log_files(dir.path()).pop().unwrap()).unwrap().set_len(positions[5]).unwrap();
    match PartitionLog::open(dir.path(), config, HandleCache::new(8)) {
        Err(Error::CorruptSegment { reason, .. }) => assert!(reason.contains("10"), "{reason}"),
        Err(other) => panic!("expected CorruptSegment, got {other}"),
        Ok(log) => panic!("opened with log end {} although offsets up to 10 were durable", log.log_end_offset()),
    }
}

#[test]
fn truncation_lowers_the_recovery_point_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { flush_policy: FlushPolicy::EveryAppend, ..small_segments() };
    let log = open(dir.path(), config.clone());
    for i in 0..40 {
        log.append(&batch(i, 2, 200), LeaderEpoch(0), 0).unwrap().wait_durable().unwrap();
    }
    log.checkpoint().unwrap();
    assert_eq!(log.truncate_to(Offset(31)).unwrap(), Offset(30));
    drop(log);
    let log = open(dir.path(), config);
    assert_eq!(log.log_end_offset(), Offset(30));
    log.verify().unwrap();
}

#[test]
fn a_log_restarted_past_its_end_continues_there_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { flush_policy: FlushPolicy::EveryAppend, ..small_segments() };
    let log = open(dir.path(), config.clone());
    for i in 0..20 {
        log.append(&batch(i, 2, 200), LeaderEpoch(1), 0).unwrap().wait_durable().unwrap();
    }
    log.restart_at(Offset(1000)).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset(), log.high_watermark()),
        (Offset(1000), Offset(1000), Offset(1000))
    );
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(1)).0, LeaderEpoch(-1), "old epochs are forgotten");
    let outcome = log.append(&batch(50, 3, 10), LeaderEpoch(4), 0).unwrap();
    outcome.wait_durable().unwrap();
    assert_eq!(outcome.base_offset, Offset(1000));
    assert_eq!(log_files(dir.path()).len(), 1, "the old segments are gone");
    drop(log); // no clean close
    let log = open(dir.path(), config);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (Offset(1000), Offset(1003)));
    log.verify().unwrap();
}

#[test]
fn negative_batch_lengths_from_the_network_are_errors() {
    let mut bytes = batch(0, 1, 10);
    bytes[8..12].copy_from_slice(&(-1i32).to_be_bytes());
    let first = RecordBatch::iter_batches(bytes::Bytes::from(bytes)).next();
    assert!(matches!(first, Some(Err(Error::CorruptBatch(_)))));
}

#[test]
fn a_small_batch_that_decompresses_to_a_huge_one_is_refused() {
    let mut builder = RecordBatchBuilder::new(0).compression(sluice_storage::Compression::Zstd);
    builder.push(0, None, Some(&vec![0u8; 100 << 20]), &[]);
    let bomb = builder.build().unwrap();
    assert!(bomb.len() < 100_000);
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    assert!(matches!(log.append(&bomb, LeaderEpoch(0), 0), Err(Error::Decompression { .. })));
    assert_eq!(log.log_end_offset(), Offset(0));
}

#[test]
fn clean_close_stops_appends_before_flushing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    log.append(&batch(0, 1, 100), LeaderEpoch(0), 0).unwrap();
    let appender = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut acknowledged = 1;
            while log.append(&batch(1, 1, 100), LeaderEpoch(0), 0).is_ok() {
                acknowledged += 1;
            }
            acknowledged
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    log.close().unwrap();
    let acknowledged = appender.join().unwrap();
    let checkpoint = sluice_storage::checkpoint::read(dir.path()).unwrap().unwrap();
    assert!(checkpoint.clean_shutdown);
    assert_eq!(checkpoint.recovery_point, acknowledged, "the clean marker must cover exactly what was flushed");
    assert_eq!(open(dir.path(), LogConfig::default()).log_end_offset(), Offset(acknowledged));
}

#[test]
fn raising_segment_index_bytes_on_a_live_log_applies_to_new_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_index_bytes: 96, index_interval_bytes: 1, ..LogConfig::default() };
    let log = open(dir.path(), config.clone());
    log.append(&batch(0, 1, 100), LeaderEpoch(0), 0).unwrap();
    log.set_config(LogConfig { segment_index_bytes: 10 << 20, ..config }).unwrap();
    for i in 0..20 {
        log.append(&batch(i, 1, 100), LeaderEpoch(0), 0).unwrap();
    }
    assert!(log.segment_count() >= 2, "the small index filled and rolled the segment");
    assert_eq!(read_all(&log).len(), 21);
}

fn idempotent(producer_id: i64, epoch: i16, base_sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new(1).producer(producer_id, epoch, base_sequence);
    for i in 0..records {
        builder.push(1 + i as i64, Some(b"key"), Some(b"value"), &[]);
    }
    builder.build().unwrap()
}

#[test]
fn idempotent_retries_are_answered_with_the_original_offsets_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments());
    let epoch = LeaderEpoch(0);
    let first = log.append(&idempotent(42, 0, 0, 3), epoch, 1).unwrap();
    log.append(&batch(1, 2, 10), epoch, 1).unwrap();
    let second = log.append(&idempotent(42, 0, 3, 2), epoch, 1).unwrap();
    assert_eq!((first.base_offset, second.base_offset), (Offset(0), Offset(5)));
    let retry = log.append(&idempotent(42, 0, 0, 3), epoch, 1).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (Offset(0), Offset(2)));
    assert_eq!(log.log_end_offset(), Offset(7), "a retry appends nothing");
    assert!(matches!(
        log.append(&idempotent(42, 0, 9, 1), epoch, 1),
        Err(Error::OutOfOrderSequence { expected: 5, got: 9, .. })
    ));
    // Clean close and reopen: from the snapshot.
    log.close().unwrap();
    let log = open(dir.path(), small_segments());
    assert!(log.append(&idempotent(42, 0, 3, 2), epoch, 1).unwrap().duplicate);
    // A crash (no close) with no snapshot since the last appends: rebuilt from the log.
    log.append(&idempotent(42, 0, 5, 1), epoch, 1).unwrap();
    log.append(&idempotent(7, 3, 0, 1), epoch, 1).unwrap();
    drop(log);
    let log = open(dir.path(), small_segments());
    let again = log.append(&idempotent(42, 0, 5, 1), epoch, 1).unwrap();
    assert!(again.duplicate && again.base_offset == Offset(7));
    assert!(matches!(
        log.append(&idempotent(7, 2, 1, 1), epoch, 1),
        Err(Error::InvalidProducerEpoch { current: 3, .. })
    ));
    // Truncation forgets what it removed: the batch at 7 is gone, so its retry is new.
    log.truncate_to(Offset(7)).unwrap();
    let after = log.append(&idempotent(42, 0, 5, 1), epoch, 1).unwrap();
    assert!(!after.duplicate);
    assert_eq!(after.base_offset, Offset(7));
}

fn transactional(producer_id: i64, epoch: i16, base_sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new(1).producer(producer_id, epoch, base_sequence).transactional(true);
    for i in 0..records {
        builder.push(1 + i as i64, Some(b"key"), Some(b"value"), &[]);
    }
    builder.build().unwrap()
}

#[test]
fn transactions_hold_the_stable_offset_and_aborts_are_indexed_across_reopens() {
    use sluice_storage::{AbortedTxn, MarkerKind, ProducerId};
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments());
    let epoch = LeaderEpoch(0);
    log.append(&batch(1, 2, 10), epoch, 1).unwrap(); // 0-1, not transactional
    log.append(&transactional(1, 0, 0, 3), epoch, 1).unwrap(); // 2-4, producer 1
    log.append(&transactional(2, 0, 0, 2), epoch, 1).unwrap(); // 5-6, producer 2
    log.advance_high_watermark(log.log_end_offset());
    assert_eq!(log.last_stable_offset(), Offset(2));
    // A client may not write markers itself.
    let mut forged = RecordBatchBuilder::new(1).producer(1, 0, -1).transactional(true).control(true);
    forged.push(1, Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]), &[]);
    assert!(matches!(log.append(&forged.build().unwrap(), epoch, 1), Err(Error::InvalidRecord(_))));

    let commit = log.append_marker(ProducerId(1), 0, MarkerKind::Commit, 0, epoch, 1).unwrap(); // 7
    log.advance_high_watermark(log.log_end_offset());
    assert_eq!(commit.base_offset, Offset(7));
    assert_eq!(log.last_stable_offset(), Offset(5), "producer 2's transaction is still open");
    log.append_marker(ProducerId(2), 0, MarkerKind::Abort, 0, epoch, 1).unwrap(); // 8
    log.advance_high_watermark(log.log_end_offset());
    assert_eq!(log.last_stable_offset(), Offset(9));
    let aborted = AbortedTxn { producer_id: 2, first_offset: 5, last_offset: 8, last_stable_offset: 5 };
    assert_eq!(log.aborted_transactions(Offset(0), Offset(9)), vec![aborted]);
    assert_eq!(log.aborted_transactions(Offset(9), Offset(20)), vec![]);
    assert_eq!(log.aborted_transactions(Offset(0), Offset(5)), vec![], "the range ends before it starts");
    // An old epoch's marker is fenced.
    assert!(matches!(
        log.append_marker(ProducerId(2), -1, MarkerKind::Abort, 0, epoch, 1),
        Err(Error::InvalidProducerEpoch { .. })
    ));
    // A new transaction after a clean reopen, then a crash: both survive.
    log.close().unwrap();
    let log = open(dir.path(), small_segments());
    assert_eq!(log.aborted_transactions(Offset(0), Offset(9)), vec![aborted]);
    log.append(&transactional(3, 0, 0, 1), epoch, 1).unwrap(); // 9
    log.append_marker(ProducerId(3), 0, MarkerKind::Abort, 0, epoch, 1).unwrap(); // 10
    log.append(&transactional(1, 0, 3, 1), epoch, 1).unwrap(); // 11, open
    drop(log);
    let _ = fs::remove_file(dir.path().join("00000000000000000000.txnindex"));
    let log = open(dir.path(), small_segments());
    log.advance_high_watermark(log.log_end_offset());
    assert_eq!(log.last_stable_offset(), Offset(11), "the open transaction is rebuilt from the log");
    let all = log.aborted_transactions(Offset(0), Offset(12));
    assert_eq!(
        all.iter().map(|a| (a.producer_id, a.first_offset, a.last_offset)).collect::<Vec<_>>(),
        [(3, 9, 10)],
        "the index lost with its file is rebuilt for markers after the snapshot only"
    );
    // Truncation forgets aborts it removes.
    log.truncate_to(Offset(10)).unwrap();
    assert_eq!(log.aborted_transactions(Offset(0), Offset(12)), vec![]);
    assert_eq!(log.last_stable_offset(), Offset(9), "producer 3's transaction is open again");
}

#[test]
fn a_torn_txn_index_entry_is_cut_and_later_aborts_stay_readable() {
    use sluice_storage::{MarkerKind, ProducerId};
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments());
    let epoch = LeaderEpoch(0);
    log.append(&transactional(1, 0, 0, 2), epoch, 1).unwrap(); // 0-1
    log.append_marker(ProducerId(1), 0, MarkerKind::Abort, 0, epoch, 1).unwrap(); // 2
    log.close().unwrap();
    let index = dir.path().join("00000000000000000000.txnindex");
    let mut file = OpenOptions::new().append(true).open(&index).unwrap();
    file.write_all(&[0, 0, 1, 2, 3]).unwrap(); // a crash mid-append
    drop(file);
    let log = open(dir.path(), small_segments());
    log.append(&transactional(2, 0, 0, 1), epoch, 1).unwrap(); // 3
    log.append_marker(ProducerId(2), 0, MarkerKind::Abort, 0, epoch, 1).unwrap(); // 4
    log.close().unwrap();
    let log = open(dir.path(), small_segments());
    let aborted: Vec<(i64, i64, i64)> = log
        .aborted_transactions(Offset(0), Offset(5))
        .iter()
        .map(|a| (a.producer_id, a.first_offset, a.last_offset))
        .collect();
    assert_eq!(aborted, [(1, 0, 2), (2, 3, 4)]);
    assert_eq!(fs::metadata(&index).unwrap().len(), 2 * 34, "whole entries only");
}

/// Bytes the filesystem has allocated to the files of a log directory.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().blocks() * 512).sum()
}

#[test]
fn an_idle_log_takes_a_few_kib_and_its_indexes_grow_as_entries_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { index_interval_bytes: 1, retention_ms: None, ..LogConfig::default() };
    let log = open(dir.path(), config.clone());
    log.append(&batch(0, 1, 10), LeaderEpoch(0), 0).unwrap();
    log.checkpoint().unwrap();
    let idle = allocated_bytes(dir.path());
    assert!(idle <= 64 << 10, "an idle log with one record takes {idle} bytes of disk");

    // Every batch gets an offset and a time entry: the indexes grow well past their first page.
    for i in 1..3000 {
        log.append(&batch(i, 1, 10), LeaderEpoch(0), 0).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    for i in (0..3000).step_by(7) {
        let found = log.offset_for_timestamp(i, Offset(3000)).unwrap().unwrap();
        assert_eq!(found.0, Offset(i));
        let records = log.read(Offset(i), 1, Offset(3000)).unwrap().records;
        let first = RecordBatch::iter_batches(records).next().unwrap().unwrap();
        assert_eq!(first.base_offset(), i);
    }
    // The grown indexes survive a crash (no clean close) and a clean reopen alike.
    drop(log);
    let reopened = open(dir.path(), config.clone());
    assert_eq!(reopened.offset_for_timestamp(2999, Offset(3000)).unwrap().unwrap().0, Offset(2999));
    reopened.verify().unwrap();
    reopened.close().unwrap();
    let reopened = open(dir.path(), config);
    assert_eq!(read_all(&reopened).len(), 3000);
    assert!(allocated_bytes(dir.path()) < 1 << 20, "3000 tiny batches take {} bytes", allocated_bytes(dir.path()));
}

#[test]
fn create_time_outside_the_topics_bounds_is_refused_naming_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        message_timestamp_before_max_ms: 60_000,
        message_timestamp_after_max_ms: 1_000,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config.clone());
    let now = 10_000_000;
    // Records 0 and 1 are fine; record 2 is two minutes old.
    let mut builder = RecordBatchBuilder::new(now);
    builder.push(now, Some(b"k"), Some(b"v"), &[]);
    builder.push(now - 1_000, Some(b"k"), Some(b"v"), &[]);
    builder.push(now - 120_000, Some(b"k"), Some(b"v"), &[]);
    let err = log.append(&builder.build().unwrap(), LeaderEpoch(0), now).err().unwrap();
    assert!(matches!(err, Error::InvalidTimestamp { record: 2, .. }), "{err}");
    assert_eq!(err.record_index(), Some(2));
    let err = log.append(&batch(now + 5_000, 1, 10), LeaderEpoch(0), now).err().unwrap();
    assert!(matches!(err, Error::InvalidTimestamp { record: 0, .. }), "{err}");
    assert_eq!(log.log_end_offset(), Offset(0), "refused batches change nothing");
    log.append(&batch(now - 59_000, 2, 10), LeaderEpoch(0), now).unwrap();
    // Under LogAppendTime the producer's timestamps do not matter.
    log.set_config(LogConfig { message_timestamp_type: TimestampType::LogAppendTime, ..config }).unwrap();
    log.append(&batch(1, 1, 10), LeaderEpoch(0), now).unwrap();
    assert_eq!(log.log_end_offset(), Offset(3));
}

#[test]
fn batches_are_stored_in_the_topics_compression_type() {
    use sluice_storage::Compression;
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig { compression: Some(Compression::Zstd), ..LogConfig::default() });
    let sent = [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];
    let mut expected = Vec::new();
    for (i, codec) in sent.iter().enumerate() {
        let mut builder = RecordBatchBuilder::new(1_000).compression(*codec).producer(7, 0, i as i32 * 3);
        for r in 0..3 {
            let value = format!("{codec:?}-{r}-{}", "x".repeat(200));
            builder.push(1_000 + r, Some(format!("k{r}").as_bytes()), Some(value.as_bytes()), &[]);
            expected.push(value);
        }
        log.append(&builder.build().unwrap(), LeaderEpoch(0), 1_000).unwrap();
    }
    let stored = read_all(&log);
    assert!(stored.iter().all(|b| b.compression().unwrap() == Compression::Zstd));
    assert!(stored.iter().all(|b| b.producer_id() == 7), "producer fields are kept");
    let values: Vec<String> = stored
        .iter()
        .flat_map(|b| b.records().unwrap().map(|r| String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap()))
        .collect();
    assert_eq!(values, expected);
    // An idempotent retry of a recompressed batch is still recognised as a duplicate.
    let mut retry = RecordBatchBuilder::new(1_000).compression(Compression::Gzip).producer(7, 0, 12);
    for r in 0..3 {
        retry.push(1_000 + r, Some(format!("k{r}").as_bytes()), Some(b"again"), &[]);
    }
    assert!(log.append(&retry.build().unwrap(), LeaderEpoch(0), 1_000).unwrap().duplicate);
    log.verify().unwrap();
    // `uncompressed` decompresses.
    log.set_config(LogConfig { compression: Some(Compression::None), ..LogConfig::default() }).unwrap();
    let mut builder = RecordBatchBuilder::new(1_000).compression(Compression::Lz4);
    builder.push(1_000, Some(b"k"), Some(b"plain"), &[]);
    log.append(&builder.build().unwrap(), LeaderEpoch(0), 1_000).unwrap();
    assert_eq!(read_all(&log).last().unwrap().compression().unwrap(), Compression::None);
}

#[test]
fn preallocated_segments_are_cut_when_sealed_and_survive_a_crash() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { preallocate: true, segment_bytes: 64 << 10, retention_ms: None, ..LogConfig::default() };
    let log = open(dir.path(), config.clone());
    let first = log_files(dir.path())[0].clone();
    assert!(fs::metadata(&first).unwrap().blocks() * 512 >= 64 << 10, "the active segment is allocated up front");
    for i in 0..100 {
        log.append(&batch(i, 2, 1000), LeaderEpoch(0), 0).unwrap();
    }
    assert!(log.segment_count() > 2);
    let sealed = &log_files(dir.path())[0];
    let sealed_len = fs::metadata(sealed).unwrap().len();
    assert!(sealed_len < 64 << 10, "a sealed segment is cut to what it holds ({sealed_len} bytes)");
    // A crash (no clean close) with zeros after the active segment's data: nothing is lost.
    drop(log);
    let reopened = open(dir.path(), config);
    assert_eq!(reopened.log_end_offset(), Offset(200));
    assert_eq!(read_all(&reopened).len(), 100);
    reopened.verify().unwrap();
}

#[test]
fn deleted_segments_wait_out_file_delete_delay_ms() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_bytes: Some(1), file_delete_delay_ms: 60_000, ..small_segments() };
    let log = open(dir.path(), config.clone());
    for i in 0..30 {
        log.append(&batch(i, 2, 200), LeaderEpoch(0), 0).unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    let deleted = log.apply_retention(1_000_000).unwrap();
    assert!(deleted > 0);
    let waiting = |dir: &Path| {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".deleted"))
            .count()
    };
    assert!(waiting(dir.path()) >= deleted, "deleted segments' files are renamed, not removed");
    log.maintain(1_000_000 + 59_000).unwrap();
    assert!(waiting(dir.path()) >= deleted, "not yet due");
    log.maintain(1_000_000 + 60_000).unwrap();
    assert_eq!(waiting(dir.path()), 0);
    // Files left waiting by a crash are removed when the log is next opened.
    for i in 0..30 {
        log.append(&batch(i, 2, 200), LeaderEpoch(0), 0).unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    assert!(log.apply_retention(2_000_000).unwrap() > 0);
    drop(log);
    let reopened = open(dir.path(), config);
    assert_eq!(waiting(dir.path()), 0);
    read_all(&reopened);
}

#[test]
fn leader_epochs_are_tracked_cut_with_the_log_and_survive_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments());
    for (epoch, batches) in [(0, 5), (3, 5), (5, 5)] {
        for i in 0..batches {
            log.append(&batch(i, 2, 100), LeaderEpoch(epoch), 0).unwrap();
        }
    }
    // Epoch 0 is offsets 0..10, epoch 3 is 10..20, epoch 5 is 20..30.
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(5)), (LeaderEpoch(5), Offset(30)));
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(3)), (LeaderEpoch(3), Offset(20)));
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(4)), (LeaderEpoch(3), Offset(20)));
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(9)), (LeaderEpoch(-1), Offset(-1)));
    // A follower truncating to where its epoch ends on the leader: the later epoch goes.
    log.truncate_to(Offset(20)).unwrap();
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(3)), (LeaderEpoch(3), Offset(20)));
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(5)), (LeaderEpoch(-1), Offset(-1)));
    log.append(&batch(0, 2, 100), LeaderEpoch(6), 0).unwrap();
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(3)), (LeaderEpoch(3), Offset(20)));
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(6)), (LeaderEpoch(6), Offset(22)));
    // The same after a crash, and rebuilt from the batches when the file is gone.
    drop(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(4)), (LeaderEpoch(3), Offset(20)));
    log.close().unwrap();
    fs::remove_file(dir.path().join("leader-epoch-checkpoint")).unwrap();
    let log = open(dir.path(), small_segments());
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(0)), (LeaderEpoch(0), Offset(10)));
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(6)), (LeaderEpoch(6), Offset(22)));
    assert!(dir.path().join("leader-epoch-checkpoint").exists(), "the rebuilt cache is written back");
}

#[test]
fn segment_jitter_ms_rolls_segments_early_by_a_different_amount_each() {
    // Batch timestamps 100 ms apart: the age at which each segment rolls is measured in them.
    let roll_ages = |jitter_ms: u64| {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_ms: Some(10_000),
            segment_jitter_ms: jitter_ms,
            retention_ms: None,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config);
        let (mut ages, mut first) = (Vec::new(), 0);
        for i in 0..3_000i64 {
            let ts = i * 100;
            let segments = log.segment_count();
            log.append(&batch(ts, 1, 10), LeaderEpoch(0), ts).unwrap();
            if log.segment_count() > segments {
                ages.push(ts - first);
                first = ts;
            }
        }
        ages
    };
    assert!(roll_ages(0).iter().all(|&age| age == 10_000), "without jitter, segment.ms exactly");
    let jittered = roll_ages(10_000);
    assert!(jittered.len() >= 20, "{jittered:?}");
    assert!(jittered.iter().all(|&age| age <= 10_000), "never later than segment.ms: {jittered:?}");
    assert!(jittered.iter().any(|&age| age != jittered[0]), "each segment its own jitter: {jittered:?}");
}

#[test]
fn a_follower_holds_the_leaders_batches_byte_for_byte_with_its_transactions_and_epochs() {
    use sluice_storage::{AbortedTxn, MarkerKind, ProducerId};
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(leader_dir.path(), small_segments());
    let follower = open(follower_dir.path(), small_segments());
    leader.append(&batch(1, 2, 300), LeaderEpoch(1), 1).unwrap();
    leader.append(&transactional(2, 0, 0, 2), LeaderEpoch(1), 1).unwrap();
    leader.append(&batch(2, 3, 300), LeaderEpoch(3), 1).unwrap();
    leader.append_marker(ProducerId(2), 0, MarkerKind::Abort, 0, LeaderEpoch(3), 1).unwrap();
    for i in 0..20 {
        leader.append(&batch(3 + i, 2, 300), LeaderEpoch(4), 1).unwrap();
    }
    let end = leader.log_end_offset();
    leader.advance_high_watermark(end);

    // Replicate as a fetcher does: whatever the leader reads, the follower appends.
    let mut next = Offset(0);
    while next < end {
        let read = leader.read(next, 2000, end).unwrap();
        for stored in RecordBatch::iter_batches(read.records) {
            let stored = stored.unwrap();
            follower.append_replicated(stored.as_bytes(), 5).unwrap().wait_durable().unwrap();
            next = Offset(stored.last_offset() + 1);
        }
    }
    assert_eq!(follower.log_end_offset(), end);
    let gap = batch(9, 1, 1);
    assert!(follower.append_replicated(&gap, 5).is_err(), "a batch not at the log end is refused");
    follower.advance_high_watermark(end);
    let bytes = |log: &PartitionLog| {
        let mut offset = Offset(0);
        let mut out = Vec::new();
        while offset < log.log_end_offset() {
            let read = log.read(offset, 1 << 20, log.log_end_offset()).unwrap();
            for b in RecordBatch::iter_batches(read.records) {
                let b = b.unwrap();
                out.extend_from_slice(b.as_bytes());
                offset = Offset(b.last_offset() + 1);
            }
        }
        out
    };
    assert_eq!(bytes(&follower), bytes(&leader), "the follower stores exactly what the leader did");
    assert_eq!(follower.latest_epoch(), LeaderEpoch(4));
    assert_eq!(follower.end_offset_for_epoch(LeaderEpoch(1)), leader.end_offset_for_epoch(LeaderEpoch(1)));
    let aborted = AbortedTxn { producer_id: 2, first_offset: 2, last_offset: 7, last_stable_offset: 2 };
    assert_eq!(follower.aborted_transactions(Offset(0), end), vec![aborted]);
    assert_eq!(leader.aborted_transactions(Offset(0), end), vec![aborted]);
    drop(follower);
    let reopened = open(follower_dir.path(), small_segments());
    assert_eq!(reopened.log_end_offset(), end);
    reopened.verify().unwrap();
}
