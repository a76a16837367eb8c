//! Log cleaning throughput and memory: a compacted log of 1 KiB values, each of its keys
//! written several times, cleaned through once with a dedupe buffer that holds every key and
//! once with one that needs several passes. Prints MB/s of log cleaned (the bytes the passes
//! read), the passes, the key map's entries and bytes, and the process's peak RSS. Nothing is
//! asserted.
//!
//!   cargo bench -p sluice-storage --bench compaction [-- <log MiB> <keys>]

use std::time::Instant;

use sluice_storage::{HandleCache, LeaderEpoch, LogConfig, PartitionLog, RecordBatchBuilder};

const VALUE_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 16;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn build(dir: &std::path::Path, log_bytes: usize, keys: usize) -> PartitionLog {
    let config = LogConfig {
        compact: true,
        delete: false,
        retention_ms: None,
        segment_bytes: 16 << 20,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir, config, HandleCache::new(256)).expect("open");
    let value = vec![b'v'; VALUE_BYTES];
    let batches = log_bytes / (VALUE_BYTES * RECORDS_PER_BATCH);
    let mut n = 0usize;
    for _ in 0..batches {
        let mut builder = RecordBatchBuilder::new(1_000);
        for _ in 0..RECORDS_PER_BATCH {
            let key = format!("key-{:08}", (n.wrapping_mul(2_654_435_761)) % keys);
            builder.push(1_000, Some(key.as_bytes()), Some(&value), &[]);
            n += 1;
        }
        log.append(&builder.build().expect("batch"), LeaderEpoch(0), 1_000).expect("append");
    }
    log.set_high_watermark(log.log_end_offset());
    log.flush().expect("flush");
    log
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let log_mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(256);
    let keys: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    for (label, budget) in [("whole map", 128usize << 20), ("small map", keys * 32 / 4)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = build(dir.path(), log_mib << 20, keys);
        let before = log.size_bytes();
        let rss_before = peak_rss_kib();
        let start = Instant::now();
        let (mut passes, mut read, mut entries) = (0, 0u64, 0usize);
        while let Some(stats) = log.clean(1_000_000, budget).expect("clean") {
            passes += 1;
            read += stats.bytes_before;
            entries = entries.max(stats.map_entries);
        }
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "compaction {label}: {log_mib} MiB log, {keys} keys, budget {} KiB -> {passes} passes in {seconds:.2} s: {:.0} MB/s of log, {:.0} MB/s read ({:.1} MB), {} -> {} bytes, map {entries} entries (~{} KiB), peak RSS {} -> {} KiB (the log's mapped pages count in it)",
            budget >> 10,
            before as f64 / seconds / 1e6,
            read as f64 / seconds / 1e6,
            read as f64 / 1e6,
            before,
            log.size_bytes(),
            (entries * 32) >> 10,
            rss_before,
            peak_rss_kib(),
        );
    }
}
