//! The job's results as the demo shows them: a read_committed reader of the result topics,
//! starting where they ended when the demo began; the dashboard those results fill; and the
//! loop that prints it every `REFRESH`, with the job's status from the admin API, until the
//! demo stops.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Deserialize;
use sluice_processing::clickstream::{SESSION_GAP_MS, WATERMARK_BOUND_MS};
use sluice_storage::RecordBatch;

use super::stop::stopping;
use super::{now_ms, wait_for_topics, ClickstreamArgs, JOB_NAME};
use crate::client::{error_name, Client, Cluster, TopicPartition, LATEST_TIMESTAMP};

const TOP_PAGES_TOPIC: &str = "top-pages-1m";
const PAGE_VIEWS_TOPIC: &str = "page-views-1m";
const SESSIONS_TOPIC: &str = "user-sessions";
const RESULT_TOPICS: [&str; 3] = [TOP_PAGES_TOPIC, PAGE_VIEWS_TOPIC, SESSIONS_TOPIC];

const FETCH_VERSION: i16 = 11;
const READ_COMMITTED: i8 = 1;
const REFRESH: Duration = Duration::from_secs(2);
/// Short enough that the dashboard and the stop flag are checked promptly; far inside the
/// client's 30 s socket timeout.
const FETCH_MAX_WAIT_MS: i32 = 500;
const FETCH_PARTITION_BYTES_MAX: i32 = 1 << 20;
const FETCH_BYTES_MAX: i32 = 16 << 20;
const SESSIONS_SHOWN: usize = 3;

/// Fetches results and prints the dashboard every `REFRESH` until the stop flag, --duration or
/// the end of the producer.
pub(super) fn watch(
    results: &mut ResultReader,
    args: &ClickstreamArgs,
    produced: &AtomicU64,
    producer: &JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // None (run until Ctrl-C) also for a duration too large to add to a clock.
    let deadline = args.duration.and_then(|secs| started.checked_add(Duration::from_secs(secs)));
    let mut dashboard = Dashboard::default();
    let (mut last_at, mut last_clicks) = (started, 0u64);
    let mut next_refresh = started + REFRESH;
    while !stopping() && !producer.is_finished() && deadline.is_none_or(|deadline| Instant::now() < deadline) {
        let polled = results.poll(&mut dashboard);
        dashboard.fetch_error = polled.err().map(|err| format!("{err:#}"));
        if dashboard.fetch_error.is_some() {
            // A failed fetch returns at once; without a pause this loop would spin.
            thread::sleep(Duration::from_millis(200));
        }
        let now = Instant::now();
        if now >= next_refresh {
            let clicks = produced.load(Ordering::Relaxed);
            let progress = Progress {
                elapsed: now.duration_since(started),
                clicks,
                clicks_per_s: (clicks - last_clicks) as f64 / now.duration_since(last_at).as_secs_f64().max(0.001),
                target_per_s: args.rate,
            };
            (last_at, last_clicks) = (now, clicks);
            next_refresh = now + REFRESH;
            dashboard.print(&progress, &job_line(&args.admin)).context("cannot print the results")?;
        }
    }
    Ok(())
}

/// Reads the job's result topics, read_committed, from where they ended when the demo began.
pub(super) struct ResultReader {
    client: Client,
    cluster: Cluster,
    /// The next offset to fetch, per partition.
    positions: BTreeMap<TopicPartition, i64>,
}

impl ResultReader {
    pub(super) fn open(bootstrap: &str) -> anyhow::Result<ResultReader> {
        let mut client = Client::connect(bootstrap)?;
        let cluster = wait_for_topics(&mut client, &RESULT_TOPICS)?;
        let partitions: Vec<TopicPartition> = RESULT_TOPICS
            .iter()
            .flat_map(|&topic| {
                let indexes = cluster.topics.get(topic).into_iter().flat_map(|t| t.leaders.keys());
                indexes.map(move |&partition| TopicPartition { topic: topic.to_string(), partition })
            })
            .collect();
        let mut positions = BTreeMap::new();
        for (partition, end) in client.list_offsets(&cluster, &partitions, LATEST_TIMESTAMP)? {
            let end = end.map_err(|reason| anyhow!("cannot find the end of {partition}: {reason}"))?;
            positions.insert(partition, end);
        }
        Ok(ResultReader { client, cluster, positions })
    }

