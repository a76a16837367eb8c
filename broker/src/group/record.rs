//! The records of `__consumer_offsets`, byte for byte as Kafka writes them, so that Kafka's own
//! tools can read the topic: an offset commit is keyed (version 1) by group, topic and
//! partition with an `OffsetCommitValue` v3; a classic group's membership is keyed
//! (version 2) by group with a `GroupMetadataValue` v3. A null value is a tombstone.
//! Decoding trusts nothing: every length is checked against what is left.

use bytes::{Buf, BufMut, Bytes};

/// Key versions: 0 and 1 are offset commits, 2 is group metadata.
const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
const GROUP_METADATA_KEY_VERSION: i16 = 2;
const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
const GROUP_METADATA_VALUE_VERSION: i16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Offset { group: String, topic: String, partition: i32 },
    Group { group: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Only in value versions 1 (OffsetCommit v2-v4 carried a retention time).
    pub expire_timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation_id: i32,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed __consumer_offsets record: {0}")]
pub struct DecodeError(pub String);

type Decoded<T> = Result<T, DecodeError>;

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Group ids, topics and metadata are bounded well below i16::MAX by the request checks.
    out.put_i16(s.len().min(i16::MAX as usize) as i16);
    out.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_nullable_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_i32(b.len() as i32);
    out.put_slice(b);
}

impl RecordKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            RecordKey::Offset { group, topic, partition } => {
                out.put_i16(OFFSET_COMMIT_KEY_VERSION);
                put_string(&mut out, group);
                put_string(&mut out, topic);
                out.put_i32(*partition);
            }
            RecordKey::Group { group } => {
                out.put_i16(GROUP_METADATA_KEY_VERSION);
                put_string(&mut out, group);
            }
        }
        out
    }

    /// `None` for key versions this broker does not write (the KIP-848 and share-group
    /// records of newer Kafka versions): they are skipped, not errors.
    pub fn decode(mut buf: &[u8]) -> Decoded<Option<RecordKey>> {
        let version = get_i16(&mut buf)?;
        let key = match version {
            0 | 1 => RecordKey::Offset {
                group: get_string(&mut buf)?,
                topic: get_string(&mut buf)?,
                partition: get_i32(&mut buf)?,
            },
            2 => RecordKey::Group { group: get_string(&mut buf)? },
            _ => return Ok(None),
        };
        Ok(Some(key))
    }

    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. } | RecordKey::Group { group } => group,
        }
    }
}

impl OffsetValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.metadata.len());
        match self.expire_timestamp_ms {
            // Version 1 is the only one with an explicit expiry.
            Some(expire) => {
                out.put_i16(1);
                out.put_i64(self.offset);
                put_string(&mut out, &self.metadata);
                out.put_i64(self.commit_timestamp_ms);
                out.put_i64(expire);
            }
            None => {
                out.put_i16(OFFSET_COMMIT_VALUE_VERSION);
                out.put_i64(self.offset);
                out.put_i32(self.leader_epoch);
                put_string(&mut out, &self.metadata);
                out.put_i64(self.commit_timestamp_ms);
            }
        }
        out
    }

    pub fn decode(mut buf: &[u8]) -> Decoded<OffsetValue> {
        let version = get_i16(&mut buf)?;
        let offset = get_i64(&mut buf)?;
        let mut value = OffsetValue {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: -1,
            expire_timestamp_ms: None,
        };
        match version {
            0 => {
                value.metadata = get_string(&mut buf)?;
                value.commit_timestamp_ms = get_i64(&mut buf)?;
            }
            1 => {
                value.metadata = get_string(&mut buf)?;
                value.commit_timestamp_ms = get_i64(&mut buf)?;
                value.expire_timestamp_ms = Some(get_i64(&mut buf)?).filter(|&e| e >= 0);
            }
            2 => {
                value.metadata = get_string(&mut buf)?;
                value.commit_timestamp_ms = get_i64(&mut buf)?;
            }
            // Version 4 is version 3 plus tagged fields, which we do not need.
            3 | 4 => {
                value.leader_epoch = get_i32(&mut buf)?;
                value.metadata = get_string(&mut buf)?;
                value.commit_timestamp_ms = get_i64(&mut buf)?;
            }
            other => return Err(DecodeError(format!("unknown offset commit value version {other}"))),
        }
        Ok(value)
    }
}

