//! Micro-benchmarks of the partition log: appends into the page cache, durable appends with
//! group commit, sequential reads, timestamp lookups and recovery after an unclean stop.
//! They report figures and never assert timings. Every log lives in its own temporary
//! directory; fixtures are built once, and only when a benchmark that needs them runs, so
//! `cargo bench -p sluice-storage --bench log -- <filter>` pays only for what it selects.

use std::hint::black_box;
use std::path::Path;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use sluice_storage::format::HEADER_SIZE;
use sluice_storage::{
    checkpoint, FlushPolicy, HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatch, RecordBatchBuilder,
};
use tempfile::TempDir;

const EPOCH: LeaderEpoch = LeaderEpoch(0);
/// Record value size for every benchmark but the time index one.
const RECORD_BYTES: usize = 1024;
/// Upper bound on one record's framing around its value (length, attributes, timestamp and
/// offset deltas, null key, value length, header count) while deltas fit in two bytes.
const RECORD_OVERHEAD_BYTES_MAX: usize = 10;
/// An append benchmark starts a fresh log after this much, so a long run neither fills the
/// disk nor lets the kernel's dirty-page write-back (10% of RAM by default) start throttling:
/// deleting a log before write-back reaches it discards its dirty pages.
const APPEND_LOG_BYTES_MAX: usize = 256 << 20;
/// Size of the logs that the read and recovery benchmarks scan.
const SCAN_LOG_BYTES: usize = 256 << 20;
const FETCH_MAX_BYTES: usize = 1 << 20;
/// Several segments, so that a lookup has segments to skip and appends roll.
const TIMEINDEX_SEGMENT_BYTES: u32 = 4 << 20;
const TIMEINDEX_BATCHES: i64 = 50_000;
/// Each time index batch holds this many records, one per millisecond, so the first offset
/// at or after timestamp `start + t` is exactly `t`.
const TIMEINDEX_RECORDS_PER_BATCH: i64 = 10;
const RECOVERY_SEGMENT_BYTES: u32 = 64 << 20;

/// A log in its own temporary directory. Fields drop in order: the log (and its mappings)
/// before the directory it lives in.
struct ScratchLog {
    log: PartitionLog,
    dir: TempDir,
}

impl ScratchLog {
    fn open(config: LogConfig) -> ScratchLog {
        let dir = tempfile::tempdir().expect("create a temporary log directory");
        let log = open_log(dir.path(), config);
        ScratchLog { log, dir }
    }
}

fn open_log(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, config, HandleCache::new(HandleCache::DEFAULT_MAX_OPEN)).expect("open the log")
}

/// An uncompressed batch of `RECORD_BYTES` records, as many as fit in `max_bytes`.
fn batch_up_to(max_bytes: usize, timestamp_ms: i64) -> Vec<u8> {
    let value = vec![0x5a; RECORD_BYTES];
    let mut builder = RecordBatchBuilder::new(timestamp_ms);
    while HEADER_SIZE + builder.records_size() + RECORD_BYTES + RECORD_OVERHEAD_BYTES_MAX <= max_bytes {
        builder.push(timestamp_ms, None, Some(&value), &[]);
    }
    let batch = builder.build().expect("build a batch");
    assert!(batch.len() <= max_bytes, "the record overhead bound is wrong: {} bytes", batch.len());
    batch
}

/// Appends `batch` until the log holds at least `bytes`.
fn fill(log: &PartitionLog, batch: &[u8], bytes: usize, now_ms: i64) {
    while log.size_bytes() < bytes as u64 {
        log.append(batch, EPOCH, now_ms).expect("append while filling");
    }
}

fn bench_append(c: &mut Criterion) {
    let now_ms = sluice_storage::now_ms();
    let mut group = c.benchmark_group("append");
    group.sample_size(20);
    for (name, max_bytes) in [("1MiB", 1 << 20), ("16KiB", 16 << 10)] {
        let batch = batch_up_to(max_bytes, now_ms);
        let appends_per_log = (APPEND_LOG_BYTES_MAX / batch.len()) as u64;
        group.throughput(Throughput::BytesDecimal(batch.len() as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut remaining = iters;
                while remaining > 0 {
                    // Opening the log (and deleting the last one) stays outside the timing.
                    let scratch = ScratchLog::open(LogConfig { flush_policy: FlushPolicy::Os, ..LogConfig::default() });
                    let appends = remaining.min(appends_per_log);
                    let start = Instant::now();
                    for _ in 0..appends {
                        black_box(scratch.log.append(&batch, EPOCH, now_ms).expect("append"));
                    }
                    elapsed += start.elapsed();
                    remaining -= appends;
                }
                elapsed
            })
        });
    }
    group.finish();
}

