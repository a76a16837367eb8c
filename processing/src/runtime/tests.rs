//! The runtime against a broker opened in-process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_broker::InProcessClient;
use sluice_storage::Offset;

use super::*;
use crate::jobs::clickstream::{Clickstream, ClickstreamDataflow, Operators, OUTPUT_TOPICS};
use crate::test_broker;
use bytes::Bytes;
use sluice_broker::clock::ManualClock;

const MINUTE: i64 = 60_000;

fn click(user: u64, page: u64, ts: i64) -> Bytes {
    Bytes::from(format!(r#"{{"user_id":"u-{user}","page":"/p/{page}","ts":{ts}}}"#))
}

fn spec() -> RunSpec {
    RunSpec {
        name: "job".into(),
        input: "clicks".into(),
        commit_interval_ms: 20,
        watermark_bound_ms: 5_000,
        idle_timeout_ms: 600_000,
        fingerprint: "test".into(),
        output_configs: Default::default(),
    }
}

/// Runs the job while `feed` appends clicks (returning how many), until it has read
/// them all and, if given, committed `watermark`; then stops it.
fn run_job(client: &InProcessClient, pool: &Arc<WorkerPool>, feed: impl FnOnce() -> u64, watermark: Option<i64>) {
    let dataflow = ClickstreamDataflow { operators: Operators::ALL };
    let job = spawn(client.clone(), pool.clone(), spec(), "clickstream", dataflow);
    let records = feed();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = job.status.lock().clone();
        let committed = status.last_commit.as_ref().and_then(|c| c.watermark);
        if status.records_in == records && (watermark.is_none() || committed == watermark) {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {status:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    job.stop();
}

fn committed_outputs(client: &InProcessClient) -> Vec<String> {
    let mut out = Vec::new();
    for topic in OUTPUT_TOPICS {
        for partition in 0..2 {
            let mut source =
                LogSource::new(client.reader(topic, partition).unwrap(), Offset(0), Isolation::ReadCommitted);
            for _ in 0..10_000 {
                let records = source.poll(1 << 20).unwrap();
                if records.is_empty() {
                    break;
                }
                out.extend(records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn state_restored_from_changelogs_gives_the_single_threaded_results() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = test_broker::open(dir.path());
    client.ensure_topic("clicks", 2, Default::default()).unwrap();
    let pool = WorkerPool::new(2);
    let base = 1_000 * MINUTE;
    let reference = parking_lot::Mutex::new(Clickstream::new(2, 600_000));
    let records = std::sync::atomic::AtomicU64::new(0);
    let feed = |partition: i32, values: Vec<Bytes>| {
        for value in &values {
            reference.lock().process(partition as usize, value, base);
        }
        test_broker::produce(&client, "clicks", partition, &values);
        records.fetch_add(values.len() as u64, Ordering::SeqCst) + values.len() as u64
    };
    // Three runs, each stopped and restored, with clicks arriving while they run.
    for run in 0..3i64 {
        let steps = || {
            let mut total = 0;
            for step in 0..40i64 {
                let ts = base + (run * 40 + step) * 5_000;
                for partition in 0..2 {
                    let values: Vec<Bytes> =
                        (0..20).map(|i| click((step * 7 + i) as u64 % 60, i as u64 % 9, ts + i)).collect();
                    total = feed(partition, values);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            total
        };
        run_job(&client, &pool, steps, None);
    }
    let changelog = broker.metadata().topic("job-page-views-1m-changelog").cloned().unwrap();
    assert_eq!(changelog.configs.get("cleanup.policy").map(String::as_str), Some("compact"));
    // A click far ahead on both partitions closes everything.
    let end = base + 3 * 40 * 5_000 + 2 * 60 * MINUTE;
    let flush = || (0..2).map(|partition| feed(partition, vec![click(999, 999, end)])).max().unwrap_or(0);
    run_job(&client, &pool, flush, Some(end - 5_000));
    let mut expected: Vec<String> = reference.lock().advance(base).iter().map(|o| o.to_json().to_string()).collect();
    expected.sort();
    assert!(!expected.is_empty());
    assert_eq!(committed_outputs(&client), expected);
    pool.shutdown();
}

#[test]
fn commits_come_when_the_brokers_clock_says_the_interval_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let start_ms = 1_763_700_000_000;
    let clock = ManualClock::new(start_ms);
    let (_broker, client) = test_broker::open_with_clock(dir.path(), clock.clone());
    client.ensure_topic("clicks", 2, Default::default()).unwrap();
    let pool = WorkerPool::new(2);
    let job =
        spawn(client.clone(), pool.clone(), spec(), "clickstream", ClickstreamDataflow { operators: Operators::ALL });
    for partition in 0..2 {
        test_broker::produce(&client, "clicks", partition, &[click(1, 2, 1_000 * MINUTE)]);
    }
    let wait_for = |done: &dyn Fn(&JobStatus) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = job.status.lock().clone();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "the job did not get there: {status:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let read = wait_for(&|status| status.records_in == 2);
    assert_eq!(read.commits, 0, "no commit interval has passed on the broker's clock");
    clock.advance(Duration::from_millis(20));
    let committed = wait_for(&|status| status.commits > 0);
    assert_eq!(committed.last_commit.map(|c| c.at_ms), Some(start_ms + 20), "the commit time is the clock's");
    job.stop();
    pool.shutdown();
}
