//! `clickstream-latency`: end-to-end latency of the in-broker clickstream job at a steady
//! offered rate. Clicks stamped with the wall clock go in through librdkafka; a minute's
//! page counts can be complete once a click 5 s past the minute's end is appended (the
//! watermark bound), so a result's latency is when a read_committed consumer sees it minus
//! that moment.

use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::{consumer, create_topic, now_ns, percentile, producer_config, Counting};

#[derive(Args, Clone)]
pub struct ClickstreamLatencyArgs {
    /// Offered clicks per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// How long to offer load; a result comes once a minute, so several minutes.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    #[arg(long, default_value_t = 1000)]
    commit_interval_ms: u64,
}

const WATERMARK_BOUND_MS: i64 = 5_000;

fn now_ms() -> i64 {
    (now_ns() / 1_000_000) as i64
}

/// POSTs the job definition to the admin API.
fn start_job(admin: &str, body: &str) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).expect("connect to the admin API");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let request = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 201"), "the job was not started: {response}");
}

pub fn run(bootstrap: &str, admin: &str, args: &ClickstreamLatencyArgs) {
    let topic = format!("clicks-{}", now_ns());
    create_topic(bootstrap, &topic, args.partitions);
    let name = format!("latency-{}", now_ns());
    start_job(
        admin,
        &format!(
            r#"{{"name":"{name}","kind":"clickstream","input":"{topic}","commit_interval_ms":{}}}"#,
            args.commit_interval_ms
        ),
    );
    // The job creates its outputs as it starts.
    let consumer: BaseConsumer =
        consumer(bootstrap, &[("isolation.level", "read_committed"), ("fetch.wait.max.ms", "50")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let partitions = loop {
        let metadata = consumer.fetch_metadata(Some("page-views-1m"), Duration::from_secs(10)).expect("metadata");
        let count = metadata.topics().first().map_or(0, |t| t.partitions().len());
        if count > 0 {
            break count as i32;
        }
        assert!(Instant::now() < deadline, "the job did not create page-views-1m");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset("page-views-1m", partition, Offset::End).expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let seconds = args.seconds;
    let receiver = std::thread::spawn(move || {
        // Per closed minute: (window end, latencies of its page results in ms).
        let mut windows: std::collections::BTreeMap<i64, Vec<u64>> = Default::default();
        let until = Instant::now() + Duration::from_secs(seconds + 30);
        while Instant::now() < until {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else { continue };
            let seen = now_ms();
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or_default();
            if let Some(end) = value["window_end"].as_i64() {
                let closable = end + WATERMARK_BOUND_MS;
                windows.entry(end).or_default().push(seen.saturating_sub(closable) as u64);
            }
        }
        windows
    });
    let producer: ThreadedProducer<Counting> = producer_config(bootstrap, -1, 1_000_000, 5, "none")
        .create_with_context(Counting::default())
        .expect("producer");
    let start = Instant::now();
    let total = args.rate * args.seconds;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (user, page) = (seed % 50_000, (seed >> 20) % 300 * ((seed >> 40) % 300) / 300);
        let value = format!(
            r#"{{"user_id":"u-{user}","page":"/products/{page}","ts":{},"referrer":"https://example.com/","user_agent":"Mozilla/5.0"}}"#,
            now_ms()
        );
        let key = format!("u-{user}");
        let record = BaseRecord::to(&topic).key(&key).payload(&value).partition((i % args.partitions as u64) as i32);
        if let Err((err, _)) = producer.send(record) {
            panic!("send failed: {err}");
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let windows = receiver.join().expect("receiver");
    // A window's first result: when the minute became visible at all.
    let mut first: Vec<u64> = windows.values().filter_map(|l| l.iter().min().copied()).collect();
    let mut all: Vec<u64> = windows.values().flatten().copied().collect();
    first.sort_unstable();
    all.sort_unstable();
    let ms = |sorted: &[u64], p: f64| percentile(sorted, p) * 1e6;
    println!(
        "clickstream-latency rate={}/s partitions={} commit_interval_ms={} windows={} results={} -> first result of a minute p50={:.0}ms max={:.0}ms; all results p50={:.0}ms p99={:.0}ms max={:.0}ms",
        args.rate,
        args.partitions,
        args.commit_interval_ms,
        first.len(),
        all.len(),
        ms(&first, 50.0),
        ms(&first, 100.0),
        ms(&all, 50.0),
        ms(&all, 99.0),
        ms(&all, 100.0)
    );
}