/// What the durable append runs of one appender count added up to, warm-up included.
#[derive(Default)]
struct GroupCommitTotals {
    appends: u64,
    fsyncs: u64,
    elapsed: Duration,
}

impl GroupCommitTotals {
    fn report(&self, appenders: usize) {
        if self.appends == 0 {
            return; // filtered out
        }
        let seconds = self.elapsed.as_secs_f64();
        println!(
            "durable_append/{appenders}: {:.0} appends/s, {:.0} fsyncs/s, {:.1} appends per fsync ({} appends, {} fsyncs in {seconds:.2}s)",
            self.appends as f64 / seconds,
            self.fsyncs as f64 / seconds,
            self.appends as f64 / self.fsyncs.max(1) as f64,
            self.appends,
            self.fsyncs,
        );
    }
}

/// `appenders` threads each append `appends_each` one-record batches to `log` and wait for
/// each to be durable before the next; returns the time from the common start until the last
/// one is done.
fn run_appenders(log: &PartitionLog, batch: &[u8], appenders: usize, appends_each: u64, now_ms: i64) -> Duration {
    let start_line = Barrier::new(appenders + 1);
    let start = thread::scope(|scope| {
        for _ in 0..appenders {
            scope.spawn(|| {
                start_line.wait();
                for _ in 0..appends_each {
                    let outcome = log.append(batch, EPOCH, now_ms).expect("append");
                    outcome.wait_durable().expect("wait for the append to be durable");
                }
            });
        }
        start_line.wait();
        Instant::now()
    });
    start.elapsed()
}

fn bench_durable_append(c: &mut Criterion) {
    let now_ms = sluice_storage::now_ms();
    let batch = batch_up_to(RECORD_BYTES + HEADER_SIZE + RECORD_OVERHEAD_BYTES_MAX, now_ms);
    let mut group = c.benchmark_group("durable_append");
    group.sample_size(10);
    for appenders in [1usize, 8, 64] {
        // One iteration is one append by each appender, so elements/s is appends/s.
        group.throughput(Throughput::Elements(appenders as u64));
        let mut scratch = None;
        let mut totals = GroupCommitTotals::default();
        group.bench_with_input(BenchmarkId::from_parameter(appenders), &appenders, |b, &appenders| {
            let log = &scratch
                .get_or_insert_with(|| {
                    ScratchLog::open(LogConfig { flush_policy: FlushPolicy::EveryAppend, ..LogConfig::default() })
                })
                .log;
            b.iter_custom(|iters| {
                let fsyncs_before = log.fsync_count();
                let elapsed = run_appenders(log, &batch, appenders, iters, now_ms);
                totals.appends += appenders as u64 * iters;
                totals.fsyncs += log.fsync_count() - fsyncs_before;
                totals.elapsed += elapsed;
                elapsed
            })
        });
        totals.report(appenders);
    }
    group.finish();
}

/// Reads the whole log from offset 0 as a fetch loop would: `FETCH_MAX_BYTES` at a time, the
/// next read starting after the last batch returned. `visit` sees every batch.
fn read_all(log: &PartitionLog, end: Offset, mut visit: impl FnMut(&RecordBatch)) -> u64 {
    let mut offset = Offset::ZERO;
    let mut bytes = 0;
    while offset < end {
        let read = log.read(offset, FETCH_MAX_BYTES, end).expect("read");
        bytes += read.records.len() as u64;
        let mut last_offset = None;
        for batch in RecordBatch::iter_batches(read.records) {
            let batch = batch.expect("a stored batch");
            visit(&batch);
            last_offset = Some(batch.last_offset());
        }
        offset = Offset(last_offset.expect("a read below the log end returns a batch") + 1);
    }
    bytes
}

fn bench_read(c: &mut Criterion) {
    let mut fixture = None;
    let mut setup = || {
        let now_ms = sluice_storage::now_ms();
        let scratch = ScratchLog::open(LogConfig::default());
        fill(&scratch.log, &batch_up_to(16 << 10, now_ms), SCAN_LOG_BYTES, now_ms);
        scratch
    };
    let mut group = c.benchmark_group("read");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::BytesDecimal(SCAN_LOG_BYTES as u64));
    // Reads hand out slices of the segment mapping without touching the record bytes, so this
    // measures finding and framing batches, not memory bandwidth.
    group.bench_function("sequential", |b| {
        let log = &fixture.get_or_insert_with(&mut setup).log;
        let end = log.log_end_offset();
        b.iter(|| read_all(log, end, |_| {}))
    });
    // What a consumer that checks CRCs (as Kafka's Java client does by default) pays on top.
    group.bench_function("sequential_verify_crc", |b| {
        let log = &fixture.get_or_insert_with(&mut setup).log;
        let end = log.log_end_offset();
        b.iter(|| read_all(log, end, |batch| batch.verify_crc().expect("CRC")))
    });
    group.finish();
}

