//! Crash test: a child process appends with fsync-per-append from several threads and prints
//! each acknowledged batch; the parent SIGKILLs it at pseudo-random moments (50 times),
//! reopens the log, and checks that every batch ever acknowledged is present and intact,
//! that nothing torn is returned, and that the log accepts appends again.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_storage::{
    FlushPolicy, HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatch, RecordBatchBuilder,
};

const CHILD_ENV: &str = "SLUICE_CRASH_CHILD_DIR";
const SEQ_ENV: &str = "SLUICE_CRASH_CHILD_SEQ";
const KILLS: usize = 50;
const APPENDERS: u64 = 4;

fn config() -> LogConfig {
    LogConfig {
        flush_policy: FlushPolicy::EveryAppend,
        // Small segments so that kills also land around rolls.
        segment_bytes: 256 << 10,
        index_interval_bytes: 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// The batch for sequence number `seq`: its shape and content follow from `seq` alone, so the
/// parent can check what it reads back. Some batches are large so that kills land mid-write.
fn batch_for(seq: u64) -> (Vec<u8>, usize) {
    let count = 1 + (seq % 4) as usize;
    let value_size = if seq % 17 == 0 { 60_000 } else { 100 + (seq % 300) as usize };
    let mut builder = RecordBatchBuilder::new(seq as i64);
    for i in 0..count {
        let value = vec![(seq as u8).wrapping_add(i as u8); value_size];
        builder.push(seq as i64 + i as i64, Some(format!("{seq}:{i}").as_bytes()), Some(&value), &[]);
    }
    (builder.build().unwrap(), count)
}

fn check_batch(batch: &RecordBatch, seq: u64) {
    batch.verify_crc().unwrap();
    let (expected, count) = batch_for(seq);
    assert_eq!(batch.record_count() as usize, count, "seq {seq}");
    // Everything after the offset and leader epoch is the producer's bytes, unchanged.
    assert_eq!(&batch.as_bytes()[16..], &expected[16..], "seq {seq} content differs");
}

fn run_child(dir: &Path, first_seq: u64) {
    let log = PartitionLog::open(dir, config(), HandleCache::new(16)).unwrap();
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let threads: Vec<_> = (0..APPENDERS)
        .map(|thread| {
            let log = log.clone();
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                let mut seq = first_seq + thread;
                while Instant::now() < deadline {
                    let (batch, _) = batch_for(seq);
                    let outcome = log.append(&batch, LeaderEpoch(1), seq as i64).unwrap();
                    outcome.wait_durable().unwrap();
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ack {} {seq}", outcome.base_offset).unwrap();
                    out.flush().unwrap();
                    seq += APPENDERS;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Tiny deterministic PRNG (xorshift) for kill delays.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let first_seq = std::env::var(SEQ_ENV).unwrap().parse().unwrap();
        run_child(Path::new(&dir), first_seq);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged: BTreeMap<i64, u64> = BTreeMap::new(); // base offset -> seq
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    let mut total_acks_before_kill = 0;

    for run in 0..KILLS as u64 {
        let first_seq = (run + 1) * 10_000_000;
        let mut child = Command::new(&exe)
            .args(["acknowledged_appends_survive_sigkill", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(SEQ_ENV, first_seq.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ack ") {
                    let (offset, seq) = rest.split_once(' ').unwrap();
                    acks.push((offset.parse::<i64>().unwrap(), seq.parse::<u64>().unwrap()));
                }
            }
            acks
        });
        // Kill somewhere between just after start (during open or recovery) and 150 ms in.
        let delay = next_random(&mut random) % 150;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        total_acks_before_kill += acks.len();
        for (offset, seq) in acks {
            assert!(acknowledged.insert(offset, seq).is_none(), "offset {offset} acknowledged twice");
        }

        // Reopen (recovering) and check every batch ever acknowledged.
        let log = PartitionLog::open(dir.path(), config(), HandleCache::new(16)).unwrap();
        log.verify().unwrap();
        let end = log.log_end_offset();
        for (&offset, &seq) in &acknowledged {
            let read = log.read(Offset(offset), 1, end).unwrap();
            let batch = RecordBatch::iter_batches(read.records).next().expect("acknowledged batch missing").unwrap();
            assert_eq!(batch.base_offset(), offset, "acknowledged batch at {offset} missing (run {run})");
            check_batch(&batch, seq);
        }
        // The whole log reads back as intact batches with dense offsets.
        let mut next = log.log_start_offset().0;
        while next < end.0 {
            let read = log.read(Offset(next), 1 << 20, end).unwrap();
            let records: Bytes = read.records;
            assert!(!records.is_empty(), "read stalled at {next}");
            for batch in RecordBatch::iter_batches(records) {
                let batch = batch.unwrap();
                batch.verify_crc().unwrap();
                assert_eq!(batch.base_offset(), next, "offsets are not dense");
                next = batch.last_offset() + 1;
            }
        }
        // The log accepts appends again.
        let seq = first_seq + 9_000_000;
        let outcome = log.append(&batch_for(seq).0, LeaderEpoch(1), 0).unwrap();
        outcome.wait_durable().unwrap();
        acknowledged.insert(outcome.base_offset.0, seq);
        if run % 2 == 0 {
            log.close().unwrap();
        }
    }
    eprintln!(
        "{total_acks_before_kill} batches acknowledged by killed children; log end {}",
        acknowledged.keys().last().unwrap_or(&0)
    );
    assert!(
        total_acks_before_kill > KILLS,
        "children acknowledged too little to test anything ({total_acks_before_kill})"
    );
}
