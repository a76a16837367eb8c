//! Jobs written with the Rust builder API, run by the runtime inside a broker opened
//! in-process: a windowed count with filter, flat_map and map steps; a keyed process
//! function with state and event-time timers; and raw-bytes formats. Each is stopped and
//! restored from its checkpoint halfway, and its committed output must equal a brute-force
//! reference.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_broker::{Broker, BrokerConfig, InProcessClient};
use sluice_processing::builder::{source, Aggregate, Context, Count, Json, ProcessFunction, Raw, WindowSpec};
use sluice_processing::runtime::{self, Isolation, LogSource, RunSpec, WorkerPool};
use sluice_processing::Dataflow;
use sluice_storage::{Offset, RecordBatchBuilder};

const PARTITIONS: i32 = 3;

fn broker(dir: &std::path::Path) -> (Arc<Broker>, InProcessClient) {
    let mut config = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    config.apply("offsets.topic.num.partitions", "1").unwrap();
    config.apply("transaction.state.log.num.partitions", "1").unwrap();
    let broker = Broker::open(config).unwrap();
    let client = InProcessClient::new(broker.clone());
    client.ensure_topic("in", PARTITIONS, Default::default()).unwrap();
    (broker, client)
}

/// (key, value, timestamp) of a record to append.
type Record<'a> = (Option<&'a [u8]>, Vec<u8>, i64);

fn append(client: &InProcessClient, partition: i32, records: &[Record]) {
    let mut builder = RecordBatchBuilder::new(0);
    for (key, value, timestamp) in records {
        builder.push(*timestamp, *key, Some(value), &[]);
    }
    client.produce("in", partition, &builder.build().unwrap()).unwrap();
}

