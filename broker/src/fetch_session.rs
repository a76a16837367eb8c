//! Incremental fetch sessions (KIP-227). A client fetching many partitions opens a session
//! with one full fetch (epoch 0); the broker remembers the partitions and what it last told
//! the client about each. Later fetches (epoch 1, 2, ...) name only the partitions whose
//! fetch position changed, and the response carries only partitions with records, errors or
//! changed offsets. The cache holds at most `max.incremental.fetch.session.cache.slots`
//! sessions; when it is full a new session takes the place of one idle for two minutes, or of
//! the smallest one if it is smaller than the newcomer, as in Kafka; otherwise the client is
//! told no session (id 0) and keeps sending full fetches.
//!
//! Invariants: a session's epoch is the one its next request must carry, bumped when a
//! request is accepted (so a repeated or concurrent request with the same epoch is refused);
//! a session only ever holds partitions its client named.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchResponse, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::TopicName;
use parking_lot::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::partition::Partition;

/// Finds the partition a fetch names (by topic name before v13, by id from it).
pub(crate) type Resolve<'a> = &'a dyn Fn(&FetchTopic, i32) -> Option<Arc<Partition>>;

/// Fetch's `isolation_level` for read_committed consumers.
pub(crate) const READ_COMMITTED: i8 = 1;
/// The epoch of a request that opens a session.
const INITIAL_EPOCH: i32 = 0;
/// The epoch of a full request that uses (or closes) no session.
const FINAL_EPOCH: i32 = -1;
/// A session unused this long may be evicted for a new one (Kafka's
/// `min.incremental.fetch.session.eviction.ms`).
const EVICTION_AGE: Duration = Duration::from_secs(120);

/// A partition of a session: named by topic name before Fetch v13 and by topic id from it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    topic: String,
    topic_id: Uuid,
    partition: i32,
}

impl Key {
    fn new(topic: &FetchTopic, partition: i32, version: i16) -> Key {
        Key::of(&topic.topic, topic.topic_id, partition, version)
    }

    fn of(name: &TopicName, topic_id: Uuid, partition: i32, version: i16) -> Key {
        if version >= 13 {
            Key { topic: String::new(), topic_id, partition }
        } else {
            Key { topic: name.0.to_string(), topic_id: Uuid::nil(), partition }
        }
    }
}

/// What a session remembers of a partition: the client's position, and what the last
/// response said of its offsets (a change in them must be sent).
struct Cached {
    topic: TopicName,
    topic_id: Uuid,
    /// The partition, resolved once, so that a fetch can tell a quiet one without a lookup.
    partition: Option<Arc<Partition>>,
    request: FetchPartition,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
}

impl Cached {
    /// A partition a request names, with what its response said (None: nothing yet, so the
    /// next response carries it).
    fn new(topic: &FetchTopic, wanted: &FetchPartition, resolve: Resolve<'_>, sent: Option<&PartitionData>) -> Cached {
        let offsets = sent.map_or((-1, -1, -1), |d| (d.high_watermark, d.last_stable_offset, d.log_start_offset));
        Cached {
            topic: topic.topic.clone(),
            topic_id: topic.topic_id,
            partition: resolve(topic, wanted.partition),
            request: wanted.clone(),
            high_watermark: offsets.0,
            last_stable_offset: offsets.1,
            log_start_offset: offsets.2,
        }
    }

    /// Whether a fetch can leave this partition out without reading it: nothing to read at
    /// the client's position, and offsets as last sent. Its log is still live (a deleted
    /// topic is read, so the client hears of it).
    fn quiet(&self, read_committed: bool) -> bool {
        let Some(partition) = &self.partition else { return false };
        if partition.log.is_deleted() {
            return false;
        }
        let bounds = partition.log.read_bounds();
        let limit = if read_committed { bounds.last_stable_offset } else { bounds.high_watermark };
        self.request.fetch_offset == limit.0
            && bounds.high_watermark.0 == self.high_watermark
            && bounds.last_stable_offset.0 == self.last_stable_offset
            && bounds.log_start_offset.0 == self.log_start_offset
    }

    /// Whether the response must carry this partition, and it remembers what it carried.
    fn must_send(&mut self, data: &PartitionData) -> bool {
        let changed = data.high_watermark != self.high_watermark
            || data.last_stable_offset != self.last_stable_offset
            || data.log_start_offset != self.log_start_offset;
        self.high_watermark = data.high_watermark;
        self.last_stable_offset = data.last_stable_offset;
        self.log_start_offset = data.log_start_offset;
        changed || data.error_code != 0 || data.records.as_ref().is_some_and(|r| !r.is_empty())
    }
}

struct Session {
    /// The epoch the next request must carry.
    epoch: i32,
    partitions: BTreeMap<Key, Cached>,
    last_used: Instant,
}

