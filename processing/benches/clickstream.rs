//! Clickstream job figures; nothing is asserted.
//! - Operators alone on one core: clicks pre-loaded into a partition log, read back
//!   in-process (`LogSource`) and run through each output's operators.
//! - The job through the runtime inside a broker (one worker thread), with its
//!   checkpoints: events per second of wall time and per second of CPU time.
//! - Memory per million active keys, from the resident set size.
//!
//!   cargo bench -p sluice-processing --bench clickstream -- [clicks]    (default 10,000,000)

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_broker::{Broker, BrokerConfig, InProcessClient};
use sluice_processing::clickstream::{Clickstream, ClickstreamDataflow, Operators};
use sluice_processing::runtime::{self, Isolation, LogSource, RunSpec, WorkerPool};
use sluice_storage::{Offset, RecordBatchBuilder};

/// Realistic-looking clicks: 100k users, 5k pages (Zipf-ish), a click every 0.1 ms of event
/// time with up to 4 s of jitter.
fn load(client: &InProcessClient, clicks: u64) {
    let base = 1_763_700_000_000i64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut i = 0u64;
    while i < clicks {
        let mut builder = RecordBatchBuilder::new(base);
        for _ in 0..1000.min(clicks - i) {
            let user = rand() % 100_000;
            let page = (rand() % 5_000) * (rand() % 5_000) / 5_000;
            let ts = base + (i / 10) as i64 - (rand() % 4_000) as i64;
            let value = format!(
                r#"{{"user_id":"u-{user}","page":"/products/{page}","ts":{ts},"referrer":"https://example.com/","user_agent":"Mozilla/5.0"}}"#
            );
            builder.push(ts, Some(format!("u-{user}").as_bytes()), Some(value.as_bytes()), &[]);
            i += 1;
        }
        client.produce("clicks", 0, &builder.build().expect("batch")).expect("append");
    }
}

/// This process's CPU time (user + system) in seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

const OUTPUTS: [(&str, Operators); 4] = [
    ("page-views-1m + top-pages-1m", Operators { views_1m: true, views_5m: false, sessions: false }),
    ("page-views-5m", Operators { views_1m: false, views_5m: true, sessions: false }),
    ("user-sessions", Operators { views_1m: false, views_5m: false, sessions: true }),
    ("all four outputs", Operators::ALL),
];

/// The job run by the runtime over a broker's `clicks` topic, per output.
fn through_the_runtime(client: &InProcessClient, clicks: u64) {
    let pool = WorkerPool::new(1);
    println!("  through the runtime in a broker, one worker thread, a checkpoint every second:");
    for (index, (name, operators)) in OUTPUTS.into_iter().enumerate() {
        let spec = RunSpec {
            name: format!("bench-{index}"),
            input: "clicks".into(),
            commit_interval_ms: 1_000,
            watermark_bound_ms: 5_000,
            idle_timeout_ms: 30_000,
            fingerprint: String::new(),
            output_configs: Default::default(),
        };
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        let job = runtime::spawn(client.clone(), pool.clone(), spec, "clickstream", ClickstreamDataflow { operators });
        let deadline = Instant::now() + Duration::from_secs(3_600);
        while job.status.lock().records_in < clicks && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (seconds, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu_start);
        let out = job.status.lock().records_out;
        job.stop();
        println!(
            "    {name}: {:.2} M events/s, {:.2} M events per CPU-second ({out} results so far)",
            clicks as f64 / seconds / 1e6,
            clicks as f64 / cpu / 1e6
        );
    }
    pool.shutdown();
}

/// Resident memory per active key: a million clicks, each a new user on a new page within
/// one minute, so every operator holds a million keys open. Each output is measured in a
/// fresh process, so memory freed by the one before does not hide growth.
fn memory_per_million_keys() {
    println!("  memory per million active keys (resident set growth, one process each):");
    for (index, (name, _)) in OUTPUTS.into_iter().enumerate() {
        let output = std::env::current_exe()
            .and_then(|exe| std::process::Command::new(exe).args(["--memory-child", &index.to_string()]).output());
        match output {
            Ok(output) => println!("    {name}: {}", String::from_utf8_lossy(&output.stdout).trim()),
            Err(err) => println!("    {name}: cannot run the measurement: {err}"),
        }
    }
}

fn memory_child(index: usize) {
    let Some((_, operators)) = OUTPUTS.get(index) else { return };
    // A minute boundary.
    let minute = 1_763_699_980_000i64;
    let before = resident_bytes();
    let mut job = Clickstream::with_operators(1, 60_000, *operators);
    for i in 0..1_000_000i64 {
        let value = format!(r#"{{"user_id":"user-{i}","page":"/products/{i}","ts":{}}}"#, minute + i % 50_000);
        job.process(0, &Bytes::from(value), minute);
    }
    let grown = resident_bytes().saturating_sub(before);
    println!("{:.0} MB ({} bytes per key)", grown as f64 / 1e6, grown / 1_000_000);
    drop(job);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(index) = args.iter().position(|a| a == "--memory-child") {
        memory_child(args.get(index + 1).and_then(|i| i.parse().ok()).unwrap_or(0));
        return;
    }
    let clicks: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000_000);
    // One broker holds the clicks for every measurement.
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    for (key, value) in [("offsets.topic.num.partitions", "1"), ("transaction.state.log.num.partitions", "1")] {
        config.apply(key, value).expect("config");
    }
    let broker = Broker::open(config).expect("broker");
    let client = InProcessClient::new(broker.clone());
    client.ensure_topic("clicks", 1, [("retention.ms".to_string(), "-1".to_string())].into()).expect("topic");
    load(&client, clicks);
    let reader = || client.reader("clicks", 0).expect("partition");

    // Reading alone: the floor of what the job can do.
    let start = Instant::now();
    let mut source = LogSource::new(reader(), Offset(0), Isolation::ReadCommitted);
    let mut read = 0u64;
    loop {
        let records = source.poll(4 << 20).expect("poll");
        if records.is_empty() {
            break;
        }
        read += records.len() as u64;
    }
    let read_secs = start.elapsed().as_secs_f64();

    println!("clickstream clicks={clicks} read={:.2} M records/s", read as f64 / read_secs / 1e6);
    println!("  operators alone, one thread:");
    for (name, operators) in OUTPUTS {
        let start = Instant::now();
        let mut source = LogSource::new(reader(), Offset(0), Isolation::ReadCommitted);
        let mut job = Clickstream::with_operators(1, 60_000, operators);
        let mut outputs = 0usize;
        loop {
            let records = source.poll(4 << 20).expect("poll");
            if records.is_empty() {
                break;
            }
            for record in &records {
                if let Some(value) = &record.value {
                    job.process(0, value, 1_763_700_000_000);
                }
            }
            outputs += job.advance(1_763_700_000_000).len();
        }
        outputs += job.finish().len();
        let seconds = start.elapsed().as_secs_f64();
        println!("    {name}: {:.2} M events/s/core ({outputs} results)", clicks as f64 / seconds / 1e6);
    }
    through_the_runtime(&client, clicks);
    broker.shutdown();
    drop(dir);
    memory_per_million_keys();
}