/// Runs `job` until it has read `records` and committed all it did (with at least
/// `watermark`), then stops it.
fn run<D: Dataflow>(client: &InProcessClient, job: D, watermark_bound_ms: i64, records: u64, watermark: i64) {
    let pool = WorkerPool::new(2);
    let spec = RunSpec {
        name: "built".into(),
        input: "in".into(),
        commit_interval_ms: 20,
        watermark_bound_ms,
        idle_timeout_ms: 600_000,
        fingerprint: String::new(),
        output_configs: Default::default(),
    };
    let handle = runtime::spawn(client.clone(), pool.clone(), spec, "built", job);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = handle.status.lock().clone();
        let committed = status.last_commit.as_ref().and_then(|c| c.watermark);
        let all_committed = status.partitions.iter().all(|p| p.committed_offset == p.offset);
        if status.records_in == records && all_committed && committed >= Some(watermark) {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {status:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.stop();
    pool.shutdown();
}

fn committed(client: &InProcessClient, topic: &str) -> Vec<Bytes> {
    let mut values = Vec::new();
    for partition in 0..PARTITIONS {
        let mut source = LogSource::new(client.reader(topic, partition).unwrap(), Offset(0), Isolation::ReadCommitted);
        for _ in 0..10_000 {
            let records = source.poll(1 << 20).unwrap();
            if records.is_empty() {
                break;
            }
            values.extend(records.into_iter().filter_map(|r| r.value));
        }
    }
    values
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Click {
    user_id: String,
    page: String,
    ts: i64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct PageCount {
    page: String,
    window_start: i64,
    views: u64,
}

fn click(user: u64, page: &str, ts: i64) -> Vec<u8> {
    serde_json::to_vec(&Click { user_id: format!("u-{user}"), page: page.into(), ts }).unwrap()
}

/// Clicks `range`, 100 ms apart with up to 3 s of jitter, on the partitions in turn.
fn clicks(client: &InProcessClient, range: std::ops::Range<i64>, all: &mut Vec<Click>) -> u64 {
    for i in range.clone() {
        let page = ["/", "/health", "/products/1", "/products/2", "/cart"][(i * 7 % 5) as usize];
        let ts = 600_000 + i * 100 - (i * 37) % 3_000;
        let value = click((i * 13 % 17) as u64, page, ts);
        append(client, (i % PARTITIONS as i64) as i32, &[(None, value.clone(), ts)]);
        all.push(serde_json::from_slice(&value).unwrap());
    }
    range.count() as u64
}

/// Closes everything: a click far ahead on every partition.
fn flush(client: &InProcessClient, ts: i64) -> u64 {
    for partition in 0..PARTITIONS {
        append(client, partition, &[(None, click(999, "/flush", ts), ts)]);
    }
    PARTITIONS as u64
}

#[test]
fn a_windowed_count_with_stateless_steps_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, client) = broker(dir.path());
    let build = || {
        source("in", Json::<Click>::default())
            .filter(|c| c.page != "/health")
            // Product pages also count towards their section.
            .flat_map(|c| {
                let section =
                    c.page.starts_with("/products/").then(|| Click { page: "/products/*".into(), ..c.clone() });
                std::iter::once(c).chain(section)
            })
            .map(|c| Click { page: c.page.to_uppercase(), ..c })
            .timestamps(|c| c.ts, 5_000)
            .key_by(|c| c.page.clone())
            .window(WindowSpec::Tumbling { size_ms: 60_000 })
            .aggregate(
                |count: &mut Count, _| count.add(&()),
                |page, window, views| PageCount { page: page.clone(), window_start: window.start, views },
            )
            .sink("page-counts", Json::default())
            .unwrap()
    };
    let mut all = Vec::new();
    // Some minutes close in the first run, others are open when it stops.
    let mut records = clicks(&client, 0..2_000, &mut all);
    run(&client, build(), 5_000, records, 0);
    records += clicks(&client, 2_000..4_000, &mut all);
    let end = 10_000_000;
    records += flush(&client, end);
    run(&client, build(), 5_000, records, end - 5_000);

    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for c in all.iter().filter(|c| c.page != "/health") {
        let start = c.ts - c.ts.rem_euclid(60_000);
        *expected.entry((c.page.to_uppercase(), start)).or_default() += 1;
        if c.page.starts_with("/products/") {
            *expected.entry(("/PRODUCTS/*".into(), start)).or_default() += 1;
        }
    }
    let expected: Vec<PageCount> =
        expected.into_iter().map(|((page, window_start), views)| PageCount { page, window_start, views }).collect();
    let mut got: Vec<PageCount> =
        committed(&client, "page-counts").iter().map(|v| serde_json::from_slice(v).unwrap()).collect();
    got.sort();
    assert_eq!(got, expected);
}

const GAP: i64 = 10_000;

#[derive(Default, Serialize, Deserialize)]
struct Session {
    start: i64,
    last: i64,
    clicks: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct SessionOut {
    user: String,
    start: i64,
    last: i64,
    clicks: u64,
}

/// Sessions by hand: state per user, and a timer at the last click + the gap.
struct Sessions;

impl ProcessFunction<String, Click> for Sessions {
    type State = Session;
    type Output = SessionOut;

    fn process(&self, user: &String, _: Click, time: i64, context: &mut Context<'_, Session, SessionOut>) {
        let session = &mut *context.state;
        if session.clicks > 0 && time > session.last + GAP {
            // The previous session ended before this click: its timer has not fired yet.
            let done =
                SessionOut { user: user.clone(), start: session.start, last: session.last, clicks: session.clicks };
            let old_timer = session.last + GAP;
            *session = Session::default();
            context.delete_timer(old_timer);
            context.emit(done.last, done);
        }
        let session = &mut *context.state;
        if session.clicks == 0 {
            session.start = time;
            session.last = time;
        }
        let old_timer = session.last + GAP;
        session.start = session.start.min(time);
        session.last = session.last.max(time);
        session.clicks += 1;
        let new_timer = session.last + GAP;
        context.delete_timer(old_timer);
        context.register_timer(new_timer);
    }

    fn on_timer(&self, user: &String, _: i64, context: &mut Context<'_, Session, SessionOut>) {
        let s = &*context.state;
        let done = SessionOut { user: user.clone(), start: s.start, last: s.last, clicks: s.clicks };
        context.emit(done.last, done);
        context.clear_state();
    }
}

#[test]
fn a_process_function_with_timers_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, client) = broker(dir.path());
    let build = || {
        source("in", Json::<Click>::default())
            .timestamps(|c| c.ts, 5_000)
            .key_by(|c| c.user_id.clone())
            .process(Sessions)
            .sink("sessions", Json::default())
            .unwrap()
    };
    let mut all = Vec::new();
    // Users click in bursts: each user is active for a while, then silent past the gap.
    let mut records = 0;
    let mut append_clicks = |range: std::ops::Range<i64>, all: &mut Vec<Click>| {
        for i in range {
            let user = (i / 200) * 3 + i % 3;
            let ts = 600_000 + i * 150 - (i * 37) % 3_000;
            let value = click(user as u64, "/", ts);
            append(&client, (i % PARTITIONS as i64) as i32, &[(None, value.clone(), ts)]);
            all.push(serde_json::from_slice(&value).unwrap());
            records += 1;
        }
        records
    };
    let records_first = append_clicks(0..1_500, &mut all);
    run(&client, build(), 5_000, records_first, 0);
    let mut records = append_clicks(1_500..3_000, &mut all);
    let end = 10_000_000;
    records += flush(&client, end);
    run(&client, build(), 5_000, records, end - 5_000);

    let mut by_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for c in &all {
        by_user.entry(c.user_id.clone()).or_default().push(c.ts);
    }
    let mut expected = Vec::new();
    for (user, mut times) in by_user {
        times.sort();
        let mut session: Option<SessionOut> = None;
        for t in times {
            match &mut session {
                Some(s) if t <= s.last + GAP => {
                    s.last = t;
                    s.clicks += 1;
                }
                _ => {
                    expected.extend(session.take());
                    session = Some(SessionOut { user: user.clone(), start: t, last: t, clicks: 1 });
                }
            }
        }
        expected.extend(session);
    }
    expected.sort();
    let mut got: Vec<SessionOut> =
        committed(&client, "sessions").iter().map(|v| serde_json::from_slice(v).unwrap()).collect();
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn raw_bytes_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, client) = broker(dir.path());
    let job = source("in", Raw)
        .filter(|r| r.value.as_ref().is_some_and(|v| !v.is_empty()))
        .timestamps(|r| r.timestamp_ms, 0)
        .key_by(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .window(WindowSpec::Tumbling { size_ms: 1_000 })
        .aggregate(
            |bytes: &mut Count, r| bytes.0 += r.value.as_ref().map_or(0, |v| v.len() as u64),
            |key, window, bytes| format!("{key}@{}={bytes}", window.start).into_bytes(),
        )
        .sink("byte-counts", Raw)
        .unwrap();
    for (partition, key, value, ts) in
        [(0, "a", "xx", 100), (1, "a", "yyy", 900), (2, "b", "z", 1_500), (0, "a", "", 200)]
    {
        append(&client, partition, &[(Some(key.as_bytes()), value.as_bytes().to_vec(), ts)]);
    }
    for partition in 0..PARTITIONS {
        append(&client, partition, &[(Some(b"end"), b"!".to_vec(), 100_000)]);
    }
    let bound = job.watermark_bound_ms();
    run(&client, job, bound, 7, 100_000);
    let mut got: Vec<String> =
        committed(&client, "byte-counts").iter().map(|v| String::from_utf8(v.to_vec()).unwrap()).collect();
    got.sort();
    assert_eq!(got, ["a@0=5", "b@1000=1"]);
}
