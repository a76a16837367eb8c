//! The topics the broker writes itself: `__consumer_offsets` (the group coordinator's) and
//! `__transaction_state` (the transaction coordinator's). Clients may read them but not
//! write, delete or repartition them, because a key's partition (a group id's, a
//! transactional id's) is a hash modulo their partition count, which must never change.

use std::collections::BTreeMap;

use crate::topic_config::INTERNAL_SEGMENT_BYTES;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC || name == TRANSACTION_STATE_TOPIC
}

/// Kafka's partition for a coordinator key (a group id or a transactional id):
/// `abs(key.hashCode()) % partitions` with Java's `String.hashCode` over UTF-16 code units,
/// so a key lands where Kafka would put it.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let hash = key.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)));
    // Kafka's Utils.abs: masks the sign bit (so i32::MIN maps to 0, not to itself).
    (hash & 0x7fff_ffff) % partitions.max(1)
}

/// The topic configs of an internal topic: compacted (the latest record of each key is the
/// coordinator's state), with small indexes because its records are small. A segment size
/// below `segment.bytes`' 1 MiB minimum (tests want several segments) goes in as Kafka's
/// `internal.segment.bytes`.
pub(crate) fn configs(segment_bytes: u32) -> BTreeMap<String, String> {
    let segment_key = if segment_bytes < 1 << 20 { INTERNAL_SEGMENT_BYTES } else { "segment.bytes" };
    [
        ("cleanup.policy", "compact".to_string()),
        (segment_key, segment_bytes.to_string()),
        ("segment.index.bytes", "1048576".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_for_matches_java_string_hash_code() {
        // Java: "test-group".hashCode() == -1140442376... computed here by the same rule;
        // the fixed points below are Java's values.
        assert_eq!(partition_for("", 50), 0);
        // "a".hashCode() = 97
        assert_eq!(partition_for("a", 50), 97 % 50);
        // "hello".hashCode() = 99162322
        assert_eq!(partition_for("hello", 50), 99162322 % 50);
        // "polygenelubricants".hashCode() = Integer.MIN_VALUE: abs() masks it to 0.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        // Non-ASCII hashes UTF-16 units: "é" is 0xE9.
        assert_eq!(partition_for("é", 1000), 0xE9);
    }
}
