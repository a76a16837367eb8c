//! The records of `__transaction_state`, as Kafka writes them: keyed (version 0) by
//! transactional id, with a `TransactionLogValue` v0 holding the producer id and epoch,
//! the timeout, the state, the partitions in the transaction and its timestamps. A null
//! value is a tombstone. Decoding checks every length against what is left.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut};

use super::state::TxnState;
use crate::topic_partition::TopicPartition;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnValue {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    pub last_update_ms: i64,
    pub start_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed __transaction_state record: {0}")]
pub struct DecodeError(pub String);

pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transactional_id.len());
    out.put_i16(0);
    put_string(&mut out, transactional_id);
    out
}

pub fn decode_key(mut buf: &[u8]) -> Result<Option<String>, DecodeError> {
    let version = get_i16(&mut buf)?;
    if version != 0 {
        return Ok(None);
    }
    get_string(&mut buf).map(Some)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    out.put_i16(len as i16);
    out.put_slice(&s.as_bytes()[..len]);
}

impl TxnValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_i16(0);
        out.put_i64(self.producer_id);
        out.put_i16(self.producer_epoch);
        out.put_i32(self.timeout_ms);
        out.put_i8(self.state.code());
        // Partitions grouped by topic, as Kafka's schema has them.
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for TopicPartition { topic, partition } in &self.partitions {
            match topics.last_mut() {
                Some((t, parts)) if *t == topic.as_str() => parts.push(*partition),
                _ => topics.push((topic, vec![*partition])),
            }
        }
        out.put_i32(topics.len() as i32);
        for (topic, partitions) in topics {
            put_string(&mut out, topic);
            out.put_i32(partitions.len() as i32);
            for partition in partitions {
                out.put_i32(partition);
            }
        }
        out.put_i64(self.last_update_ms);
        out.put_i64(self.start_ms);
        out
    }

    pub fn decode(mut buf: &[u8]) -> Result<TxnValue, DecodeError> {
        let version = get_i16(&mut buf)?;
        if version != 0 && version != 1 {
            return Err(DecodeError(format!("unknown transaction value version {version}")));
        }
        let producer_id = get_i64(&mut buf)?;
        let producer_epoch = get_i16(&mut buf)?;
        let timeout_ms = get_i32(&mut buf)?;
        let code = get_i8(&mut buf)?;
        let state =
            TxnState::from_code(code).ok_or_else(|| DecodeError(format!("unknown transaction state {code}")))?;
        let topics = get_i32(&mut buf)?;
        let mut partitions = BTreeSet::new();
        if topics > 0 {
            if topics as usize > buf.len() / 6 {
                return Err(DecodeError(format!("topic count {topics} does not fit the record")));
            }
            for _ in 0..topics {
                let topic = get_string(&mut buf)?;
                let count = get_i32(&mut buf)?;
                if count < 0 || count as usize > buf.len() / 4 {
                    return Err(DecodeError(format!("partition count {count} does not fit the record")));
                }
                for _ in 0..count {
                    partitions.insert(TopicPartition::new(topic.clone(), get_i32(&mut buf)?));
                }
            }
        }
        Ok(TxnValue {
            producer_id,
            producer_epoch,
            timeout_ms,
            state,
            partitions,
            last_update_ms: get_i64(&mut buf)?,
            start_ms: get_i64(&mut buf)?,
        })
    }
}

fn need(buf: &[u8], n: usize) -> Result<(), DecodeError> {
    if buf.len() < n {
        return Err(DecodeError(format!("needs {n} bytes, {} left", buf.len())));
    }
    Ok(())
}

fn get_i8(buf: &mut &[u8]) -> Result<i8, DecodeError> {
    need(buf, 1)?;
    Ok(buf.get_i8())
}

fn get_i16(buf: &mut &[u8]) -> Result<i16, DecodeError> {
    need(buf, 2)?;
    Ok(buf.get_i16())
}

fn get_i32(buf: &mut &[u8]) -> Result<i32, DecodeError> {
    need(buf, 4)?;
    Ok(buf.get_i32())
}

fn get_i64(buf: &mut &[u8]) -> Result<i64, DecodeError> {
    need(buf, 8)?;
    Ok(buf.get_i64())
}

fn get_string(buf: &mut &[u8]) -> Result<String, DecodeError> {
    let len = get_i16(buf)?;
    if len < 0 {
        return Err(DecodeError("a null where a string must be".into()));
    }
    need(buf, len as usize)?;
    let (s, rest) = buf.split_at(len as usize);
    *buf = rest;
    String::from_utf8(s.to_vec()).map_err(|_| DecodeError("a string is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_an_error() {
        let value = TxnValue {
            producer_id: 42,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: [TopicPartition::new("a", 0), TopicPartition::new("a", 2), TopicPartition::new("b", 1)]
                .into_iter()
                .collect(),
            last_update_ms: 5,
            start_ms: 4,
        };
        assert_eq!(TxnValue::decode(&value.encode()).unwrap(), value);
        assert_eq!(decode_key(&encode_key("tx-1")).unwrap(), Some("tx-1".to_string()));
        for cut in 0..value.encode().len() {
            assert!(TxnValue::decode(&value.encode()[..cut]).is_err());
        }
    }
}