/// splitmix64: reproducible random lookups without a dependency for five lines.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A log of `TIMEINDEX_BATCHES` small batches over several segments, record `n` stamped
/// `start_ms + n`; returns it with `start_ms`.
fn timestamped_log() -> (ScratchLog, i64) {
    let config = LogConfig { segment_bytes: TIMEINDEX_SEGMENT_BYTES, ..LogConfig::default() };
    let scratch = ScratchLog::open(config);
    let start_ms = sluice_storage::now_ms();
    let value = [0x5a; 100];
    for batch_index in 0..TIMEINDEX_BATCHES {
        let first_ms = start_ms + batch_index * TIMEINDEX_RECORDS_PER_BATCH;
        let mut builder = RecordBatchBuilder::new(first_ms);
        for record in 0..TIMEINDEX_RECORDS_PER_BATCH {
            builder.push(first_ms + record, None, Some(&value), &[]);
        }
        scratch.log.append(&builder.build().expect("build a batch"), EPOCH, first_ms).expect("append");
    }
    // The benchmark is meaningless if lookups are wrong; this checks answers, not timings.
    let end = scratch.log.log_end_offset();
    for t in [0, 1, 12_345, TIMEINDEX_BATCHES * TIMEINDEX_RECORDS_PER_BATCH - 1] {
        let found = scratch.log.offset_for_timestamp(start_ms + t, end).expect("lookup");
        assert_eq!(found, Some((Offset(t), start_ms + t)), "offset_for_timestamp({t} ms after the start)");
    }
    (scratch, start_ms)
}

fn bench_timeindex(c: &mut Criterion) {
    let mut fixture = None;
    let mut group = c.benchmark_group("timeindex");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lookup", |b| {
        let (scratch, start_ms) = fixture.get_or_insert_with(timestamped_log);
        let (log, start_ms) = (&scratch.log, *start_ms);
        let end = log.log_end_offset();
        let span_ms = (TIMEINDEX_BATCHES * TIMEINDEX_RECORDS_PER_BATCH) as u64;
        let mut random = 0x5eed;
        b.iter(|| {
            let timestamp_ms = start_ms + (next_random(&mut random) % span_ms) as i64;
            log.offset_for_timestamp(timestamp_ms, end).expect("lookup")
        })
    });
    group.finish();
}

/// A log of `SCAN_LOG_BYTES` in several segments, flushed but not closed: an unclean stop.
/// Returns its directory and its log end offset.
fn unclean_log() -> (TempDir, Offset) {
    let now_ms = sluice_storage::now_ms();
    let scratch = ScratchLog::open(recovery_config());
    fill(&scratch.log, &batch_up_to(16 << 10, now_ms), SCAN_LOG_BYTES, now_ms);
    // On disk and in the page cache, so the first recovery does not pay for write-back.
    scratch.log.flush().expect("flush");
    let end = scratch.log.log_end_offset();
    let ScratchLog { log, dir } = scratch;
    drop(log);
    (dir, end)
}

fn recovery_config() -> LogConfig {
    LogConfig { segment_bytes: RECOVERY_SEGMENT_BYTES, ..LogConfig::default() }
}

fn bench_recovery(c: &mut Criterion) {
    let mut fixture = None;
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::BytesDecimal(SCAN_LOG_BYTES as u64));
    group.bench_function("scan", |b| {
        let (dir, end) = fixture.get_or_insert_with(unclean_log);
        let (dir, end) = (dir.path(), *end);
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                // Each open records a recovery point at the log end, which would let the next
                // open trust every segment but the last; without a checkpoint the recovery
                // point is 0 and every segment is scanned and CRC-checked.
                match std::fs::remove_file(dir.join(checkpoint::FILE_NAME)) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        panic!("remove the checkpoint: {err}")
                    }
                    _ => {}
                }
                let start = Instant::now();
                let log = open_log(dir, recovery_config());
                elapsed += start.elapsed();
                assert_eq!(log.log_end_offset(), end, "recovery lost batches");
                // Dropped without close(): the next open is unclean again.
                drop(log);
            }
            elapsed
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // About 75 s for the whole file on a 2-vCPU VM, fixtures included.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = bench_append, bench_durable_append, bench_read, bench_timeindex, bench_recovery
}
criterion_main!(benches);
