//! Clickstream job throughput on one core: clicks pre-loaded into a partition log, read back
//! in-process (`LogSource`) and run through the job's operators (all four outputs). Prints
//! events per second; nothing is asserted.
//!
//!   cargo bench -p sluice-processing --bench clickstream -- [clicks]    (default 2,000,000)

use std::time::Instant;

use sluice_processing::clickstream::{Clickstream, Operators};
use sluice_processing::source::{Isolation, LogSource};
use sluice_storage::{HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatchBuilder};

/// Realistic-looking clicks: 100k users, 5k pages (Zipf-ish), a click every 0.1 ms of event
/// time with up to 4 s of jitter.
fn load(log: &PartitionLog, clicks: u64) {
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
        log.append(&builder.build().expect("batch"), LeaderEpoch(0), base).expect("append");
    }
    log.advance_high_watermark(log.log_end_offset());
}

fn main() {
    let clicks: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2_000_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = LogConfig { retention_ms: None, ..LogConfig::default() };
    let log = PartitionLog::open(dir.path(), config, HandleCache::new(64)).expect("log");
    load(&log, clicks);

    // Reading alone: the floor of what the job can do.
    let start = Instant::now();
    let mut source = LogSource::new(log.clone(), Offset(0), Isolation::ReadCommitted);
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
    let none = Operators { views_1m: false, views_5m: false, sessions: false };
    for (name, operators) in [
        ("page-views-1m + top-pages-1m", Operators { views_1m: true, ..none }),
        ("page-views-5m", Operators { views_5m: true, ..none }),
        ("user-sessions", Operators { sessions: true, ..none }),
        ("all four outputs", Operators::ALL),
    ] {
        let start = Instant::now();
        let mut source = LogSource::new(log.clone(), Offset(0), Isolation::ReadCommitted);
        let mut job = Clickstream::with_operators(1, 60_000, operators);
        let mut outputs = 0usize;
        loop {
            let records = source.poll(4 << 20).expect("poll");
            if records.is_empty() {
                break;
            }
            for record in &records {
                job.process(0, record.value.as_deref().unwrap_or_default(), 1_763_700_000_000);
            }
            outputs += job.advance(1_763_700_000_000).len();
        }
        outputs += job.finish().len();
        let seconds = start.elapsed().as_secs_f64();
        println!("  {name}: {:.2} M events/s/core ({outputs} results)", clicks as f64 / seconds / 1e6);
    }
}
