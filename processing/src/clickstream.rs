//! The clickstream job's logic: clicks (`{"user_id","page","ts",...}` JSON, `ts` the event
//! time in epoch ms) in; page views per 1-minute tumbling window (with unique users), page
//! views per 5-minute window sliding every minute, user sessions (30-minute inactivity gap)
//! and the 10 most viewed pages per minute out. The watermark is the highest `ts` seen minus
//! 5 s, the minimum over partitions. Bad input (malformed JSON, missing fields, absurd
//! timestamps) is counted and skipped.
//!
//! This module is the job's operators only: sources, state checkpoints and sinks are the
//! runtime's.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

use crate::aggregate::{Aggregate, Count, DistinctCount, TopN};
use crate::watermark::{EventTime, Watermarks};
use crate::window::WindowSpec;
use crate::windowed::WindowedAggregation;

pub const MINUTE_MS: i64 = 60_000;
/// Out-of-orderness the watermark allows.
pub const WATERMARK_BOUND_MS: i64 = 5_000;
pub const SESSION_GAP_MS: i64 = 30 * MINUTE_MS;
pub const TOP_PAGES: usize = 10;
/// Event times this far past the wall clock are absurd: one would move the watermark past
/// every real event and make them all late.
pub const MAX_FUTURE_MS: i64 = 24 * 60 * MINUTE_MS;

/// Borrowed from the record's bytes: no allocation unless a string has escapes.
#[derive(Deserialize)]
struct Click<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    page: Cow<'a, str>,
    ts: i64,
}

/// Page and user names, each stored once: the operators key by these ids, so an event
/// costs hash lookups rather than allocations. (Grows with the distinct names seen.)
#[derive(Default)]
struct Names {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn name(&self, id: u32) -> String {
        self.names.get(id as usize).map(|n| n.to_string()).unwrap_or_default()
    }
}

/// One result, as the job writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    PageViews1m { page: String, window_start: i64, window_end: i64, views: u64, unique_users: u64 },
    PageViews5m { page: String, window_start: i64, window_end: i64, views: u64 },
    UserSession { user_id: String, session_start: i64, session_end: i64, clicks: u64, distinct_pages: u64 },
    TopPages1m { window_start: i64, window_end: i64, top: Vec<(String, u64)> },
}

impl Output {
    pub fn topic(&self) -> &'static str {
        match self {
            Output::PageViews1m { .. } => "page-views-1m",
            Output::PageViews5m { .. } => "page-views-5m",
            Output::UserSession { .. } => "user-sessions",
            Output::TopPages1m { .. } => "top-pages-1m",
        }
    }

    pub fn key(&self) -> String {
        match self {
            Output::PageViews1m { page, .. } | Output::PageViews5m { page, .. } => page.clone(),
            Output::UserSession { user_id, .. } => user_id.clone(),
            Output::TopPages1m { window_start, .. } => window_start.to_string(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Output::PageViews1m { page, window_start, window_end, views, unique_users } => json!({
                "page": page, "window_start": window_start, "window_end": window_end,
                "views": views, "unique_users": unique_users
            }),
            Output::PageViews5m { page, window_start, window_end, views } => {
                json!({"page": page, "window_start": window_start, "window_end": window_end, "views": views})
            }
            Output::UserSession { user_id, session_start, session_end, clicks, distinct_pages } => json!({
                "user_id": user_id, "session_start": session_start, "session_end": session_end,
                "clicks": clicks, "distinct_pages": distinct_pages
            }),
            Output::TopPages1m { window_start, window_end, top } => json!({
                "window_start": window_start, "window_end": window_end,
                "top": top.iter().map(|(page, views)| json!({"page": page, "views": views})).collect::<Vec<_>>()
            }),
        }
    }
}

/// Views and distinct users (by id) of a page in a window.
#[derive(Default)]
struct ViewsAndUsers(Count, DistinctCount<u32>);

impl Aggregate for ViewsAndUsers {
    type Input = u32;
    type Output = (u64, u64);
    fn add(&mut self, user: &u32) {
        self.0.add(&());
        self.1.add(user);
    }
    fn merge(&mut self, other: Self) {
        self.0.merge(other.0);
        self.1.merge(other.1);
    }
    fn result(&self) -> (u64, u64) {
        (self.0.result(), self.1.result())
    }
}

/// Clicks and distinct pages (by id) of a user's session.
#[derive(Default)]
struct ClicksAndPages(Count, DistinctCount<u32>);

impl Aggregate for ClicksAndPages {
    type Input = u32;
    type Output = (u64, u64);
    fn add(&mut self, page: &u32) {
        self.0.add(&());
        self.1.add(page);
    }
    fn merge(&mut self, other: Self) {
        self.0.merge(other.0);
        self.1.merge(other.1);
    }
    fn result(&self) -> (u64, u64) {
        (self.0.result(), self.1.result())
    }
}

/// Counts of what was skipped, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    pub malformed: u64,
    pub absurd_timestamp: u64,
    pub late: u64,
}