    /// One Fetch per leader, waiting up to `FETCH_MAX_WAIT_MS` for results; each committed
    /// result goes to the dashboard.
    fn poll(&mut self, dashboard: &mut Dashboard) -> anyhow::Result<()> {
        let mut by_leader: BTreeMap<String, BTreeMap<&str, Vec<FetchPartition>>> = BTreeMap::new();
        for (partition, &offset) in &self.positions {
            let leader =
                self.cluster.leader(partition).map_err(|reason| anyhow!("cannot fetch {partition}: {reason}"))?;
            let wanted = FetchPartition::default()
                .with_partition(partition.partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(FETCH_PARTITION_BYTES_MAX);
            by_leader.entry(leader.to_string()).or_default().entry(&partition.topic).or_default().push(wanted);
        }
        let mut advanced = Vec::new();
        for (leader, topics) in by_leader {
            let topics = topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let name = TopicName(StrBytes::from_string(topic.to_string()));
                    FetchTopic::default().with_topic(name).with_partitions(partitions)
                })
                .collect();
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(FETCH_MAX_WAIT_MS)
                .with_min_bytes(1)
                .with_max_bytes(FETCH_BYTES_MAX)
                .with_isolation_level(READ_COMMITTED)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(topics);
            let response = self.client.call(&leader, FETCH_VERSION, &request)?;
            if response.error_code != 0 {
                bail!("fetching results from {leader} failed: {}", error_name(response.error_code));
            }
            for topic in &response.responses {
                for data in &topic.partitions {
                    let partition =
                        TopicPartition { topic: topic.topic.0.to_string(), partition: data.partition_index };
                    let Some(&from) = self.positions.get(&partition) else { continue };
                    if data.error_code != 0 {
                        bail!("fetching {partition} failed: {}", error_name(data.error_code));
                    }
                    let Some(records) = data.records.clone() else { continue };
                    let aborted = data.aborted_transactions.as_deref().unwrap_or_default();
                    let next =
                        committed_values(records, from, aborted, |value| dashboard.add(&partition.topic, value))?;
                    if let Some(next) = next {
                        advanced.push((partition, next));
                    }
                }
            }
        }
        self.positions.extend(advanced);
        Ok(())
    }
}

/// Hands the value of each committed record at or past `from` to `visit`, and returns the
/// offset after the last whole batch. As in Kafka, a read_committed fetch still holds aborted
/// transactions' batches and lists where each starts; the consumer skips them.
fn committed_values(
    records: Bytes,
    from: i64,
    aborted: &[AbortedTransaction],
    mut visit: impl FnMut(&[u8]),
) -> anyhow::Result<Option<i64>> {
    let mut starts: Vec<(i64, i64)> = aborted.iter().map(|a| (a.first_offset, a.producer_id.0)).collect();
    starts.sort_unstable();
    let mut starts = starts.into_iter().peekable();
    let mut aborting = HashSet::new();
    let mut next = None;
    for batch in RecordBatch::iter_batches(records) {
        let batch = batch.context("a fetched result batch is corrupt")?;
        next = Some(batch.last_offset().saturating_add(1).max(from));
        while let Some((_, producer_id)) = starts.next_if(|&(first, _)| first <= batch.last_offset()) {
            aborting.insert(producer_id);
        }
        if batch.is_control() {
            // A producer's next marker after an aborted start is that transaction's abort.
            aborting.remove(&batch.producer_id());
            continue;
        }
        if batch.is_transactional() && aborting.contains(&batch.producer_id()) {
            continue;
        }
        for record in batch.records().context("cannot decode a fetched result batch")? {
            let record = record.context("cannot decode a fetched result record")?;
            if let (true, Some(value)) = (record.offset >= from, &record.value) {
                visit(value);
            }
        }
    }
    Ok(next)
}

/// A `top-pages-1m` result, as the job writes it.
#[derive(Deserialize)]
struct TopPages {
    window_start: i64,
    window_end: i64,
    top: Vec<PageViews>,
}

#[derive(Deserialize)]
struct PageViews {
    page: String,
    views: u64,
}

/// A `user-sessions` result: one closed session.
#[derive(Deserialize)]
struct Session {
    user_id: String,
    session_start: i64,
    session_end: i64,
    clicks: u64,
    distinct_pages: u64,
}

