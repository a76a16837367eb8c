//! What the clickstream job writes: one [`Output`] per result, with its topic, record key,
//! record timestamp and JSON value (field order as the README documents it).

/// One result, as the job writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    PageViews1m { page: String, window_start: i64, window_end: i64, views: u64, unique_users: u64 },
    PageViews5m { page: String, window_start: i64, window_end: i64, views: u64 },
    UserSession { user_id: String, session_start: i64, session_end: i64, clicks: u64, distinct_pages: u64 },
    TopPages1m { window_start: i64, window_end: i64, top: Vec<(String, u64)> },
}

pub const OUTPUT_TOPICS: [&str; 4] = ["page-views-1m", "page-views-5m", "user-sessions", "top-pages-1m"];

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

    /// The order results are written in within a round: per output by event time, then by
    /// name; a minute's top pages after its page counts.
    pub(crate) fn order_key(&self) -> (u8, i64, i64, &str) {
        match self {
            Output::PageViews1m { page, window_start, window_end, .. } => (0, *window_end, *window_start, page),
            Output::TopPages1m { window_start, window_end, .. } => (0, *window_end, *window_start, "\u{10ffff}"),
            Output::PageViews5m { page, window_start, window_end, .. } => (1, *window_end, *window_start, page),
            Output::UserSession { user_id, session_end, .. } => (2, *session_end, 0, user_id),
        }
    }
}
