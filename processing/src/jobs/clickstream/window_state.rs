//! The clickstream operators' per-window state over interned ids, and how each operator
//! writes it to its changelog and reads it back: by name, through the key group's
//! dictionary, so a changelog means the same after the ids are renumbered or the job
//! restarts. The formats (unchanged since the first checkpoints):
//! - `page-views-1m`: window key + page name -> `{"users":[names],"views":n}`;
//! - `page-views-5m`: window key + page name -> the count, as JSON;
//! - `user-sessions`: user name -> `[[start, last click, clicks, [page names]], ...]`.

use serde::Deserialize;

use crate::dataflow::EventTime;
use crate::error::{Error, Result};
use crate::jobs::clickstream::names::{ClickNames, Names};
use crate::operators::aggregate_functions::{Aggregate, Count, DistinctCount};
use crate::operators::windowed_aggregate::{OpenSessions, StateCodec};

/// Views and distinct users (by id) of a page in a window.
#[derive(Default)]
pub(crate) struct ViewsAndUsers(pub(crate) Count, pub(crate) DistinctCount<u32>);

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
pub(crate) struct ClicksAndPages(pub(crate) Count, pub(crate) DistinctCount<u32>);

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

fn names_of(names: &Names, ids: &DistinctCount<u32>) -> Vec<String> {
    ids.values().map(|id| names.name(*id)).collect()
}

fn ids_of(names: &mut Names, of: &[String]) -> DistinctCount<u32> {
    DistinctCount::from_values(of.iter().map(|name| names.id(name.as_bytes())))
}

/// A name from a changelog key, interned.
fn intern(names: &mut Names, key: &[u8], what: &'static str) -> Result<u32> {
    let name = std::str::from_utf8(key).map_err(|_| Error::KeyNotUtf8(what))?;
    Ok(names.id(name.as_bytes()))
}

fn decode<'a, T: Deserialize<'a>>(value: &'a [u8], what: &'static str) -> Result<T> {
    serde_json::from_slice(value).map_err(|source| Error::DecodeState { what, source })
}

fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(Error::EncodeState)
}

fn not_kept<T>(operator: &'static str, what: &'static str) -> Result<T> {
    Err(Error::NotKept { operator, what })
}

/// `page-views-1m`: views and unique users per page and 1-minute window.
pub(crate) struct PageViews1mState;

impl StateCodec<u32, ViewsAndUsers> for PageViews1mState {
    type Context = ClickNames;

    fn encode_key(&self, names: &ClickNames, page: &u32, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(names.pages.bytes(*page));
        Ok(())
    }

    fn decode_key(&self, names: &mut ClickNames, key: &[u8]) -> Result<u32> {
        intern(&mut names.pages, key, "window")
    }

    fn encode_window(&self, names: &ClickNames, state: &ViewsAndUsers) -> Result<Vec<u8>> {
        encode(&serde_json::json!({"views": state.0 .0, "users": names_of(&names.users, &state.1)}))
    }

    fn decode_window(&self, names: &mut ClickNames, value: &[u8]) -> Result<ViewsAndUsers> {
        #[derive(Deserialize)]
        struct State {
            views: u64,
            users: Vec<String>,
        }
        let state: State = decode(value, "page-views-1m")?;
        Ok(ViewsAndUsers(Count(state.views), ids_of(&mut names.users, &state.users)))
    }

    fn encode_sessions(&self, _: &ClickNames, _: &OpenSessions<ViewsAndUsers>) -> Result<Vec<u8>> {
        not_kept("page-views-1m", "sessions")
    }

    fn decode_sessions(&self, _: &mut ClickNames, _: &[u8]) -> Result<Vec<(EventTime, EventTime, ViewsAndUsers)>> {
        not_kept("page-views-1m", "sessions")
    }
}

/// `page-views-5m`: views per page and 5-minute window.
pub(crate) struct PageViews5mState;

impl StateCodec<u32, Count> for PageViews5mState {
    type Context = ClickNames;

    fn encode_key(&self, names: &ClickNames, page: &u32, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(names.pages.bytes(*page));
        Ok(())
    }

    fn decode_key(&self, names: &mut ClickNames, key: &[u8]) -> Result<u32> {
        intern(&mut names.pages, key, "window")
    }

    fn encode_window(&self, _: &ClickNames, views: &Count) -> Result<Vec<u8>> {
        Ok(views.0.to_string().into_bytes())
    }

    fn decode_window(&self, _: &mut ClickNames, value: &[u8]) -> Result<Count> {
        decode(value, "page-views-5m").map(Count)
    }

    fn encode_sessions(&self, _: &ClickNames, _: &OpenSessions<Count>) -> Result<Vec<u8>> {
        not_kept("page-views-5m", "sessions")
    }

    fn decode_sessions(&self, _: &mut ClickNames, _: &[u8]) -> Result<Vec<(EventTime, EventTime, Count)>> {
        not_kept("page-views-5m", "sessions")
    }
}

/// `user-sessions`: each user's open sessions, with clicks and distinct pages.
pub(crate) struct UserSessionsState;

/// A session as its changelog holds it: start, last click, clicks, page names.
type StoredSession = (i64, i64, u64, Vec<String>);

impl StateCodec<u32, ClicksAndPages> for UserSessionsState {
    type Context = ClickNames;

    fn encode_key(&self, names: &ClickNames, user: &u32, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(names.users.bytes(*user));
        Ok(())
    }

    fn decode_key(&self, names: &mut ClickNames, key: &[u8]) -> Result<u32> {
        intern(&mut names.users, key, "session")
    }

    fn encode_window(&self, _: &ClickNames, _: &ClicksAndPages) -> Result<Vec<u8>> {
        not_kept("user-sessions", "windows")
    }

    fn decode_window(&self, _: &mut ClickNames, _: &[u8]) -> Result<ClicksAndPages> {
        not_kept("user-sessions", "windows")
    }

    fn encode_sessions(&self, names: &ClickNames, open: &OpenSessions<ClicksAndPages>) -> Result<Vec<u8>> {
        let open: Vec<StoredSession> = open
            .iter()
            .map(|(start, last, state)| (*start, *last, state.0 .0, names_of(&names.pages, &state.1)))
            .collect();
        encode(&open)
    }

    fn decode_sessions(
        &self,
        names: &mut ClickNames,
        value: &[u8],
    ) -> Result<Vec<(EventTime, EventTime, ClicksAndPages)>> {
        let open: Vec<StoredSession> = decode(value, "user-sessions")?;
        let restored = open.into_iter().map(|(start, last, clicks, pages)| {
            (start, last, ClicksAndPages(Count(clicks), ids_of(&mut names.pages, &pages)))
        });
        Ok(restored.collect())
    }
}