struct Progress {
    elapsed: Duration,
    clicks: u64,
    clicks_per_s: f64,
    target_per_s: u32,
}

/// What the demo shows: the newest top pages, counts, and the last few closed sessions.
#[derive(Default)]
struct Dashboard {
    top_pages: Option<TopPages>,
    page_view_results: u64,
    session_results: u64,
    /// The newest last.
    sessions: VecDeque<Session>,
    unreadable_results: u64,
    fetch_error: Option<String>,
}

impl Dashboard {
    fn add(&mut self, topic: &str, value: &[u8]) {
        let read = match topic {
            TOP_PAGES_TOPIC => serde_json::from_slice::<TopPages>(value).map(|top| {
                // Partitions may deliver minutes out of order; show the newest.
                if self.top_pages.as_ref().is_none_or(|shown| top.window_start >= shown.window_start) {
                    self.top_pages = Some(top);
                }
            }),
            PAGE_VIEWS_TOPIC => {
                self.page_view_results += 1;
                Ok(())
            }
            _ => serde_json::from_slice::<Session>(value).map(|session| {
                self.session_results += 1;
                self.sessions.push_back(session);
                if self.sessions.len() > SESSIONS_SHOWN {
                    self.sessions.pop_front();
                }
            }),
        };
        if read.is_err() {
            self.unreadable_results += 1;
        }
    }

    fn print(&self, progress: &Progress, job_line: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        let elapsed = progress.elapsed.as_secs();
        writeln!(out, "---- {} UTC, {elapsed} s of clicks {}", clock(now_ms()), "-".repeat(40))?;
        writeln!(
            out,
            "clicks: {} produced, {:.0}/s (target {}/s)",
            progress.clicks, progress.clicks_per_s, progress.target_per_s
        )?;
        writeln!(out, "{job_line}")?;
        match &self.top_pages {
            None => writeln!(
                out,
                "top pages: none yet; a minute closes once the watermark (newest click - {} s) passes its end, \
                 so the first list comes up to {} s after the first click",
                WATERMARK_BOUND_MS / 1000,
                (60_000 + WATERMARK_BOUND_MS) / 1000
            )?,
            Some(top) => {
                writeln!(out, "top pages {}-{} UTC:", clock(top.window_start), clock(top.window_end))?;
                for (rank, page) in top.top.iter().enumerate() {
                    writeln!(out, "  {:>2}. {:<28} {:>7} views", rank + 1, page.page, page.views)?;
                }
            }
        }
        writeln!(out, "page views per minute: {} results", self.page_view_results)?;
        if self.sessions.is_empty() {
            writeln!(
                out,
                "user sessions: none closed yet; a session closes once {} min of event time pass without a click",
                SESSION_GAP_MS / 60_000
            )?;
        } else {
            writeln!(out, "user sessions: {} closed, the last {}:", self.session_results, self.sessions.len())?;
            for s in self.sessions.iter().rev() {
                let (start, end) = (clock(s.session_start), clock(s.session_end));
                writeln!(out, "  {:<8} {start}-{end} UTC  {} clicks, {} pages", s.user_id, s.clicks, s.distinct_pages)?;
            }
        }
        if self.unreadable_results > 0 {
            writeln!(out, "results that are not the job's JSON: {} (skipped)", self.unreadable_results)?;
        }
        if let Some(error) = &self.fetch_error {
            writeln!(out, "cannot read results: {error}")?;
        }
        out.flush()
    }
}

/// The job's state and counters from the admin API, on one line.
fn job_line(admin: &str) -> String {
    let status = match crate::jobs::request(admin, "GET", &format!("/v1/jobs/{JOB_NAME}"), None) {
        Ok(status) => status,
        Err(err) => return format!("job {JOB_NAME}: no status ({err:#})"),
    };
    let count = |key: &str| status[key].as_u64().unwrap_or(0);
    let lag: i64 = status["partitions"].as_array().map_or(0, |ps| ps.iter().filter_map(|p| p["lag"].as_i64()).sum());
    let late: Vec<String> = status["late_records"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, count)| count.as_u64().is_some_and(|count| count > 0))
        .map(|(operator, count)| format!("{operator} {count}"))
        .collect();
    let late = if late.is_empty() { "none".to_string() } else { late.join(", ") };
    let watermark =
        status["watermark"].as_i64().map_or_else(|| "none yet".to_string(), |w| format!("{} UTC", clock(w)));
    let mut line = format!(
        "job {JOB_NAME}: {}, watermark {watermark}, records in {} out {}, lag {lag}, late records: {late}",
        status["state"].as_str().unwrap_or("?"),
        count("records_in"),
        count("records_out")
    );
    // Clicks the job could not read mean the generator and the job disagree on the format.
    let unreadable = count("malformed_records") + count("absurd_timestamps");
    if unreadable > 0 {
        line.push_str(&format!(", unreadable clicks: {unreadable}"));
    }
    if let Some(error) = status["error"].as_str() {
        line.push_str(&format!(", error: {error}"));
    }
    line
}

