//! The in-memory maps keyed state lives in. They hash with foldhash, seeded per process:
//! several times faster than the standard library's SipHash on short keys (page names, user
//! ids, window times), which matters at millions of events per second, while a per-process
//! seed keeps crafted keys from colliding on purpose.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub type StateHasher = foldhash::fast::RandomState;
pub type StateMap<K, V> = HashMap<K, V, StateHasher>;
pub type StateSet<T> = HashSet<T, StateHasher>;

/// What a key of keyed state must be: hashable and ordered for the state, serde for the
/// changelog.
pub trait Key: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Key for K {}
