//! The clickstream job's keyed state for the pages and users of one key group, composed of
//! three generic windowed aggregates over interned ids: page views per 1-minute tumbling
//! window with distinct users, page views per 5-minute window sliding by 1 minute, and user
//! sessions (30-minute gap) with distinct pages. The names dictionary they share is their
//! changelog context; it is compacted once most of its names are no longer in any state.

use crate::dataflow::EventTime;
use crate::dataflow::{KeyGroup, StateRecord};
use crate::error::{Error, Result};
use crate::jobs::clickstream::click::ClickEvent;
use crate::jobs::clickstream::names::ClickNames;
use crate::jobs::clickstream::output::Output;
use crate::jobs::clickstream::window_state::{
    ClicksAndPages, PageViews1mState, PageViews5mState, UserSessionsState, ViewsAndUsers,
};
use crate::operators::aggregate_functions::{Aggregate, Count, DistinctCount};
use crate::operators::state::StateSet;
use crate::operators::window_assigner::{Window, WindowSpec};
use crate::operators::windowed_aggregate::{AddInput, StateCodec, WindowedAggregate};
use crate::operators::{ChangelogWriter, KeyedEvent, Operator};

pub const MINUTE_MS: i64 = 60_000;
pub const SESSION_GAP_MS: i64 = 30 * MINUTE_MS;

/// The stateful operators, numbered as in [`StateRecord::operator`] and the late counts.
pub const OPERATORS: [&str; 3] = ["page-views-1m", "page-views-5m", "user-sessions"];
const VIEWS_1M: usize = 0;
const VIEWS_5M: usize = 1;
const SESSIONS: usize = 2;

/// Names beyond twice those in use (plus this many) start a renumbering that drops the
/// unused ones: users and pages whose state is gone would otherwise stay forever.
const NAMES_SLACK: usize = 100_000;

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

/// Views and unique users by page id; the value is the user id.
type PageViews1m = WindowedAggregate<u32, u32, ViewsAndUsers, PageViews1mState>;
/// Views by page id.
type PageViews5m = WindowedAggregate<u32, (), Count, PageViews5mState>;
/// Sessions by user id; the value is the page id.
type UserSessions = WindowedAggregate<u32, u32, ClicksAndPages, UserSessionsState>;

/// The job's fixed window definitions are valid; a failure here is a bug of ours.
fn windowed<V, A, C>(spec: WindowSpec, codec: C) -> WindowedAggregate<u32, V, A, C>
where
    A: Aggregate<Input = V>,
    C: StateCodec<u32, A>,
{
    WindowedAggregate::new(spec, 0, codec, AddInput).expect("the clickstream job's window definitions are valid")
}

/// One key group of the clickstream job.
pub struct ClickstreamGroup {
    operators: Operators,
    names: ClickNames,
    /// Names held (pages and users) above which they are compacted.
    names_limit: usize,
    names_slack: usize,
    views_1m: PageViews1m,
    views_5m: PageViews5m,
    sessions: UserSessions,
    /// Each operator's part of the batch being applied (kept for their capacity).
    views_1m_in: Vec<KeyedEvent<u32, u32>>,
    views_5m_in: Vec<KeyedEvent<u32, ()>>,
    sessions_in: Vec<KeyedEvent<u32, u32>>,
}

impl ClickstreamGroup {
    pub(crate) fn new(operators: Operators) -> ClickstreamGroup {
        ClickstreamGroup {
            operators,
            names: ClickNames::default(),
            names_limit: NAMES_SLACK,
            names_slack: NAMES_SLACK,
            views_1m: windowed(WindowSpec::Tumbling { size_ms: MINUTE_MS }, PageViews1mState),
            views_5m: windowed(WindowSpec::Sliding { size_ms: 5 * MINUTE_MS, slide_ms: MINUTE_MS }, PageViews5mState),
            sessions: windowed(WindowSpec::Session { gap_ms: SESSION_GAP_MS }, UserSessionsState),
            views_1m_in: Vec::new(),
            views_5m_in: Vec::new(),
            sessions_in: Vec::new(),
        }
    }

    /// Interns a click's page and user and hands it to the operators it is routed to.
    fn split(&mut self, event: ClickEvent) {
        let ops = self.operators;
        let views = event.views && (ops.views_1m || ops.views_5m);
        let sessions = event.sessions && ops.sessions;
        let user = if (event.views && ops.views_1m) || sessions { self.names.users.id(event.text.user()) } else { 0 };
        let page = if views || sessions { self.names.pages.id(event.text.page()) } else { 0 };
        let time = event.ts;
        if views && ops.views_1m {
            self.views_1m_in.push(KeyedEvent { key: page, time, value: user });
        }
        if views && ops.views_5m {
            self.views_5m_in.push(KeyedEvent { key: page, time, value: () });
        }
        if sessions {
            self.sessions_in.push(KeyedEvent { key: user, time, value: page });
        }
    }

