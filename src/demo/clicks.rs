//! Made-up clicks and the thread that produces them to `clicks`: a rotating pool of shoppers,
//! each on the site for one to five minutes, browsing a Zipf-skewed catalogue. Each click is
//! the JSON the clickstream job reads, keyed by user id so that one user's clicks stay in order
//! in one partition, with an event time up to 3 s in the past.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use sluice_storage::RecordBatchBuilder;

use super::stop::{request_stop, stopping};
use super::{now_ms, CLICKS_TOPIC};
use crate::client::{error_name, Client, Cluster, TopicPartition};

const PRODUCE_VERSION: i16 = 8;
/// Clicks go out in one batch per partition this often: rate / 10 clicks per request.
const PRODUCE_TICK: Duration = Duration::from_millis(100);
/// How long the broker may wait for acks=all; inside the client's 30 s socket timeout, so a
/// slow broker answers with an error rather than the socket timing out.
const PRODUCE_TIMEOUT_MS: i32 = 10_000;

/// User ids u-0 to u-4999. 400 of them are on the site at a time, each for one to five minutes
/// (about 133 arrivals a minute), and newcomers are taken in a fixed stride through the pool,
/// so a user comes back only after about 37 minutes: past the job's 30-minute session gap, so
/// each visit is one session, which closes 30 minutes (of event time) after its last click.
const USER_POOL: u64 = 5_000;
/// Coprime with `USER_POOL`, so the walk takes every id once before it repeats one.
const USER_STRIDE: u64 = 2_963;
const VISITORS: usize = 400;
const VISIT_MS_MIN: u64 = 60_000;
const VISIT_MS_MAX: u64 = 300_000;
/// Clicks arrive up to 3 s late, inside the watermark's 5 s bound, so none is dropped as late.
const JITTER_MS: u64 = 3_000;
const PRODUCTS: u64 = 500;

const SITE: &str = "https://shop.example.com";
/// Where a visit comes from: "" is a typed-in address or a bookmark.
const REFERRERS: [&str; 6] = [
    "https://www.google.com/",
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://t.co/",
    "https://news.ycombinator.com/",
    "",
];
const SEARCHES: [&str; 12] = [
    "shoes",
    "running+shoes",
    "jacket",
    "rain+jacket",
    "backpack",
    "socks",
    "t-shirt",
    "hoodie",
    "gift+card",
    "sale",
    "sandals",
    "water+bottle",
];
const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
];

/// Marsaglia's xorshift64: fast, and random enough for made-up clicks.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        XorShift((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

#[derive(Clone, Copy)]
enum Page {
    Home,
    Search(usize),
    Product(u64),
    Cart,
    Checkout,
}

impl std::fmt::Display for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Page::Home => write!(f, "/"),
            Page::Search(term) => write!(f, "/search?q={}", SEARCHES[*term % SEARCHES.len()]),
            Page::Product(id) => write!(f, "/products/{id}"),
            Page::Cart => write!(f, "/cart"),
            Page::Checkout => write!(f, "/checkout"),
        }
    }
}

impl Page {
    /// A shopper's next page: mostly browsing products, sometimes on to the cart and checkout.
    fn next(current: Option<Page>, rng: &mut XorShift) -> Page {
        let roll = rng.below(100);
        let browse = |rng: &mut XorShift| match rng.below(4) {
            0 => Page::Search(rng.below(SEARCHES.len() as u64) as usize),
            _ => Page::product(rng),
        };
        match current {
            None if roll < 35 => Page::Home,
            None => browse(rng),
            Some(Page::Home | Page::Search(_)) if roll < 90 => browse(rng),
            Some(Page::Product(_)) if roll < 80 => browse(rng),
            Some(Page::Product(_)) if roll < 90 => Page::Cart,
            Some(Page::Cart) if roll < 40 => Page::Checkout,
            Some(Page::Cart) if roll < 85 => Page::product(rng),
            _ => Page::Home,
        }
    }

    /// Zipf-like: log-uniform over 1..=PRODUCTS, so product k is viewed in proportion to about
    /// 1/(k+1) and product 0 gets some 11% of product views; the top pages are a ranking the
    /// eye can follow from minute to minute rather than noise.
    fn product(rng: &mut XorShift) -> Page {
        let uniform = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let id = ((PRODUCTS + 1) as f64).powf(uniform) as u64 - 1;
        Page::Product(id.min(PRODUCTS - 1))
    }
}

/// A user on the site: where they came from, their browser, the page they are on.
struct Visitor {
    user: u64,
    user_agent: &'static str,
    referrer: &'static str,
    page: Option<Page>,
    leaves_at_ms: i64,
}

