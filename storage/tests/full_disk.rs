//! A write that fails part-way (a full disk) leaves the log as it was: the partial bytes are
//! cut, so a later clean shutdown and reopen work. In its own test binary because it lowers
//! the process-wide file size limit to simulate the full disk.

use sluice_storage::{HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatchBuilder};

fn batch(value_size: usize) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new(0);
    builder.push(0, Some(b"k"), Some(&vec![b'v'; value_size]), &[]);
    builder.build().unwrap()
}

/// The file size limit is the process's: one test at a time lowers it.
static LIMIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` with files limited to `bytes` (writes past it fail with EFBIG, as on a full disk).
fn with_file_size_limit<T>(bytes: u64, f: impl FnOnce() -> T) -> T {
    // SAFETY: plain syscalls; the limit is restored before returning.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut old = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_FSIZE, &mut old);
        let limited = libc::rlimit { rlim_cur: bytes, rlim_max: old.rlim_max };
        libc::setrlimit(libc::RLIMIT_FSIZE, &limited);
        let result = f();
        libc::setrlimit(libc::RLIMIT_FSIZE, &old);
        result
    }
}

#[test]
fn a_preallocation_that_does_not_fit_leaves_the_log_as_it_was() {
    let _one_at_a_time = LIMIT.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { preallocate: true, segment_bytes: 1 << 20, ..LogConfig::default() };
    let log = PartitionLog::open(dir.path(), config.clone(), HandleCache::new(8)).unwrap();
    log.append(&batch(100), LeaderEpoch(0), 0).unwrap();
    // Files may grow to just under segment.bytes: this segment's batches fit (it rolls before
    // reaching segment.bytes), the next segment's 1 MiB preallocation does not.
    let failed = with_file_size_limit((1 << 20) - 1, || {
        (0..2_000).map(|_| log.append(&batch(1_000), LeaderEpoch(0), 0)).find_map(Result::err)
    });
    assert!(failed.is_some(), "the roll's preallocation was refused");
    let end = log.log_end_offset();
    assert_eq!(log.segment_count(), 1, "no half-made segment");
    // Space is back. A small batch still fits the segment that stayed active; then the roll
    // happens and appends go on.
    log.append(&batch(1), LeaderEpoch(0), 0).unwrap();
    for _ in 0..600 {
        log.append(&batch(1_000), LeaderEpoch(0), 0).unwrap();
    }
    assert!(log.segment_count() >= 2);
    assert_eq!(log.log_end_offset(), Offset(end.0 + 601));
    drop(log);
    let reopened = PartitionLog::open(dir.path(), config, HandleCache::new(8)).unwrap();
    assert_eq!(reopened.log_end_offset(), Offset(end.0 + 601));
    reopened.verify().unwrap();
}

#[test]
fn a_failed_write_leaves_no_partial_batch_behind() {
    let _one_at_a_time = LIMIT.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default(), HandleCache::new(8)).unwrap();
    log.append(&batch(100), LeaderEpoch(0), 0).unwrap();
    let size = log.size_bytes();
    let failed = with_file_size_limit(size + 100, || log.append(&batch(1000), LeaderEpoch(0), 0));
    assert!(failed.is_err());
    assert_eq!(log.log_end_offset(), Offset(1));
    // Space is back: appends work, and a clean shutdown reopens.
    log.append(&batch(10), LeaderEpoch(0), 0).unwrap();
    log.close().unwrap();
    let reopened = PartitionLog::open(dir.path(), LogConfig::default(), HandleCache::new(8)).unwrap();
    assert_eq!(reopened.log_end_offset(), Offset(2));
    reopened.verify().unwrap();
}
