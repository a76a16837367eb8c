//! A write that fails part-way (a full disk) leaves the log as it was: the partial bytes are
//! cut, so a later clean shutdown and reopen work. In its own test binary because it lowers
//! the process-wide file size limit to simulate the full disk.

use sluice_storage::{HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatchBuilder};

fn batch(value_size: usize) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new(0);
    builder.push(0, Some(b"k"), Some(&vec![b'v'; value_size]), &[]);
    builder.build().unwrap()
}

#[test]
fn a_failed_write_leaves_no_partial_batch_behind() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default(), HandleCache::new(8)).unwrap();
    log.append(&batch(100), LeaderEpoch(0), 0).unwrap();
    let size = log.size_bytes();
    // SAFETY: plain syscalls; the limit is restored right after the one failing append.
    let failed = unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut old = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_FSIZE, &mut old);
        let limited = libc::rlimit { rlim_cur: size + 100, rlim_max: old.rlim_max };
        libc::setrlimit(libc::RLIMIT_FSIZE, &limited);
        let failed = log.append(&batch(1000), LeaderEpoch(0), 0);
        libc::setrlimit(libc::RLIMIT_FSIZE, &old);
        failed
    };
    assert!(failed.is_err());
    assert_eq!(log.log_end_offset(), Offset(1));
    // Space is back: appends work, and a clean shutdown reopens.
    log.append(&batch(10), LeaderEpoch(0), 0).unwrap();
    log.close().unwrap();
    let reopened = PartitionLog::open(dir.path(), LogConfig::default(), HandleCache::new(8)).unwrap();
    assert_eq!(reopened.log_end_offset(), Offset(2));
    reopened.verify().unwrap();
}