impl Visitor {
    fn arrive(user: u64, rng: &mut XorShift, now_ms: i64, stay_ms: u64) -> Visitor {
        Visitor {
            user,
            user_agent: USER_AGENTS[rng.below(USER_AGENTS.len() as u64) as usize],
            referrer: REFERRERS[rng.below(REFERRERS.len() as u64) as usize],
            page: None,
            leaves_at_ms: now_ms.saturating_add(i64::try_from(stay_ms).unwrap_or(i64::MAX)),
        }
    }
}

struct ClickGenerator {
    rng: XorShift,
    visitors: Vec<Visitor>,
    /// The user id the next newcomer gets.
    next_user: u64,
}

impl ClickGenerator {
    fn new(now_ms: i64) -> ClickGenerator {
        let mut rng = XorShift::seeded();
        let next_user = rng.below(USER_POOL);
        let mut generator = ClickGenerator { rng, visitors: Vec::with_capacity(VISITORS), next_user };
        for _ in 0..VISITORS {
            // Staggered first departures, so that visitors come and go steadily from the start.
            let stay_ms = generator.rng.below(VISIT_MS_MAX);
            let visitor = generator.newcomer(now_ms, stay_ms);
            generator.visitors.push(visitor);
        }
        generator
    }

    fn newcomer(&mut self, now_ms: i64, stay_ms: u64) -> Visitor {
        let user = self.next_user;
        self.next_user = (self.next_user + USER_STRIDE) % USER_POOL;
        Visitor::arrive(user, &mut self.rng, now_ms, stay_ms)
    }

    /// One click of a random visitor (replaced by a newcomer if their visit is over): the key
    /// (user id) and JSON value are written to `key` and `value`; returns the event time.
    fn click(&mut self, now_ms: i64, key: &mut Vec<u8>, value: &mut Vec<u8>) -> i64 {
        let slot = self.rng.below(self.visitors.len() as u64) as usize;
        if self.visitors[slot].leaves_at_ms <= now_ms {
            let stay_ms = VISIT_MS_MIN + self.rng.below(VISIT_MS_MAX - VISIT_MS_MIN);
            self.visitors[slot] = self.newcomer(now_ms, stay_ms);
        }
        let (visitor, rng) = (&mut self.visitors[slot], &mut self.rng);
        let page = Page::next(visitor.page, rng);
        let ts = now_ms - i64::try_from(rng.below(JITTER_MS)).unwrap_or(0);
        key.clear();
        value.clear();
        // Every string comes from the tables above: none needs JSON escaping.
        let _ = write!(key, "u-{}", visitor.user);
        let _ = write!(value, r#"{{"user_id":"u-{}","page":"{page}","ts":{ts},"referrer":""#, visitor.user);
        let _ = match visitor.page {
            Some(previous) => write!(value, "{SITE}{previous}"),
            None => write!(value, "{}", visitor.referrer),
        };
        let _ = write!(value, r#"","user_agent":"{}"}}"#, visitor.user_agent);
        visitor.page = Some(page);
        ts
    }
}

/// FNV-1a: spreads user ids over partitions, so each user's clicks stay in order in one.
fn partition_of(key: &[u8], partitions: usize) -> usize {
    let hash =
        key.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3));
    (hash % partitions.max(1) as u64) as usize
}

/// Produces clicks every `PRODUCE_TICK` until the stop flag is set, counting them in
/// `produced`; a failed produce ends the demo with its reason.
pub(super) fn produce_clicks(
    mut client: Client,
    cluster: &Cluster,
    rate: u32,
    produced: &AtomicU64,
) -> anyhow::Result<()> {
    let partitions: Vec<i32> =
        cluster.topics.get(CLICKS_TOPIC).map(|t| t.leaders.keys().copied().collect()).unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "topic {CLICKS_TOPIC} has no partitions");
    let mut generator = ClickGenerator::new(now_ms());
    let started = Instant::now();
    let mut next_tick = started;
    let mut due_before = 0u64;
    while !stopping() {
        next_tick += PRODUCE_TICK;
        thread::sleep(next_tick.saturating_duration_since(Instant::now()));
        let due = (u128::from(rate) * started.elapsed().as_millis() / 1000) as u64;
        // Behind by more than two ticks (a slow broker): skip the backlog rather than burst,
        // which shows as a lower actual rate on the dashboard.
        let count = (due - due_before).min((u64::from(rate) / 5).max(1));
        due_before = due;
        if count == 0 {
            continue;
        }
        let result = send_clicks(&mut client, cluster, &partitions, &mut generator, count);
        if let Err(err) = result {
            request_stop();
            return Err(err);
        }
        produced.fetch_add(count, Ordering::Relaxed);
    }
    Ok(())
}