/// The job's fixed window definitions are valid; a failure here is a bug of ours.
fn windowed<A: Aggregate>(spec: WindowSpec) -> WindowedAggregation<u32, A> {
    WindowedAggregation::new(spec, 0).expect("the clickstream job's window definitions are valid")
}

/// Which of the job's operators run (all of them in the job; one at a time to measure each:
/// top pages come from the 1-minute counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operators {
    pub views_1m: bool,
    pub views_5m: bool,
    pub sessions: bool,
}

impl Operators {
    pub const ALL: Operators = Operators { views_1m: true, views_5m: true, sessions: true };
}

pub struct Clickstream {
    operators: Operators,
    watermarks: Watermarks,
    pages: Names,
    users: Names,
    views_1m: WindowedAggregation<u32, ViewsAndUsers>,
    views_5m: WindowedAggregation<u32, Count>,
    sessions: WindowedAggregation<u32, ClicksAndPages>,
    pub rejected: Rejected,
}

impl Clickstream {
    /// For `partitions` input partitions; a partition silent for `idle_timeout_ms` of
    /// processing time stops holding the watermark back.
    pub fn new(partitions: usize, idle_timeout_ms: i64) -> Clickstream {
        Clickstream::with_operators(partitions, idle_timeout_ms, Operators::ALL)
    }

    pub fn with_operators(partitions: usize, idle_timeout_ms: i64, operators: Operators) -> Clickstream {
        Clickstream {
            operators,
            watermarks: Watermarks::new(partitions, WATERMARK_BOUND_MS, idle_timeout_ms),
            pages: Names::default(),
            users: Names::default(),
            views_1m: windowed(WindowSpec::Tumbling { size_ms: MINUTE_MS }),
            views_5m: windowed(WindowSpec::Sliding { size_ms: 5 * MINUTE_MS, slide_ms: MINUTE_MS }),
            sessions: windowed(WindowSpec::Session { gap_ms: SESSION_GAP_MS }),
            rejected: Rejected::default(),
        }
    }

    /// One click from `partition`, read at processing time `now_ms`.
    pub fn process(&mut self, partition: usize, value: &[u8], now_ms: i64) {
        let Ok(click) = serde_json::from_slice::<Click>(value) else {
            self.rejected.malformed += 1;
            return;
        };
        if click.ts < 0 || click.ts > now_ms.saturating_add(MAX_FUTURE_MS) {
            self.rejected.absurd_timestamp += 1;
            return;
        }
        self.watermarks.observe(partition, click.ts, now_ms);
        let (page, user) = (self.pages.id(&click.page), self.users.id(&click.user_id));
        let mut on_time = true;
        if self.operators.views_1m {
            on_time &= self.views_1m.add(page, click.ts, &user);
        }
        if self.operators.views_5m {
            on_time &= self.views_5m.add(page, click.ts, &());
        }
        if self.operators.sessions {
            on_time &= self.sessions.add(user, click.ts, &page);
        }
        if !on_time {
            self.rejected.late += 1;
        }
    }

    /// Moves the watermark and returns the results it completes, in event-time order per
    /// output.
    pub fn advance(&mut self, now_ms: i64) -> Vec<Output> {
        let watermark = self.watermarks.advance(now_ms);
        self.advance_to(watermark)
    }

    /// The end of the input: everything still open is complete.
    pub fn finish(&mut self) -> Vec<Output> {
        self.advance_to(EventTime::MAX)
    }

