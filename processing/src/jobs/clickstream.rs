//! The clickstream job's logic: clicks (`{"user_id","page","ts",...}` JSON, `ts` the event
//! time in epoch ms) in; page views per 1-minute tumbling window (with unique users), page
//! views per 5-minute window sliding every minute, user sessions (30-minute inactivity gap)
//! and the 10 most viewed pages per minute out. The watermark is the highest `ts` seen minus
//! 5 s, the minimum over partitions. Bad input (malformed JSON, missing fields, absurd
//! timestamps) is counted and skipped.
//!
//! As a [`Dataflow`]: a click is routed by page to the key group counting that page and by
//! user to the one tracking that user's sessions; the top pages of a minute are ranked from
//! every group's counts in the round the minute closes (all groups close it together, at
//! the job's watermark). [`Clickstream`] runs the same logic in one thread, without the
//! runtime (tests and benchmarks).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::dataflow::{
    encode_state, is_absurd, Dataflow, KeyGroup, OutputRecord, Rejection, Routed, SourceRecord, StateRecord,
};
use crate::error::Error;
use crate::operators::aggregate_functions::{Aggregate, Count, DistinctCount, TopN};
use crate::operators::state::{StateMap, StateSet};
use crate::operators::watermark::{EventTime, Watermarks};
use crate::operators::window_assigner::{Window, WindowSpec};
use crate::operators::windowed_aggregate::{StateChange, WindowedAggregation};

pub const MINUTE_MS: i64 = 60_000;
/// Out-of-orderness the watermark allows.
pub const WATERMARK_BOUND_MS: i64 = 5_000;
pub const SESSION_GAP_MS: i64 = 30 * MINUTE_MS;
pub const TOP_PAGES: usize = 10;

/// Borrowed from the record's bytes: no allocation unless a string has escapes.
#[derive(Deserialize)]
struct Click<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    page: Cow<'a, str>,
    ts: i64,
}

/// A click's page and user as ranges of one buffer: the record's value itself (one
/// reference count for both, no copy) unless the JSON strings had escapes, in which case
/// the unescaped text is copied into a buffer of its own.
#[derive(Clone)]
struct ClickText {
    text: Bytes,
    page: (u32, u32),
    user: (u32, u32),
}

impl ClickText {
    fn page(&self) -> &[u8] {
        self.text.get(self.page.0 as usize..self.page.1 as usize).unwrap_or_default()
    }

    fn user(&self) -> &[u8] {
        self.text.get(self.user.0 as usize..self.user.1 as usize).unwrap_or_default()
    }
}

fn parse_click(value: &Bytes, now_ms: i64) -> Result<(EventTime, ClickText), Rejection> {
    let click = serde_json::from_slice::<Click>(value).map_err(|_| Rejection::Malformed)?;
    if is_absurd(click.ts, now_ms) {
        return Err(Rejection::AbsurdTimestamp);
    }
    let range = |part: &str, base: usize| {
        let start = (part.as_ptr() as usize).wrapping_sub(base);
        (start as u32, (start + part.len()) as u32)
    };
    let text = match (&click.page, &click.user_id) {
        (Cow::Borrowed(page), Cow::Borrowed(user)) if value.len() <= u32::MAX as usize => {
            let base = value.as_ptr() as usize;
            ClickText { text: value.clone(), page: range(page, base), user: range(user, base) }
        }
        (page, user) => {
            let (page_len, user_len) = (page.len() as u32, user.len() as u32);
            let text = Bytes::from(format!("{page}{user}"));
            ClickText { text, page: (0, page_len), user: (page_len, page_len + user_len) }
        }
    };
    Ok((click.ts, text))
}

/// Page and user names, each stored once: the operators key by these ids, so an event
/// costs a hash lookup rather than an allocation. Names are the bytes of JSON strings, so
/// UTF-8. (Grows with the distinct names seen.)
#[derive(Default)]
struct Names {
    ids: StateMap<Arc<[u8]>, u32>,
    names: Vec<Arc<[u8]>>,
}

impl Names {
    fn id(&mut self, name: &[u8]) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<[u8]> = name.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn bytes(&self, id: u32) -> &[u8] {
        self.names.get(id as usize).map(|n| &**n).unwrap_or_default()
    }

