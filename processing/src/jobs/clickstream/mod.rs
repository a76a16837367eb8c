//! The built-in clickstream job: clicks (`{"user_id","page","ts",...}` JSON, `ts` the event
//! time in epoch ms) in; page views per 1-minute tumbling window (with unique users), page
//! views per 5-minute window sliding every minute, user sessions (30-minute inactivity gap)
//! and the 10 most viewed pages per minute out. The watermark is the highest `ts` seen minus
//! 5 s, the minimum over partitions. Bad input (malformed JSON, missing fields, absurd
//! timestamps) is counted and skipped.
//!
//! As a [`Dataflow`]: the parser (`click`) routes a click by page to the key group counting
//! that page and by user to the one tracking that user's sessions; each key group
//! (`key_group`) runs three generic windowed aggregates over ids from its names dictionary
//! (`names`, `window_state`); the top pages of a minute are ranked from every group's counts
//! in the round the minute closes (`top_pages`). [`Clickstream`] runs the same logic in one
//! thread, without the runtime (tests and benchmarks).

use bytes::Bytes;

use crate::dataflow::EventTime;
use crate::dataflow::{Dataflow, OutputRecord, Rejection, Routed, SourceRecord};
use crate::operators::watermark::Watermarks;

mod click;
mod key_group;
mod names;
mod output;
mod top_pages;
mod window_state;

use click::{parse_click, ClickEvent};
use key_group::ClickstreamGroup;
pub use key_group::{Operators, MINUTE_MS, OPERATORS, SESSION_GAP_MS};
pub use output::{Output, OUTPUT_TOPICS};
use top_pages::assemble;
pub use top_pages::TOP_PAGES;

/// Out-of-orderness the watermark allows.
pub const WATERMARK_BOUND_MS: i64 = 5_000;

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

/// Counts of what was skipped, by reason; `late` sums the drops of every operator (a click
/// late for two of them counts twice, as a job's status counts it per operator).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    pub malformed: u64,
    pub absurd_timestamp: u64,
    pub late: u64,
}

/// Clicks applied to the key group at a time.
const BATCH: usize = 1024;

/// The whole job in one thread, without the runtime: for tests and benchmarks.
pub struct Clickstream {
    watermarks: Watermarks,
    group: ClickstreamGroup,
    /// Clicks read but not yet applied: they go in a batch at a time, and all of them
    /// before the watermark moves.
    pending: Vec<ClickEvent>,
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
            pending: Vec::with_capacity(BATCH),
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
                self.pending.push(ClickEvent { ts, text, views: true, sessions: true });
                if self.pending.len() >= BATCH {
                    self.apply();
                }
            }
        }
    }

    fn apply(&mut self) {
        let mut late = [0; OPERATORS.len()];
        crate::dataflow::KeyGroup::process(&mut self.group, &mut self.pending, &mut late);
        self.rejected.late += late.iter().sum::<u64>();
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
        self.apply();
        let mut results = Vec::new();
        crate::dataflow::KeyGroup::on_watermark(&mut self.group, watermark, &mut results);
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
            job.group.set_names_slack(slack);
            let mut out = Vec::new();
            let mut most_names = 0;
            for i in 0..30_000i64 {
                let ts = MINUTE_MS * 1_000 + i * 400;
                let (user, page) = (format!("u-{}", i / 7), format!("/p/{}", (i / 50) * 3 + i % 3));
                job.process(0, &click(&user, &page, ts), 0);
                out.extend(job.advance(0));
                most_names = most_names.max(job.group.names_held());
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