/// One ProduceRequest per leader, with one batch per partition.
fn send_clicks(
    client: &mut Client,
    cluster: &Cluster,
    partitions: &[i32],
    generator: &mut ClickGenerator,
    count: u64,
) -> anyhow::Result<()> {
    let now = now_ms();
    let base_ts = now - JITTER_MS as i64;
    let mut batches: BTreeMap<i32, RecordBatchBuilder> = BTreeMap::new();
    let (mut key, mut value) = (Vec::with_capacity(16), Vec::with_capacity(512));
    for _ in 0..count {
        let ts = generator.click(now, &mut key, &mut value);
        let partition = partitions[partition_of(&key, partitions.len())];
        batches.entry(partition).or_insert_with(|| RecordBatchBuilder::new(base_ts)).push(
            ts,
            Some(&key),
            Some(&value),
            &[],
        );
    }
    let mut by_leader: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
    for (partition, batch) in batches {
        let topic_partition = TopicPartition { topic: CLICKS_TOPIC.to_string(), partition };
        let leader = cluster
            .leader(&topic_partition)
            .map_err(|reason| anyhow!("cannot produce to {topic_partition}: {reason}"))?;
        let records = Bytes::from(batch.build().context("cannot build a batch of clicks")?);
        by_leader
            .entry(leader)
            .or_default()
            .push(PartitionProduceData::default().with_index(partition).with_records(Some(records)));
    }
    for (leader, partition_data) in by_leader {
        let sent = partition_data.len();
        let topic = TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(CLICKS_TOPIC)))
            .with_partition_data(partition_data);
        let request =
            ProduceRequest::default().with_acks(-1).with_timeout_ms(PRODUCE_TIMEOUT_MS).with_topic_data(vec![topic]);
        let response = client.call(leader, PRODUCE_VERSION, &request)?;
        let mut answered = 0;
        for answer in response.responses.iter().flat_map(|t| &t.partition_responses) {
            answered += 1;
            if answer.error_code != 0 {
                let message = answer.error_message.as_ref().map_or(String::new(), |m| format!(" ({})", m.as_str()));
                bail!(
                    "producing to {CLICKS_TOPIC}-{} failed: {}{message}",
                    answer.index,
                    error_name(answer.error_code)
                );
            }
        }
        anyhow::ensure!(answered == sent, "the broker at {leader} answered for {answered} of {sent} partitions");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use sluice_processing::clickstream::SESSION_GAP_MS;

    use super::*;

    #[test]
    fn clicks_are_json_the_job_reads_with_a_skewed_page_mix() {
        let now = 1_700_000_000_000;
        let mut generator = ClickGenerator::new(now);
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut views: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..20_000 {
            let ts = generator.click(now, &mut key, &mut value);
            let click: serde_json::Value = serde_json::from_slice(&value).expect("a click is JSON");
            assert_eq!(click["user_id"].as_str().map(str::as_bytes), Some(&key[..]));
            assert_eq!(click["ts"].as_i64(), Some(ts));
            assert!((now - JITTER_MS as i64..=now).contains(&ts), "ts {ts} is outside the jitter");
            assert!(click["referrer"].is_string() && click["user_agent"].is_string());
            *views.entry(click["page"].as_str().expect("a page").to_string()).or_default() += 1;
        }
        let product_views: u64 = views.iter().filter(|(page, _)| page.starts_with("/products/")).map(|(_, n)| n).sum();
        assert!(product_views > 20_000 / 2, "products get {product_views} of 20000 views");
        let most_viewed = views.iter().filter(|(page, _)| page.starts_with("/products/")).max_by_key(|(_, n)| **n);
        assert_eq!(most_viewed.map(|(page, _)| page.as_str()), Some("/products/0"));
        for page in ["/", "/cart", "/checkout"] {
            assert!(views.get(page).is_some_and(|n| *n > 0), "no views of {page}");
        }
    }

    #[test]
    fn users_return_only_after_their_session_has_closed() {
        let mut seen = HashSet::new();
        let mut user = 0;
        for _ in 0..USER_POOL {
            assert!(seen.insert(user), "user {user} came back before the walk took every id");
            user = (user + USER_STRIDE) % USER_POOL;
        }
        let mean_visit_min = (VISIT_MS_MIN + VISIT_MS_MAX) as f64 / 2.0 / 60_000.0;
        let return_after_min = USER_POOL as f64 / (VISITORS as f64 / mean_visit_min);
        assert!(return_after_min > (SESSION_GAP_MS / 60_000) as f64, "users return after {return_after_min} min");
    }

    #[test]
    fn a_users_clicks_go_to_one_partition() {
        assert_eq!(partition_of(b"u-42", 4), partition_of(b"u-42", 4));
        assert!((0..USER_POOL).all(|u| partition_of(format!("u-{u}").as_bytes(), 4) < 4));
        let used: HashSet<usize> = (0..USER_POOL).map(|u| partition_of(format!("u-{u}").as_bytes(), 4)).collect();
        assert_eq!(used.len(), 4);
    }
}