    fn name(&self, id: u32) -> String {
        String::from_utf8_lossy(self.bytes(id)).into_owned()
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    /// Only the names in `live`, renumbered: the new table, and each old id's new id.
    fn retain(&self, live: &StateSet<u32>) -> (Names, Vec<u32>) {
        let mut kept = Names::default();
        let mut renumber = vec![u32::MAX; self.names.len()];
        for (old, name) in self.names.iter().enumerate() {
            if live.contains(&(old as u32)) {
                renumber[old] = kept.id(name);
            }
        }
        (kept, renumber)
    }
}

/// Names beyond twice those in use (plus this many) start a renumbering that drops the
/// unused ones: users and pages whose state is gone would otherwise stay forever.
const NAMES_SLACK: usize = 100_000;

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

    /// The record's timestamp: a window's last millisecond, or a session's last click.
    pub fn timestamp_ms(&self) -> i64 {
        match self {
            Output::PageViews1m { window_end, .. }
            | Output::PageViews5m { window_end, .. }
            | Output::TopPages1m { window_end, .. } => window_end - 1,
            Output::UserSession { session_end, .. } => *session_end,
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

    fn order_key(&self) -> (u8, i64, i64, &str) {
        match self {
            Output::PageViews1m { page, window_start, window_end, .. } => (0, *window_end, *window_start, page),
            Output::TopPages1m { window_start, window_end, .. } => (0, *window_end, *window_start, "\u{10ffff}"),
            Output::PageViews5m { page, window_start, window_end, .. } => (1, *window_end, *window_start, page),
            Output::UserSession { user_id, session_end, .. } => (2, *session_end, 0, user_id),
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

/// The stateful operators, numbered as in [`StateRecord::operator`] and the late bits.
pub const OPERATORS: [&str; 3] = ["page-views-1m", "page-views-5m", "user-sessions"];
const VIEWS_1M: usize = 0;
const VIEWS_5M: usize = 1;
const SESSIONS: usize = 2;
pub const OUTPUT_TOPICS: [&str; 4] = ["page-views-1m", "page-views-5m", "user-sessions", "top-pages-1m"];

/// A click on its way to a key group: routed by page, by user, or both when the two land
/// in the same group.
pub struct ClickEvent {
    ts: EventTime,
    text: ClickText,
    views: bool,
    sessions: bool,
}

/// The clickstream job's keyed state for the pages and users of one key group.
pub struct ClickstreamGroup {
    operators: Operators,
    pages: Names,
    users: Names,
    /// Names held (pages and users) above which they are compacted.
    names_limit: usize,
    names_slack: usize,
    views_1m: WindowedAggregation<u32, ViewsAndUsers>,
    views_5m: WindowedAggregation<u32, Count>,
    sessions: WindowedAggregation<u32, ClicksAndPages>,
}

impl ClickstreamGroup {
    pub fn new(operators: Operators) -> ClickstreamGroup {
        ClickstreamGroup {
            operators,
            pages: Names::default(),
            users: Names::default(),
            names_limit: NAMES_SLACK,
            names_slack: NAMES_SLACK,
            views_1m: windowed(WindowSpec::Tumbling { size_ms: MINUTE_MS }),
            views_5m: windowed(WindowSpec::Sliding { size_ms: 5 * MINUTE_MS, slide_ms: MINUTE_MS }),
            sessions: windowed(WindowSpec::Session { gap_ms: SESSION_GAP_MS }),
        }
    }

    /// Drops the names no state refers to any more and renumbers the rest, once there are
    /// more than twice as many names as live ones (plus slack): amortised, a constant cost
    /// per name interned.
    fn compact_names(&mut self) {
        if self.pages.len() + self.users.len() <= self.names_limit {
            return;
        }
        let (mut live_pages, mut live_users) = (StateSet::default(), StateSet::default());
        self.views_1m.for_each(|page, state| {
            live_pages.insert(*page);
            live_users.extend(state.into_iter().flat_map(|s| s.1.values().copied()));
        });
        self.views_5m.for_each(|page, _| {
            live_pages.insert(*page);
        });
        self.sessions.for_each(|user, state| {
            live_users.insert(*user);
            live_pages.extend(state.into_iter().flat_map(|s| s.1.values().copied()));
        });
        let (pages, page_ids) = self.pages.retain(&live_pages);
        let (users, user_ids) = self.users.retain(&live_users);
        let page = |id: &u32| page_ids.get(*id as usize).copied().unwrap_or(u32::MAX);
        let user = |id: &u32| user_ids.get(*id as usize).copied().unwrap_or(u32::MAX);
        self.views_1m.remap(page, |s| s.1 = DistinctCount::from_values(s.1.values().map(user)));
        self.views_5m.remap(page, |_| {});
        self.sessions.remap(user, |s| s.1 = DistinctCount::from_values(s.1.values().map(page)));
        self.pages = pages;
        self.users = users;
        self.names_limit = 2 * (self.pages.len() + self.users.len()) + self.names_slack;
    }
}

/// A window's changelog key: its end and start (big-endian, so keys sort by time), then the
/// key's name.
fn window_key(window: Window, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + name.len());
    key.extend_from_slice(&window.end.to_be_bytes());
    key.extend_from_slice(&window.start.to_be_bytes());
    key.extend_from_slice(name);
    key
}

fn parse_window_key(key: &[u8]) -> Result<(Window, &str), Error> {
    if key.len() < 16 {
        return Err(Error::ShortWindowKey(key.len()));
    }
    let (end, rest) = key.split_at(8);
    let (start, name) = rest.split_at(8);
    let time = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or_default());
    let name = std::str::from_utf8(name).map_err(|_| Error::KeyNotUtf8("window"))?;
    Ok((Window { start: time(start), end: time(end) }, name))
}

fn decode<'a, T: Deserialize<'a>>(value: &'a [u8], what: &'static str) -> Result<T, Error> {
    serde_json::from_slice(value).map_err(|source| Error::DecodeState { what, source })
}

impl ClickstreamGroup {
    /// Applies a click; returns the operators (bit `i` for operator `i`) that dropped it as
    /// late.
    fn process_click(&mut self, event: ClickEvent) -> u32 {
        let mut late = 0;
        let ops = self.operators;
        let user = if (event.views && ops.views_1m) || (event.sessions && ops.sessions) {
            self.users.id(event.text.user())
        } else {
            0
        };
        if event.views && (ops.views_1m || ops.views_5m) {
            let page = self.pages.id(event.text.page());
            if self.operators.views_1m && !self.views_1m.add(page, event.ts, &user) {
                late |= 1 << VIEWS_1M;
            }
            if self.operators.views_5m && !self.views_5m.add(page, event.ts, &()) {
                late |= 1 << VIEWS_5M;
            }
        }
        if event.sessions && self.operators.sessions {
            let page = self.pages.id(event.text.page());
            if !self.sessions.add(user, event.ts, &page) {
                late |= 1 << SESSIONS;
            }
        }
        late
    }
}

impl KeyGroup for ClickstreamGroup {
    type Event = ClickEvent;
    type Result = Output;

    fn process(&mut self, events: &mut Vec<ClickEvent>, late: &mut [u64]) {
        for event in events.drain(..) {
            let mut dropped = self.process_click(event);
            while dropped != 0 {
                late[dropped.trailing_zeros() as usize] += 1;
                dropped &= dropped - 1;
            }
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<Output>) {
        self.advance_windows(watermark, out);
        // After firing: the fired windows' names may now be unused.
        self.compact_names();
    }

    fn checkpoint(&mut self, everything: bool, out: &mut Vec<StateRecord>) -> Result<(), Error> {
        self.write_changes(everything, out)
    }

    fn restore(&mut self, operator: usize, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.restore_state(operator, key, value)
    }

    fn restore_watermark(&mut self, watermark: EventTime) {
        self.views_1m.restore_watermark(watermark);
        self.views_5m.restore_watermark(watermark);
        self.sessions.restore_watermark(watermark);
    }

    fn state_entries(&self) -> usize {
        self.views_1m.open_state() + self.views_5m.open_state() + self.sessions.open_state()
    }
}

impl ClickstreamGroup {
    fn advance_windows(&mut self, watermark: EventTime, out: &mut Vec<Output>) {
        let (pages, users) = (&self.pages, &self.users);
        for (page, w, (views, unique_users)) in self.views_1m.advance(watermark) {
            let page = pages.name(page);
            out.push(Output::PageViews1m { page, window_start: w.start, window_end: w.end, views, unique_users });
        }
        for (page, w, views) in self.views_5m.advance(watermark) {
            let page = pages.name(page);
            out.push(Output::PageViews5m { page, window_start: w.start, window_end: w.end, views });
        }
        for (user, w, (clicks, distinct_pages)) in self.sessions.advance(watermark) {
            out.push(Output::UserSession {
                user_id: users.name(user),
                session_start: w.start,
                session_end: w.end,
                clicks,
                distinct_pages,
            });
        }
    }

    fn write_changes(&mut self, everything: bool, out: &mut Vec<StateRecord>) -> Result<(), Error> {
        let (pages, users) = (&self.pages, &self.users);
        let mut error = None;
        let names = |names: &Names, ids: &DistinctCount<u32>| -> Vec<String> {
            ids.values().map(|id| names.name(*id).to_string()).collect()
        };
        self.views_1m.drain_changes(everything, |page, change| {
            if let StateChange::Window(window, state) = change {
                let value = state.map(|s| {
                    encode_state(&serde_json::json!({"views": s.0.0, "users": names(users, &s.1)}), &mut error)
                });
                out.push(StateRecord { operator: VIEWS_1M, key: window_key(window, pages.bytes(*page)), value });
            }
        });
        self.views_5m.drain_changes(everything, |page, change| {
            if let StateChange::Window(window, state) = change {
                let value = state.map(|s| s.0.to_string().into_bytes());
                out.push(StateRecord { operator: VIEWS_5M, key: window_key(window, pages.bytes(*page)), value });
            }
        });
        self.sessions.drain_changes(everything, |user, change| {
            if let StateChange::Sessions(open) = change {
                let value = (!open.is_empty()).then(|| {
                    let open: Vec<(i64, i64, u64, Vec<String>)> =
                        open.iter().map(|(start, last, s)| (*start, *last, s.0 .0, names(pages, &s.1))).collect();
                    encode_state(&open, &mut error)
                });
                out.push(StateRecord { operator: SESSIONS, key: users.bytes(*user).to_vec(), value });
            }
        });
        error.map_or(Ok(()), Err)
    }

    fn restore_state(&mut self, operator: usize, key: &[u8], value: &[u8]) -> Result<(), Error> {
        match operator {
            VIEWS_1M => {
                #[derive(Deserialize)]
                struct State {
                    views: u64,
                    users: Vec<String>,
                }
                let (window, page) = parse_window_key(key)?;
                let state: State = decode(value, "page-views-1m")?;
                let users = DistinctCount::from_values(state.users.iter().map(|u| self.users.id(u.as_bytes())));
                let page = self.pages.id(page.as_bytes());
                self.views_1m.restore_window(page, window, ViewsAndUsers(Count(state.views), users));
            }
            VIEWS_5M => {
                let (window, page) = parse_window_key(key)?;
                let views: u64 = decode(value, "page-views-5m")?;
                let page = self.pages.id(page.as_bytes());
                self.views_5m.restore_window(page, window, Count(views));
            }
            SESSIONS => {
                let user = std::str::from_utf8(key).map_err(|_| Error::KeyNotUtf8("session"))?;
                let user = self.users.id(user.as_bytes());
                let open: Vec<(i64, i64, u64, Vec<String>)> = decode(value, "user-sessions")?;
                let open = open
                    .into_iter()
                    .map(|(start, last, clicks, pages)| {
                        let pages = DistinctCount::from_values(pages.iter().map(|p| self.pages.id(p.as_bytes())));
                        (start, last, ClicksAndPages(Count(clicks), pages))
                    })
                    .collect();
                self.sessions.restore_sessions(user, open);
            }
            other => return Err(Error::NoSuchOperator { operator: other, job: "clickstream" }),
        }
        Ok(())
    }
}

/// Puts one round's results in their written order (per output by event time, then name)
/// and ranks each closed minute's pages into its top-pages result.
pub fn assemble(mut results: Vec<Output>) -> Vec<Output> {
    let mut rankings: BTreeMap<(i64, i64), TopN<String, TOP_PAGES>> = BTreeMap::new();
    for result in &results {
        if let Output::PageViews1m { page, window_start, window_end, views, .. } = result {
            rankings.entry((*window_start, *window_end)).or_default().add_n(page, *views);
        }
    }
    results.extend(rankings.into_iter().map(|((window_start, window_end), ranking)| Output::TopPages1m {
        window_start,
        window_end,
        top: ranking.result(),
    }));
    results.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    results
}

/// The clickstream job as a [`Dataflow`].
pub struct ClickstreamDataflow {
    pub operators: Operators,
}

impl ClickstreamDataflow {
    /// Parses a click and routes it by page and by user.
    fn route(
        &self,
        record: &SourceRecord,
        now_ms: i64,
        out: &mut Routed<ClickEvent>,
    ) -> Result<Option<EventTime>, Rejection> {
        let value = record.value.as_ref().ok_or(Rejection::Malformed)?;
        let (ts, text) = parse_click(value, now_ms)?;
        let ops = self.operators;
        let (by_page, by_user) = (out.group_of(text.page()), out.group_of(text.user()));
        if !ops.sessions {
            out.send(by_page, ClickEvent { ts, text, views: true, sessions: false });
        } else if !(ops.views_1m || ops.views_5m) {
            out.send(by_user, ClickEvent { ts, text, views: false, sessions: true });
        } else if by_page == by_user {
            out.send(by_page, ClickEvent { ts, text, views: true, sessions: true });
        } else {
            out.send(by_page, ClickEvent { ts, text: text.clone(), views: true, sessions: false });
            out.send(by_user, ClickEvent { ts, text, views: false, sessions: true });
        }
        Ok(Some(ts))
    }
}

impl Dataflow for ClickstreamDataflow {
    type Event = ClickEvent;
    type Result = Output;
    type Group = ClickstreamGroup;

    fn operators(&self) -> &'static [&'static str] {
        &OPERATORS
    }

    fn output_topics(&self) -> Vec<String> {
        OUTPUT_TOPICS.iter().map(|t| t.to_string()).collect()
    }

    fn parse(&self, records: &[SourceRecord], now_ms: i64, out: &mut Routed<ClickEvent>) {
        for record in records {
            let outcome = self.route(record, now_ms, out);
            out.record(outcome);
        }
    }

    fn new_group(&self) -> ClickstreamGroup {
        ClickstreamGroup::new(self.operators)
    }

    fn finish(&self, results: Vec<Output>, out: &mut Vec<OutputRecord>) {
        for result in assemble(results) {
            out.push(OutputRecord {
                topic: result.topic().into(),
                key: Bytes::from(result.key()),
                value: Bytes::from(result.to_json().to_string()),
                timestamp_ms: result.timestamp_ms(),
            });
        }
    }
}

/// The whole job in one thread, without the runtime: for tests and benchmarks.
pub struct Clickstream {
    watermarks: Watermarks,
    group: ClickstreamGroup,
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
            watermarks: Watermarks::new(partitions, WATERMARK_BOUND_MS, idle_timeout_ms),
            group: ClickstreamGroup::new(operators),
            rejected: Rejected::default(),
        }
    }

    /// One click from `partition`, read at processing time `now_ms`.
    pub fn process(&mut self, partition: usize, value: &Bytes, now_ms: i64) {
        match parse_click(value, now_ms) {
            Err(Rejection::Malformed) => self.rejected.malformed += 1,
            Err(Rejection::AbsurdTimestamp) => self.rejected.absurd_timestamp += 1,
            Ok((ts, text)) => {
                self.watermarks.observe(partition, ts, now_ms);
                let event = ClickEvent { ts, text, views: true, sessions: true };
                if self.group.process_click(event) != 0 {
                    self.rejected.late += 1;
                }
            }
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
        let mut results = Vec::new();
        self.group.on_watermark(watermark, &mut results);
        assemble(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn click(user: &str, page: &str, ts: i64) -> Bytes {
        Bytes::from(format!(r#"{{"user_id":"{user}","page":"{page}","ts":{ts},"referrer":"x","user_agent":"y"}}"#))
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
    fn unused_names_are_dropped_without_changing_any_result() {
        // Users and pages come and go; with a tiny slack the names are compacted often.
        let run = |slack: usize| {
            let mut job = Clickstream::new(1, 60_000);
            job.group.names_slack = slack;
            job.group.names_limit = slack;
            let mut out = Vec::new();
            let mut most_names = 0;
            for i in 0..30_000i64 {
                let ts = MINUTE_MS * 1_000 + i * 400;
                let (user, page) = (format!("u-{}", i / 7), format!("/p/{}", (i / 50) * 3 + i % 3));
                job.process(0, &click(&user, &page, ts), 0);
                out.extend(job.advance(0));
                most_names = most_names.max(job.group.pages.len() + job.group.users.len());
            }
            out.extend(job.finish());
            (out, most_names)
        };
        let (compacted, most_compacted) = run(10);
        let (plain, most_plain) = run(usize::MAX / 4);
        assert_eq!(compacted, plain);
        assert!(most_plain > 4_000, "{most_plain}");
        assert!(most_compacted < most_plain / 2, "{most_compacted} names at most, against {most_plain}");
    }

    #[test]
    fn sessions_close_after_thirty_idle_minutes_and_bad_input_is_counted() {
        let mut job = Clickstream::new(1, 60_000);
        let t0 = 1_000 * MINUTE_MS;
        job.process(0, &click("u", "/a", t0), 0);
        job.process(0, &click("u", "/b", t0 + 10 * MINUTE_MS), 0);
        job.process(0, &click("u", "/a", t0 + 20 * MINUTE_MS), 0);
        job.process(0, &Bytes::from_static(b"{not json"), 0);
        job.process(0, &Bytes::from_static(br#"{"user_id":"u","ts":5}"#), 0);
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