/// How one fetch request relates to the sessions.
pub(crate) enum FetchContext {
    /// A full fetch with no session.
    Sessionless,
    /// A full fetch opening a session: if the cache has room, the response creates it.
    New,
    /// An incremental fetch in an existing session.
    Incremental { id: i32, session: Arc<Mutex<SessionSlot>> },
}

/// A session as the cache holds it.
pub(crate) struct SessionSlot(Session);

pub(crate) struct FetchSessionCache {
    slots: usize,
    sessions: Mutex<HashMap<i32, Arc<Mutex<SessionSlot>>>>,
}

impl FetchSessionCache {
    pub fn new(slots: usize) -> FetchSessionCache {
        FetchSessionCache { slots, sessions: Mutex::new(HashMap::new()) }
    }

    /// Sessions held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Classifies a request and, for an incremental one, checks and bumps its session's
    /// epoch and applies its changes (added or moved partitions, forgotten ones). Errors are
    /// FETCH_SESSION_ID_NOT_FOUND and INVALID_FETCH_SESSION_EPOCH, which clients answer with
    /// a full fetch.
    pub fn context(
        &self,
        request: &FetchRequest,
        version: i16,
        resolve: Resolve<'_>,
    ) -> Result<FetchContext, ResponseError> {
        let (id, epoch) = (request.session_id, request.session_epoch);
        if version < 7 || (id == 0 && epoch == FINAL_EPOCH) {
            return Ok(FetchContext::Sessionless);
        }
        if epoch == INITIAL_EPOCH || epoch == FINAL_EPOCH {
            // A full fetch that opens a session, or closes the one it names (as in Kafka, a
            // client starting over with a new session gives up its old one).
            if id != 0 {
                self.sessions.lock().remove(&id);
            }
            return Ok(if epoch == INITIAL_EPOCH { FetchContext::New } else { FetchContext::Sessionless });
        }
        let session = self.sessions.lock().get(&id).cloned().ok_or(ResponseError::FetchSessionIdNotFound)?;
        {
            let mut slot = session.lock();
            let state = &mut slot.0;
            if state.epoch != epoch {
                return Err(ResponseError::InvalidFetchSessionEpoch);
            }
            state.epoch = next_epoch(epoch);
            state.last_used = Instant::now();
            for topic in &request.topics {
                for wanted in &topic.partitions {
                    let key = Key::new(topic, wanted.partition, version);
                    let cached =
                        state.partitions.entry(key).or_insert_with(|| Cached::new(topic, wanted, resolve, None));
                    cached.request = wanted.clone();
                }
            }
            for forgotten in &request.forgotten_topics_data {
                for &partition in &forgotten.partitions {
                    state.partitions.remove(&Key::of(&forgotten.topic, forgotten.topic_id, partition, version));
                }
            }
        }
        Ok(FetchContext::Incremental { id, session })
    }

    /// Registers a session for a full fetch that asked for one, from the response it got;
    /// returns its id, or 0 if the cache has no room for it.
    fn create(&self, request: &FetchRequest, response: &FetchResponse, version: i16, resolve: Resolve<'_>) -> i32 {
        let mut partitions = BTreeMap::new();
        for (topic, answered) in request.topics.iter().zip(&response.responses) {
            for (wanted, data) in topic.partitions.iter().zip(&answered.partitions) {
                let cached = Cached::new(topic, wanted, resolve, Some(data));
                partitions.insert(Key::new(topic, wanted.partition, version), cached);
            }
        }
        let mut sessions = self.sessions.lock();
        if sessions.len() >= self.slots && !evict_for(&mut sessions, partitions.len()) {
            tracing::debug!(partitions = partitions.len(), "fetch session cache full; fetching without a session");
            return 0;
        }
        let id = loop {
            let id = (Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff) as i32;
            if id != 0 && !sessions.contains_key(&id) {
                break id;
            }
        };
        let session = Session { epoch: 1, partitions, last_used: Instant::now() };
        tracing::debug!(session = id, partitions = session.partitions.len(), "fetch session created");
        sessions.insert(id, Arc::new(Mutex::new(SessionSlot(session))));
        id
    }
}

/// Makes room for a session of `size` partitions: evicts one idle past [`EVICTION_AGE`], or
/// else the smallest session if it is smaller. False if neither exists.
fn evict_for(sessions: &mut HashMap<i32, Arc<Mutex<SessionSlot>>>, size: usize) -> bool {
    let now = Instant::now();
    let mut stale = None;
    let mut smallest: Option<(usize, i32)> = None;
    for (&id, session) in sessions.iter() {
        let slot = session.lock();
        if now.duration_since(slot.0.last_used) >= EVICTION_AGE {
            stale = Some(id);
            break;
        }
        let len = slot.0.partitions.len();
        if smallest.is_none_or(|(least, _)| len < least) {
            smallest = Some((len, id));
        }
    }
    let victim = stale.or(smallest.filter(|&(len, _)| len < size).map(|(_, id)| id));
    tracing::debug!(?victim, "fetch session cache full: evicting");
    victim.is_some_and(|id| sessions.remove(&id).is_some())
}

fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

impl FetchContext {
    /// The request to read: for an incremental fetch, the partitions of the session that
    /// are not quiet (at the positions it remembers); the request itself otherwise. Quiet
    /// partitions are left out unread, but a long poll (`wake`) still hears of appends to
    /// them.
    pub fn effective_request(&self, request: &FetchRequest, wake: Option<&Arc<Notify>>) -> Option<FetchRequest> {
        let FetchContext::Incremental { session, .. } = self else { return None };
        let read_committed = request.isolation_level == READ_COMMITTED;
        let slot = session.lock();
        let mut topics: Vec<FetchTopic> = Vec::new();
        for cached in slot.0.partitions.values() {
            if cached.quiet(read_committed) {
                if let (Some(wake), Some(partition)) = (wake, &cached.partition) {
                    partition.register_fetch_waiter(wake);
                }
                continue;
            }
            let same =
                topics.last().is_some_and(|t: &FetchTopic| t.topic == cached.topic && t.topic_id == cached.topic_id);
            if !same {
                topics.push(FetchTopic::default().with_topic(cached.topic.clone()).with_topic_id(cached.topic_id));
            }
            topics.last_mut().expect("pushed above").partitions.push(cached.request.clone());
        }
        let mut effective = request.clone();
        effective.topics = topics;
        effective.forgotten_topics_data = Vec::new();
        Some(effective)
    }

    /// The response as the session wants it: a new session's id; an incremental one's
    /// partitions cut to those with something to say. `read` is what was read (from
    /// [`FetchContext::effective_request`] for an incremental fetch).
    pub fn finish(
        self,
        cache: &FetchSessionCache,
        read: &FetchRequest,
        mut response: FetchResponse,
        version: i16,
        resolve: Resolve<'_>,
    ) -> FetchResponse {
        match self {
            FetchContext::Sessionless => response.with_session_id(0),
            FetchContext::New => {
                let id = cache.create(read, &response, version, resolve);
                response.with_session_id(id)
            }
            FetchContext::Incremental { id, session } => {
                // Only the partitions that were read (not quiet) are in the response.
                let mut slot = session.lock();
                for (topic, answered) in read.topics.iter().zip(response.responses.iter_mut()) {
                    answered.partitions.retain(|data| {
                        let key = Key::new(topic, data.partition_index, version);
                        slot.0.partitions.get_mut(&key).is_none_or(|cached| cached.must_send(data))
                    });
                }
                response.responses.retain(|t: &FetchableTopicResponse| !t.partitions.is_empty());
                response.with_session_id(id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::PartitionData;
    use kafka_protocol::protocol::StrBytes;

    /// A full fetch opening a session over `partitions` of topic t, and its (empty) response.
    fn opening(partitions: i32) -> (FetchRequest, FetchResponse) {
        let name = TopicName(StrBytes::from_static_str("t"));
        let wanted = (0..partitions).map(|p| FetchPartition::default().with_partition(p)).collect();
        let request = FetchRequest::default()
            .with_session_epoch(INITIAL_EPOCH)
            .with_topics(vec![FetchTopic::default().with_topic(name.clone()).with_partitions(wanted)]);
        let answered = (0..partitions).map(|p| PartitionData::default().with_partition_index(p)).collect();
        let response = FetchResponse::default()
            .with_responses(vec![FetchableTopicResponse::default().with_topic(name).with_partitions(answered)]);
        (request, response)
    }

    fn open(cache: &FetchSessionCache, partitions: i32) -> i32 {
        let (request, response) = opening(partitions);
        let context = cache.context(&request, 12, &|_, _| None).unwrap();
        assert!(matches!(context, FetchContext::New));
        context.finish(cache, &request, response, 12, &|_, _| None).session_id
    }

    #[test]
    fn a_full_cache_evicts_a_smaller_session_only() {
        let cache = FetchSessionCache::new(1);
        let first = open(&cache, 2);
        assert_ne!(first, 0);
        assert_eq!(open(&cache, 1), 0, "a smaller session does not evict a larger one");
        assert_eq!(cache.len(), 1);
        let second = open(&cache, 3);
        assert_ne!(second, 0, "a larger session takes the place of a smaller one");
        let incremental = FetchRequest::default().with_session_id(first).with_session_epoch(1);
        assert!(matches!(cache.context(&incremental, 12, &|_, _| None), Err(ResponseError::FetchSessionIdNotFound)));
        let incremental = FetchRequest::default().with_session_id(second).with_session_epoch(1);
        assert!(cache.context(&incremental, 12, &|_, _| None).is_ok());
        assert!(matches!(cache.context(&incremental, 12, &|_, _| None), Err(ResponseError::InvalidFetchSessionEpoch)));
        assert_eq!(FetchSessionCache::new(0).len(), 0);
        assert_eq!(open(&FetchSessionCache::new(0), 5), 0, "no slots, no sessions");
    }
}