    /// The results the watermark completes, by name.
    fn fire(&mut self, watermark: EventTime, out: &mut Vec<Output>) {
        let names = &self.names;
        let mut views_1m = Vec::new();
        self.views_1m.on_watermark(watermark, &mut views_1m);
        for (page, w, (views, unique_users)) in views_1m {
            let page = names.pages.name(page);
            out.push(Output::PageViews1m { page, window_start: w.start, window_end: w.end, views, unique_users });
        }
        let mut views_5m = Vec::new();
        self.views_5m.on_watermark(watermark, &mut views_5m);
        for (page, w, views) in views_5m {
            let page = names.pages.name(page);
            out.push(Output::PageViews5m { page, window_start: w.start, window_end: w.end, views });
        }
        let mut sessions: Vec<(u32, Window, (u64, u64))> = Vec::new();
        self.sessions.on_watermark(watermark, &mut sessions);
        for (user, w, (clicks, distinct_pages)) in sessions {
            let user_id = names.users.name(user);
            out.push(Output::UserSession {
                user_id,
                session_start: w.start,
                session_end: w.end,
                clicks,
                distinct_pages,
            });
        }
    }

    /// Drops the names no state refers to any more and renumbers the rest, once there are
    /// more than twice as many names as live ones (plus slack): amortised, a constant cost
    /// per name interned.
    fn compact_names(&mut self) {
        if self.names.len() <= self.names_limit {
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
        let (pages, page_ids) = self.names.pages.retain(&live_pages);
        let (users, user_ids) = self.names.users.retain(&live_users);
        let page = |id: &u32| page_ids.get(*id as usize).copied().unwrap_or(u32::MAX);
        let user = |id: &u32| user_ids.get(*id as usize).copied().unwrap_or(u32::MAX);
        self.views_1m.remap(page, |s| s.1 = DistinctCount::from_values(s.1.values().map(user)));
        self.views_5m.remap(page, |_| {});
        self.sessions.remap(user, |s| s.1 = DistinctCount::from_values(s.1.values().map(page)));
        self.names = ClickNames { pages, users };
        self.names_limit = 2 * self.names.len() + self.names_slack;
    }

    /// Compacts with `slack` names of room instead of [`NAMES_SLACK`].
    #[cfg(test)]
    pub(crate) fn set_names_slack(&mut self, slack: usize) {
        self.names_slack = slack;
        self.names_limit = slack;
    }

    #[cfg(test)]
    pub(crate) fn names_held(&self) -> usize {
        self.names.len()
    }
}

impl KeyGroup for ClickstreamGroup {
    type Event = ClickEvent;
    type Result = Output;

    fn process(&mut self, events: &mut Vec<ClickEvent>, late: &mut [u64]) {
        for event in events.drain(..) {
            self.split(event);
        }
        let dropped = [
            self.views_1m.process_batch(&mut self.views_1m_in),
            self.views_5m.process_batch(&mut self.views_5m_in),
            self.sessions.process_batch(&mut self.sessions_in),
        ];
        for (count, dropped) in late.iter_mut().zip(dropped) {
            *count += dropped;
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<Output>) {
        self.fire(watermark, out);
        // After firing: the fired windows' names may now be unused.
        self.compact_names();
    }

    fn checkpoint(&mut self, out: &mut Vec<StateRecord>) -> Result<()> {
        let names = &self.names;
        self.views_1m.checkpoint(names, &mut ChangelogWriter::new(VIEWS_1M, out))?;
        self.views_5m.checkpoint(names, &mut ChangelogWriter::new(VIEWS_5M, out))?;
        self.sessions.checkpoint(names, &mut ChangelogWriter::new(SESSIONS, out))
    }

    fn restore(&mut self, operator: usize, key: &[u8], value: &[u8]) -> Result<()> {
        let names = &mut self.names;
        match operator {
            VIEWS_1M => self.views_1m.restore(names, key, value),
            VIEWS_5M => self.views_5m.restore(names, key, value),
            SESSIONS => self.sessions.restore(names, key, value),
            other => Err(Error::NoSuchOperator { operator: other, job: "clickstream" }),
        }
    }

    fn restore_watermark(&mut self, watermark: EventTime) {
        self.views_1m.restore_watermark(watermark);
        self.views_5m.restore_watermark(watermark);
        self.sessions.restore_watermark(watermark);
    }

    fn state_entries(&self) -> usize {
        self.views_1m.state_entries() + self.views_5m.state_entries() + self.sessions.state_entries()
    }
}