impl GroupValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_i16(GROUP_METADATA_VALUE_VERSION);
        put_string(&mut out, &self.protocol_type);
        out.put_i32(self.generation_id);
        put_nullable_string(&mut out, self.protocol_name.as_deref());
        put_nullable_string(&mut out, self.leader.as_deref());
        out.put_i64(self.current_state_timestamp_ms);
        out.put_i32(self.members.len() as i32);
        for member in &self.members {
            put_string(&mut out, &member.member_id);
            put_nullable_string(&mut out, member.group_instance_id.as_deref());
            put_string(&mut out, &member.client_id);
            put_string(&mut out, &member.client_host);
            out.put_i32(member.rebalance_timeout_ms);
            out.put_i32(member.session_timeout_ms);
            put_bytes(&mut out, &member.subscription);
            put_bytes(&mut out, &member.assignment);
        }
        out
    }

    pub fn decode(mut buf: &[u8]) -> Decoded<GroupValue> {
        let version = get_i16(&mut buf)?;
        if !(0..=3).contains(&version) {
            return Err(DecodeError(format!("unknown group metadata value version {version}")));
        }
        let mut value = GroupValue {
            protocol_type: get_string(&mut buf)?,
            generation_id: get_i32(&mut buf)?,
            protocol_name: get_nullable_string(&mut buf)?,
            leader: get_nullable_string(&mut buf)?,
            current_state_timestamp_ms: if version >= 2 { get_i64(&mut buf)? } else { -1 },
            members: Vec::new(),
        };
        let count = get_i32(&mut buf)?;
        // Each member takes at least 20 bytes: the count cannot promise more than is there.
        if count < 0 || count as usize > buf.len() / 20 {
            return Err(DecodeError(format!("member count {count} does not fit the record")));
        }
        for _ in 0..count {
            value.members.push(MemberValue {
                member_id: get_string(&mut buf)?,
                group_instance_id: if version >= 3 { get_nullable_string(&mut buf)? } else { None },
                client_id: get_string(&mut buf)?,
                client_host: get_string(&mut buf)?,
                rebalance_timeout_ms: if version >= 1 { get_i32(&mut buf)? } else { -1 },
                session_timeout_ms: get_i32(&mut buf)?,
                subscription: get_bytes(&mut buf)?,
                assignment: get_bytes(&mut buf)?,
            });
        }
        Ok(value)
    }
}

fn need(buf: &[u8], n: usize, what: &str) -> Decoded<()> {
    if buf.len() < n {
        return Err(DecodeError(format!("{what} needs {n} bytes, {} left", buf.len())));
    }
    Ok(())
}

fn get_i16(buf: &mut &[u8]) -> Decoded<i16> {
    need(buf, 2, "an int16")?;
    Ok(buf.get_i16())
}

fn get_i32(buf: &mut &[u8]) -> Decoded<i32> {
    need(buf, 4, "an int32")?;
    Ok(buf.get_i32())
}

fn get_i64(buf: &mut &[u8]) -> Decoded<i64> {
    need(buf, 8, "an int64")?;
    Ok(buf.get_i64())
}

fn get_nullable_string(buf: &mut &[u8]) -> Decoded<Option<String>> {
    let len = get_i16(buf)?;
    if len < 0 {
        return Ok(None);
    }
    need(buf, len as usize, "a string")?;
    let (s, rest) = buf.split_at(len as usize);
    *buf = rest;
    String::from_utf8(s.to_vec()).map(Some).map_err(|_| DecodeError("a string is not UTF-8".into()))
}

fn get_string(buf: &mut &[u8]) -> Decoded<String> {
    get_nullable_string(buf)?.ok_or_else(|| DecodeError("a null where a string must be".into()))
}

fn get_bytes(buf: &mut &[u8]) -> Decoded<Bytes> {
    let len = get_i32(buf)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    need(buf, len as usize, "a byte array")?;
    let (b, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(Bytes::copy_from_slice(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tombstone_keys_and_unknown_versions() {
        let key = RecordKey::Group { group: "g".into() };
        assert_eq!(RecordKey::decode(&key.encode()).unwrap(), Some(key));
        assert_eq!(RecordKey::decode(&[0, 7, 0, 1, b'g']).unwrap(), None);
        assert!(RecordKey::decode(&[0, 1, 0, 9, b'g']).is_err());
        assert!(GroupValue::decode(&[0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn values_round_trip(
            offset in any::<i64>(), epoch in any::<i32>(), metadata in "[a-z]{0,40}", ts in any::<i64>(),
            expire in proptest::option::of(0i64..i64::MAX),
            members in proptest::collection::vec(("[a-z0-9-]{1,20}", proptest::option::of("[a-z]{1,5}"),
                proptest::collection::vec(any::<u8>(), 0..50)), 0..5),
        ) {
            let value = OffsetValue {
                offset,
                leader_epoch: if expire.is_some() { -1 } else { epoch },
                metadata: metadata.clone(),
                commit_timestamp_ms: ts,
                expire_timestamp_ms: expire,
            };
            prop_assert_eq!(OffsetValue::decode(&value.encode()).unwrap(), value);
            let group = GroupValue {
                protocol_type: "consumer".into(),
                generation_id: epoch,
                protocol_name: Some(metadata),
                leader: members.first().map(|m| m.0.clone()),
                current_state_timestamp_ms: ts,
                members: members.into_iter().map(|(id, instance, bytes)| MemberValue {
                    member_id: id,
                    group_instance_id: instance,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::from(bytes.clone()),
                    assignment: Bytes::from(bytes),
                }).collect(),
            };
            prop_assert_eq!(GroupValue::decode(&group.encode()).unwrap(), group);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RecordKey::decode(&bytes);
            let _ = OffsetValue::decode(&bytes);
            let _ = GroupValue::decode(&bytes);
        }
    }
}