    fn advance_to(&mut self, watermark: EventTime) -> Vec<Output> {
        let mut out = Vec::new();
        // Within a window, results go out by name: ids depend on arrival order, names not.
        let mut minute: Vec<(String, i64, i64, u64, u64)> = self
            .views_1m
            .advance(watermark)
            .into_iter()
            .map(|(page, w, (views, users))| (self.pages.name(page), w.start, w.end, views, users))
            .collect();
        minute.sort_by(|a, b| (a.2, a.1, &a.0).cmp(&(b.2, b.1, &b.0)));
        let mut top: Option<(i64, i64, TopN<String, TOP_PAGES>)> = None;
        for (page, window_start, window_end, views, unique_users) in minute {
            match &mut top {
                Some((start, _, ranking)) if *start == window_start => ranking.add_n(&page, views),
                _ => {
                    if let Some((start, end, ranking)) = top.take() {
                        out.push(Output::TopPages1m { window_start: start, window_end: end, top: ranking.result() });
                    }
                    let mut ranking = TopN::default();
                    ranking.add_n(&page, views);
                    top = Some((window_start, window_end, ranking));
                }
            }
            out.push(Output::PageViews1m { page, window_start, window_end, views, unique_users });
        }
        if let Some((start, end, ranking)) = top {
            out.push(Output::TopPages1m { window_start: start, window_end: end, top: ranking.result() });
        }
        let mut five: Vec<Output> = self
            .views_5m
            .advance(watermark)
            .into_iter()
            .map(|(page, w, views)| Output::PageViews5m {
                page: self.pages.name(page),
                window_start: w.start,
                window_end: w.end,
                views,
            })
            .collect();
        five.sort_by(|a, b| match (a, b) {
            (
                Output::PageViews5m { window_end: e1, window_start: s1, page: p1, .. },
                Output::PageViews5m { window_end: e2, window_start: s2, page: p2, .. },
            ) => (e1, s1, p1).cmp(&(e2, s2, p2)),
            _ => std::cmp::Ordering::Equal,
        });
        out.extend(five);
        let mut sessions: Vec<Output> = self
            .sessions
            .advance(watermark)
            .into_iter()
            .map(|(user, w, (clicks, distinct_pages))| Output::UserSession {
                user_id: self.users.name(user),
                session_start: w.start,
                session_end: w.end,
                clicks,
                distinct_pages,
            })
            .collect();
        sessions.sort_by(|a, b| match (a, b) {
            (
                Output::UserSession { session_end: e1, user_id: u1, .. },
                Output::UserSession { session_end: e2, user_id: u2, .. },
            ) => (e1, u1).cmp(&(e2, u2)),
            _ => std::cmp::Ordering::Equal,
        });
        out.extend(sessions);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn click(user: &str, page: &str, ts: i64) -> Vec<u8> {
        format!(r#"{{"user_id":"{user}","page":"{page}","ts":{ts},"referrer":"x","user_agent":"y"}}"#).into_bytes()
    }

    #[test]
    fn page_counts_and_the_top_pages_match_a_brute_force_reference() {
        let base = 1_763_700_000_000i64 - 1_763_700_000_000i64 % MINUTE_MS;
        let mut job = Clickstream::new(4, 60_000);
        let mut seed = 7u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut clicks = Vec::new();
        let mut out = Vec::new();
        for i in 0..8_000i64 {
            let ts = base + i * 450 - (rand() % 4_000) as i64;
            let page = format!("/p/{}", rand() % 15);
            let user = format!("u-{}", rand() % 40);
            // Processing time: the wall clock around when the clicks happened.
            job.process((i % 4) as usize, &click(&user, &page, ts), base);
            clicks.push((user, page, ts));
            out.extend(job.advance(base));
        }
        out.extend(job.finish());
        assert_eq!(job.rejected, Rejected::default());
        let mut expected: BTreeMap<(i64, String), (u64, std::collections::BTreeSet<String>)> = BTreeMap::new();
        for (user, page, ts) in &clicks {
            let start = ts - ts.rem_euclid(MINUTE_MS);
            let entry = expected.entry((start, page.clone())).or_default();
            entry.0 += 1;
            entry.1.insert(user.clone());
        }
        let got: BTreeMap<(i64, String), (u64, u64)> = out
            .iter()
            .filter_map(|o| match o {
                Output::PageViews1m { page, window_start, views, unique_users, .. } => {
                    Some(((*window_start, page.clone()), (*views, *unique_users)))
                }
                _ => None,
            })
            .collect();
        let want: BTreeMap<(i64, String), (u64, u64)> =
            expected.iter().map(|(k, (views, users))| (k.clone(), (*views, users.len() as u64))).collect();
        assert_eq!(got, want);
        for output in &out {
            if let Output::TopPages1m { window_start, top, .. } = output {
                let mut ranking: Vec<(String, u64)> = want
                    .iter()
                    .filter(|((start, _), _)| start == window_start)
                    .map(|((_, page), (views, _))| (page.clone(), *views))
                    .collect();
                ranking.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                ranking.truncate(TOP_PAGES);
                assert_eq!(top, &ranking);
            }
        }
    }

    #[test]
    fn sessions_close_after_thirty_idle_minutes_and_bad_input_is_counted() {
        let mut job = Clickstream::new(1, 60_000);
        let t0 = 1_000 * MINUTE_MS;
        job.process(0, &click("u", "/a", t0), 0);
        job.process(0, &click("u", "/b", t0 + 10 * MINUTE_MS), 0);
        job.process(0, &click("u", "/a", t0 + 20 * MINUTE_MS), 0);
        job.process(0, b"{not json", 0);
        job.process(0, br#"{"user_id":"u","ts":5}"#, 0);
        job.process(0, &click("u", "/a", -3), 0);
        job.process(0, &click("u", "/a", i64::MAX / 2), 0);
        // A click 31 minutes later moves the watermark past the session's end + gap.
        job.process(0, &click("w", "/a", t0 + 51 * MINUTE_MS), 0);
        let sessions: Vec<Output> =
            job.advance(0).into_iter().filter(|o| matches!(o, Output::UserSession { .. })).collect();
        assert_eq!(
            sessions,
            vec![Output::UserSession {
                user_id: "u".into(),
                session_start: t0,
                session_end: t0 + 20 * MINUTE_MS,
                clicks: 3,
                distinct_pages: 2
            }]
        );
        assert_eq!(job.rejected, Rejected { malformed: 2, absurd_timestamp: 2, late: 0 });
        let json = sessions[0].to_json();
        assert_eq!(json["clicks"], 3);
        assert_eq!(sessions[0].topic(), "user-sessions");
    }
}
