//! The clickstream job's input: a click is JSON, `{"user_id","page","ts",...}` with `ts`
//! the event time in epoch ms. It is read in place from the record's bytes: the page and the
//! user stay slices of the record's value (no copy) unless their JSON strings had escapes.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

use crate::dataflow::EventTime;
use crate::dataflow::{is_absurd, Rejection};

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
pub(crate) struct ClickText {
    text: Bytes,
    page: (u32, u32),
    user: (u32, u32),
}

impl ClickText {
    pub(crate) fn page(&self) -> &[u8] {
        self.text.get(self.page.0 as usize..self.page.1 as usize).unwrap_or_default()
    }

    pub(crate) fn user(&self) -> &[u8] {
        self.text.get(self.user.0 as usize..self.user.1 as usize).unwrap_or_default()
    }
}

/// Parses a click read at processing time `now_ms`: its event time and text.
pub(crate) fn parse_click(value: &Bytes, now_ms: i64) -> Result<(EventTime, ClickText), Rejection> {
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

/// A click on its way to a key group: routed by page (for the page views), by user (for
/// the sessions), or both when the two land in the same group.
pub struct ClickEvent {
    pub(crate) ts: EventTime,
    pub(crate) text: ClickText,
    pub(crate) views: bool,
    pub(crate) sessions: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_click_is_read_in_place_unless_its_strings_have_escapes() {
        let value = Bytes::from_static(br#"{"user_id":"u-1","page":"/a","ts":5,"referrer":"x"}"#);
        let (ts, text) = parse_click(&value, 0).unwrap();
        assert_eq!((ts, text.page(), text.user()), (5, &b"/a"[..], &b"u-1"[..]));
        assert_eq!(text.text.as_ptr(), value.as_ptr(), "no copy of the record's bytes");
        let escaped = Bytes::from_static(br#"{"user_id":"u\"2","page":"/\u00e9","ts":6}"#);
        let (_, text) = parse_click(&escaped, 0).unwrap();
        assert_eq!((text.page(), text.user()), ("/\u{e9}".as_bytes(), &b"u\"2"[..]));
    }
}