/// HH:MM:SS of a UTC epoch-millisecond time.
fn clock(epoch_ms: i64) -> String {
    let seconds = epoch_ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::ProducerId;
    use sluice_storage::RecordBatchBuilder;

    use super::*;

    fn batch_at(base_offset: i64, producer_id: i64, control: bool, value: &[u8]) -> Vec<u8> {
        let mut builder =
            RecordBatchBuilder::new(0).producer(producer_id, 0, 0).transactional(producer_id >= 0).control(control);
        builder.push(0, Some(b"k"), Some(value), &[]);
        let mut batch = builder.build().expect("a batch builds");
        batch[..8].copy_from_slice(&base_offset.to_be_bytes());
        batch
    }

    #[test]
    fn read_committed_skips_aborted_transactions_and_what_was_read() {
        let mut records = Vec::new();
        records.extend(batch_at(0, 7, false, b"aborted"));
        records.extend(batch_at(1, 8, false, b"committed"));
        records.extend(batch_at(2, 7, true, b"abort marker"));
        records.extend(batch_at(3, 8, true, b"commit marker"));
        records.extend(batch_at(4, 7, false, b"next transaction"));
        records.extend(batch_at(5, -1, false, b"plain"));
        let aborted = [AbortedTransaction::default().with_producer_id(ProducerId(7)).with_first_offset(0)];
        let read = |from: i64| {
            let mut values = Vec::new();
            let next = committed_values(Bytes::from(records.clone()), from, &aborted, |v| values.push(v.to_vec()));
            (values, next.expect("the batches decode"))
        };
        let expected: Vec<Vec<u8>> = vec![b"committed".to_vec(), b"next transaction".to_vec(), b"plain".to_vec()];
        assert_eq!(read(0), (expected, Some(6)));
        assert_eq!(read(5), (vec![b"plain".to_vec()], Some(6)));
        assert_eq!(committed_values(Bytes::new(), 9, &[], |_| {}).expect("nothing to decode"), None);
    }

    #[test]
    fn the_dashboard_reads_the_results_the_job_writes() {
        use sluice_processing::clickstream::Output;
        let top = |start: i64, page: &str| Output::TopPages1m {
            window_start: start,
            window_end: start + 60_000,
            top: vec![(page.to_string(), 9), ("/cart".to_string(), 4)],
        };
        let mut dashboard = Dashboard::default();
        let mut add = |output: Output| {
            let value = serde_json::to_vec(&output.to_json()).expect("a result serializes");
            dashboard.add(output.topic(), &value);
        };
        add(top(120_000, "/products/0"));
        add(top(60_000, "/products/9"));
        let view =
            Output::PageViews1m { page: "/".into(), window_start: 0, window_end: 60_000, views: 3, unique_users: 2 };
        add(view);
        for user in 0..5 {
            let (session_start, session_end) = (user * 1000, user * 1000 + 500);
            add(Output::UserSession {
                user_id: format!("u-{user}"),
                session_start,
                session_end,
                clicks: 7,
                distinct_pages: 3,
            });
        }
        assert_eq!(dashboard.unreadable_results, 0);
        let shown = dashboard.top_pages.as_ref().expect("top pages were read");
        assert_eq!((shown.window_start, shown.top[0].page.as_str(), shown.top[0].views), (120_000, "/products/0", 9));
        assert_eq!((dashboard.page_view_results, dashboard.session_results), (1, 5));
        let users: Vec<&str> = dashboard.sessions.iter().map(|s| s.user_id.as_str()).collect();
        assert_eq!(users, ["u-2", "u-3", "u-4"]);
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(1_700_000_000_000), "22:13:20");
        assert_eq!(clock(-1_000), "23:59:59");
    }
}
