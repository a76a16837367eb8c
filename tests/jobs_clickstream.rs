//! The built-in clickstream job, end to end: clicks produced with librdkafka into 8
//! partitions (lz4-compressed), the job run by the broker, its four outputs read back with a read_committed
//! consumer and compared with a brute-force reference computed here. The broker is
//! SIGKILLed a dozen times while the job runs; the outputs must still be exactly the
//! reference: nothing missing, nothing twice, nothing changed.

#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::clients::{describe_topic_configs, now_ms, BULK_DEADLINE};
use common::jobs::{admin_request, read_committed_json, wait_for_job};
use common::{run_sluice, TestBroker};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde_json::{json, Value};

const MINUTE: i64 = 60_000;
const GAP: i64 = 30 * MINUTE;
const PARTITIONS: i32 = 8;
const JOB: &str = "clicks-e2e";

/// xorshift: the same data set on every run.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Debug)]
struct Click {
    user: String,
    page: String,
    ts: i64,
}

impl Click {
    fn json(&self) -> String {
        json!({"user_id": self.user, "page": self.page, "ts": self.ts,
               "referrer": "https://example.com/", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"})
        .to_string()
    }
}

/// Clicks `i` in `range`: a click every 200 ms of event time, up to 4 s out of order, users
/// coming and going (so sessions close), pages skewed towards a few popular ones.
fn clicks(base: i64, range: std::ops::Range<i64>, rand: &mut Rand) -> Vec<Click> {
    range
        .map(|i| {
            let ts = base + i * 200 - (rand.next() % 4_000) as i64;
            let user = format!("u-{}", (i / 3_000) * 25 + (rand.next() % 40) as i64);
            let page = format!("/products/{}", (rand.next() % 30) * (rand.next() % 30) / 30);
            Click { user, page, ts }
        })
        .collect()
}

/// What the job must produce from `clicks` (the on-time ones), computed the obvious way.
fn reference(clicks: &[Click]) -> BTreeMap<&'static str, Vec<(String, Value)>> {
    let mut minute: BTreeMap<(i64, String), (u64, BTreeSet<String>)> = BTreeMap::new();
    let mut five: BTreeMap<(i64, String), u64> = BTreeMap::new();
    let mut by_user: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for click in clicks {
        let start = click.ts - click.ts.rem_euclid(MINUTE);
        let entry = minute.entry((start, click.page.clone())).or_default();
        entry.0 += 1;
        entry.1.insert(click.user.clone());
        for k in 0..5 {
            *five.entry((start - k * MINUTE, click.page.clone())).or_default() += 1;
        }
        by_user.entry(click.user.clone()).or_default().push((click.ts, click.page.clone()));
    }
    let mut out: BTreeMap<&'static str, Vec<(String, Value)>> = BTreeMap::new();
    let mut ranking: BTreeMap<i64, Vec<(String, u64)>> = BTreeMap::new();
    for ((start, page), (views, users)) in &minute {
        let value = json!({"page": page, "window_start": start, "window_end": start + MINUTE,
                           "views": views, "unique_users": users.len()});
        out.entry("page-views-1m").or_default().push((page.clone(), value));
        ranking.entry(*start).or_default().push((page.clone(), *views));
    }
    for (start, mut pages) in ranking {
        pages.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        pages.truncate(10);
        let top: Vec<Value> = pages.iter().map(|(page, views)| json!({"page": page, "views": views})).collect();
        let value = json!({"window_start": start, "window_end": start + MINUTE, "top": top});
        out.entry("top-pages-1m").or_default().push((start.to_string(), value));
    }
    for ((start, page), views) in five {
        let value = json!({"page": page, "window_start": start, "window_end": start + 5 * MINUTE, "views": views});
        out.entry("page-views-5m").or_default().push((page, value));
    }
    for (user, mut events) in by_user {
        events.sort();
        let mut sessions: Vec<Vec<(i64, String)>> = Vec::new();
        for event in events {
            match sessions.last_mut() {
                Some(session) if event.0 <= session.last().expect("non-empty").0 + GAP => session.push(event),
                _ => sessions.push(vec![event]),
            }
        }
        for session in sessions {
            let pages: BTreeSet<&String> = session.iter().map(|(_, page)| page).collect();
            let value = json!({"user_id": user, "session_start": session[0].0,
                               "session_end": session[session.len() - 1].0,
                               "clicks": session.len(), "distinct_pages": pages.len()});
            out.entry("user-sessions").or_default().push((user.clone(), value));
        }
    }
    for records in out.values_mut() {
        records.sort_by_key(|(key, value)| (key.clone(), value.to_string()));
    }
    out
}

fn send(producer: &ThreadedProducer<common::records::DeliveryLog>, partition: i32, key: &str, value: &str) {
    let record = BaseRecord::with_opaque_to("clicks", 0).partition(partition).key(key).payload(value);
    producer.send(record).map_err(|(err, _)| err).expect("queue a click");
}

fn flush(producer: &ThreadedProducer<common::records::DeliveryLog>) {
    producer.flush(BULK_DEADLINE).expect("every click acknowledged");
}

fn committed_watermark(status: &Value) -> i64 {
    status["last_commit"]["watermark"].as_i64().unwrap_or(i64::MIN)
}

#[test]
fn outputs_equal_the_reference_exactly_across_broker_kills() {
    // Segments rolled every 2 s and a busy cleaner: the changelogs and internal topics are
    // compacted while the kills happen.
    let mut broker = TestBroker::start(&[
        &format!("num.partitions={PARTITIONS}"),
        "offsets.topic.num.partitions=1",
        "transaction.state.log.num.partitions=1",
        "log.roll.ms=2000",
        "offsets.topic.segment.bytes=65536",
        "transaction.state.log.segment.bytes=65536",
        "log.cleaner.backoff.ms=200",
        "log.cleaner.threads=2",
    ]);
    let definition = json!({"name": JOB, "kind": "clickstream", "commit_interval_ms": 100,
                            "idle_timeout_ms": 600_000});
    let (code, body) = admin_request(&broker, "POST", "/v1/jobs", &definition.to_string());
    assert_eq!(code, 201, "{body}");

    // Event time starts three hours ago, so nothing is absurd and retention keeps it all.
    let base = now_ms() - 3 * 60 * MINUTE;
    let base = base - base.rem_euclid(MINUTE);
    let mut rand = Rand(0x5eed_c11c);
    // Compressed batches: the job's source decompresses them.
    let producer = common::records::producer(&broker, &[("enable.idempotence", "true"), ("compression.type", "lz4")]);
    let mut on_time = Vec::new();
    let (mut malformed, mut absurd, mut records) = (0u64, 0u64, 0u64);
    let late_clicks = 16;
    // A broker SIGKILL after each chunk: 12, or 60 with SLUICE_LONG_TESTS=1.
    let chunks: i64 = if std::env::var("SLUICE_LONG_TESTS").is_ok_and(|v| v == "1") { 60 } else { 12 };
    const PER_CHUNK: i64 = 2_000;
    for chunk in 0..chunks {
        for (n, click) in clicks(base, chunk * PER_CHUNK..(chunk + 1) * PER_CHUNK, &mut rand).into_iter().enumerate() {
            send(&producer, n as i32 % PARTITIONS, &click.user, &click.json());
            on_time.push(click);
            records += 1;
        }
        // Bad input, which the job must count and skip.
        let partition = chunk as i32 % PARTITIONS;
        send(&producer, partition, "bad", "{\"user_id\": \"u-1\", \"page\": ");
        send(&producer, partition, "bad", r#"{"user_id":"u-1","ts":5}"#);
        send(&producer, partition, "bad", "\u{1}\u{2} not json at all");
        malformed += 3;
        let far_future = now_ms() + 10 * 24 * 60 * MINUTE;
        send(&producer, partition, "bad", &json!({"user_id": "u-1", "page": "/x", "ts": far_future}).to_string());
        send(&producer, partition, "bad", &json!({"user_id": "u-1", "page": "/x", "ts": -5}).to_string());
        absurd += 2;
        records += 5;
        flush(&producer);

        if chunk == chunks / 2 {
            // Late clicks: once a commit has recorded a watermark 35 minutes in, clicks from
            // before the first minute are late for every window and session, whatever the
            // kills do (a restored watermark never goes below a committed one).
            wait_for_job(&broker, JOB, Duration::from_secs(120), "commit a watermark 35 minutes in", |s| {
                committed_watermark(s) >= base + 35 * MINUTE
            });
            for n in 0..late_clicks {
                let click = Click { user: format!("late-{n}"), page: "/late".into(), ts: base - 1 - n * 1_000 };
                send(&producer, n as i32 % PARTITIONS, &click.user, &click.json());
                records += 1;
            }
            flush(&producer);
        }
        // The job is somewhere in reading, processing or committing this chunk.
        std::thread::sleep(Duration::from_millis(rand.next() % 700));
        broker.kill9_and_restart();
    }

    // A click far ahead in every partition closes every window and session.
    let max_ts = on_time.iter().map(|c| c.ts).max().expect("clicks");
    let flush_ts = max_ts + 2 * 60 * MINUTE;
    for partition in 0..PARTITIONS {
        let click = Click { user: format!("flush-{partition}"), page: "/flush".into(), ts: flush_ts };
        send(&producer, partition, &click.user, &click.json());
        records += 1;
    }
    flush(&producer);
    let status = wait_for_job(&broker, JOB, Duration::from_secs(180), "commit everything", |s| {
        committed_watermark(s) == flush_ts - 5_000
            && s["partitions"].as_array().is_some_and(|ps| ps.iter().all(|p| p["lag"] == 0))
            && s["records_in"] == records
    });
    assert_eq!(status["state"], "running", "{status:#}");
    assert_eq!(status["malformed_records"], malformed, "{status:#}");
    assert_eq!(status["absurd_timestamps"], absurd, "{status:#}");
    for operator in ["page-views-1m", "page-views-5m", "user-sessions"] {
        assert_eq!(status["late_records"][operator], late_clicks, "late clicks dropped by {operator}: {status:#}");
    }

    let expected = reference(&on_time);
    let mut total = 0;
    for (topic, want) in &expected {
        let mut got = read_committed_json(&broker, topic, PARTITIONS);
        got.sort_by_key(|(key, value)| (key.clone(), value.to_string()));
        assert_eq!(got.len(), want.len(), "{topic}: number of results");
        for (got, want) in got.iter().zip(want) {
            assert_eq!(got, want, "{topic}");
        }
        total += got.len();
    }
    assert_eq!(status["records_out"], total, "{status:#}");
    let log = broker.log();
    let cleaned = |topic: &str| log.lines().any(|l| l.contains("log cleaned") && l.contains(topic));
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("log cleaned")).collect();
    assert!(
        cleaned("changelog") && cleaned("__consumer_offsets"),
        "the cleaner compacted the job's topics: {lines:#?}"
    );
}

#[test]
fn job_definitions_with_errors_are_refused_and_jobs_survive_a_restart() {
    let mut broker = TestBroker::start(&["offsets.topic.num.partitions=1", "transaction.state.log.num.partitions=1"]);
    for (body, message) in [
        ("{not json", "not valid"),
        (r#"{"name":"x","kind":"wordcount"}"#, "unknown job kind"),
        (r#"{"name":"x y","kind":"clickstream"}"#, "may only use"),
        (r#"{"name":"x","kind":"clickstream","commit_interval_ms":0}"#, "commit_interval_ms"),
        (r#"{"name":"x","kind":"clickstream","window":"1m"}"#, "unknown field `window`"),
    ] {
        let (code, answer) = admin_request(&broker, "POST", "/v1/jobs", body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains(message)), "{body}: {answer}");
    }
    let (code, _) = admin_request(&broker, "GET", "/v1/jobs/nope", "");
    assert_eq!(code, 404);

    // The CLI starts the built-in job; a second start is refused.
    // The admin port stays the same across restarts.
    let admin = broker.admin();
    let cli = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--admin", &admin]);
        run_sluice(&full, Duration::from_secs(60))
    };
    // Started from a file that sets a config of the outputs the job creates; the others get
    // the job default (stamped when written, so retention counts from then).
    let file = broker.data_dir().with_extension("job.json");
    let definition = json!({"name": "clickstream", "kind": "clickstream",
                            "output_configs": {"retention.ms": "172800000"}});
    std::fs::write(&file, definition.to_string()).expect("write the job file");
    cli(&["job", "start", "--file", file.to_str().expect("utf-8 path")]).success("sluice job start --file");
    let again = cli(&["job", "start", "clickstream"]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("already running"), "{}", again.stderr);
    wait_for_job(&broker, "clickstream", Duration::from_secs(60), "run", |s| s["state"] == "running");
    let configs = describe_topic_configs(&common::clients::admin(&broker), "page-views-1m");
    let value = |key: &str| configs.get(key).and_then(|entry| entry.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some("172800000"));
    assert_eq!(value("message.timestamp.type").as_deref(), Some("LogAppendTime"));

    // Jobs start again with the broker, after a clean stop and after SIGKILL.
    broker.restart();
    wait_for_job(&broker, "clickstream", Duration::from_secs(60), "run after a restart", |s| s["state"] == "running");
    broker.kill9_and_restart();
    wait_for_job(&broker, "clickstream", Duration::from_secs(60), "run after a kill", |s| s["state"] == "running");
    assert!(cli(&["job", "list"]).success("sluice job list").stdout.contains("clickstream"));
    let status = cli(&["job", "status", "clickstream"]).success("sluice job status").stdout;
    assert!(status.contains("job clickstream (clickstream) running"), "{status}");
    assert!(status.contains("PARTITION") && status.contains("LAG"), "{status}");
    let json = cli(&["job", "status", "clickstream", "--json"]).success("sluice job status --json");
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("status --json prints JSON");
    assert_eq!(json["input"], "clicks");

    cli(&["job", "stop", "clickstream"]).success("sluice job stop");
    let (code, jobs) = admin_request(&broker, "GET", "/v1/jobs", "");
    assert_eq!((code, jobs), (200, json!([])));
    broker.restart();
    let (_, jobs) = admin_request(&broker, "GET", "/v1/jobs", "");
    assert_eq!(jobs, json!([]), "a stopped job does not come back");
}

#[test]
fn the_demo_shows_the_top_pages_from_a_running_broker() {
    let broker = TestBroker::start(&["offsets.topic.num.partitions=1", "transaction.state.log.num.partitions=1"]);
    // A minute closes at most 65 s in (its end, plus the 5 s watermark bound).
    let (bootstrap, admin) = (broker.bootstrap(), broker.admin());
    let args =
        ["demo", "clickstream", "--duration", "75", "--rate", "500", "--bootstrap", &bootstrap, "--admin", &admin];
    // --duration ends it; the deadline is for a demo that would not stop.
    let stdout = run_sluice(&args, Duration::from_secs(180)).success("sluice demo clickstream").stdout;
    let ranking = stdout.split("top pages ").skip(1).find(|part| part.contains(" UTC:\n"));
    let ranking = ranking.unwrap_or_else(|| panic!("no top pages were shown:\n{stdout}"));
    assert!(ranking.contains("   1. "), "{ranking}");
    let status = common::jobs::job_status(&broker, "clickstream");
    assert_eq!(status["state"], "running", "the demo leaves a broker it did not start running its job");
    assert!(status["records_in"].as_u64().is_some_and(|n| n > 10_000), "{status:#}");
}
