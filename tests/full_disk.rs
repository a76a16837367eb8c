//! A full disk, for real: the broker's data directory is a small tmpfs this test mounts
//! (which needs root; without it the test fails and says so, rather than pass untested).
//! librdkafka produces until the filesystem is full: every refused batch is answered with
//! KAFKA_STORAGE_ERROR, every acknowledged record stays readable while the disk is full,
//! writes work again once the filesystem grows, and after a SIGKILL every acknowledged record
//! is still there, exactly once and in order.

#[allow(dead_code)]
mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::clients::{admin, consumer, create_topic, now_ms, BULK_DEADLINE};
use common::records::{consume_partition, producer, send, test_record, Delivery};
use common::TestBroker;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::Offset;

const VALUE_SIZE: usize = 16 * 1024;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    path: PathBuf,
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in a temporary path")
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("create the mount point");
        let options = CString::new(format!("size={size}")).unwrap();
        // SAFETY: plain syscall with NUL-terminated strings that outlive it.
        let rc = unsafe {
            libc::mount(c"tmpfs".as_ptr(), c_path(path).as_ptr(), c"tmpfs".as_ptr(), 0, options.as_ptr().cast())
        };
        assert_eq!(
            rc,
            0,
            "this test mounts a small tmpfs to fill it, which needs root (CAP_SYS_ADMIN): {}",
            std::io::Error::last_os_error()
        );
        Tmpfs { path: path.to_path_buf() }
    }

    /// Resizes the filesystem in place: space comes back.
    fn resize(&self, size: &str) {
        let options = CString::new(format!("size={size}")).unwrap();
        // SAFETY: as in `mount`.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c_path(&self.path).as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_REMOUNT,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "remount the tmpfs larger: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: plain syscall; MNT_DETACH so that a still-open file cannot keep it mounted.
        unsafe { libc::umount2(c_path(&self.path).as_ptr(), libc::MNT_DETACH) };
    }
}

/// Sends records `from..to` one at a time (acks=all, no retries) and returns their delivery
/// results in order.
fn produce_each(broker: &TestBroker, from: u64, to: u64, base_ms: i64) -> Vec<(u64, Delivery)> {
    let settings =
        [("retries", "0"), ("enable.idempotence", "false"), ("linger.ms", "0"), ("message.timeout.ms", "30000")];
    let producer = producer(broker, &settings);
    let mut results = Vec::new();
    for seq in from..to {
        let mut record = test_record(seq, "disk", base_ms);
        record.value = Some(vec![b'0' + (seq % 10) as u8; VALUE_SIZE]);
        send(&producer, "full", seq, &record);
        producer.flush(BULK_DEADLINE).expect("a delivery report within the deadline");
        let report = producer.context().reports.lock().unwrap().remove(&seq).expect("a delivery report");
        let failed = report.is_err();
        results.push((seq, report));
        if failed && results.iter().filter(|(_, r)| r.is_err()).count() >= 3 {
            break;
        }
    }
    results
}

/// Reads partition 0 from the start and checks it holds exactly `acked` (seq, offset) in
/// order, each record's value as sent.
fn check_exactly(broker: &TestBroker, acked: &[(u64, i64)]) {
    let end = acked.last().map_or(0, |&(_, offset)| offset + 1);
    let messages = consume_partition(&consumer(broker), "full", 0, Offset::Beginning, end);
    assert_eq!(messages.len(), acked.len(), "every acknowledged record, and nothing else");
    for (message, &(seq, offset)) in messages.iter().zip(acked) {
        assert_eq!(message.offset(), offset, "record {seq} at its acknowledged offset");
        assert_eq!(message.payload(), Some(&vec![b'0' + (seq % 10) as u8; VALUE_SIZE][..]), "record {seq}");
    }
}

#[test]
fn a_full_disk_refuses_writes_with_storage_errors_loses_nothing_and_recovers() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let disk = Tmpfs::mount(&scratch.path().join("disk"), "6m");
    let mut broker = TestBroker::start_with_data_dir(
        Some(disk.path.clone()),
        &["offsets.topic.num.partitions=1", "transaction.state.log.num.partitions=1"],
    );
    create_topic(&admin(&broker), "full", 1, &[]);
    let base = now_ms();

    // Fill it: 16 KiB records until the filesystem refuses (6 MiB holds a few hundred).
    let results = produce_each(&broker, 0, 1_000, base);
    let mut acked: Vec<(u64, i64)> =
        results.iter().filter_map(|(s, r)| r.as_ref().ok().map(|&(_, o)| (*s, o))).collect();
    let refused: Vec<_> = results.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "the disk never filled ({} records acknowledged)", acked.len());
    assert!(acked.len() > 100, "only {} records fit before the first refusal", acked.len());
    for err in &refused {
        assert_eq!(err.rdkafka_error_code(), Some(RDKafkaErrorCode::KafkaStorageError), "{err}");
    }

    // While full: every acknowledged record reads back, and writes are still refused.
    check_exactly(&broker, &acked);
    let next = results.last().map_or(0, |(s, _)| s + 1);
    let still_full = produce_each(&broker, next, next + 1, base);
    assert!(still_full[0].1.is_err(), "a write while the disk is full was acknowledged");

    // Space returns: writes resume at the next offset.
    disk.resize("64m");
    let resumed = produce_each(&broker, next + 1, next + 51, base);
    for (seq, report) in &resumed {
        let (_, offset) =
            report.as_ref().unwrap_or_else(|err| panic!("record {seq} refused after space returned: {err}"));
        acked.push((*seq, *offset));
    }
    let offsets: Vec<i64> = acked.iter().map(|&(_, o)| o).collect();
    assert_eq!(offsets, (0..acked.len() as i64).collect::<Vec<_>>(), "offsets are dense: nothing half-written");
    check_exactly(&broker, &acked);

    // And a SIGKILL afterwards loses nothing acknowledged.
    broker.kill9_and_restart();
    check_exactly(&broker, &acked);
    drop(broker);
    drop(disk);
}
