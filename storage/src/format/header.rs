//! The record batch (magic 2) header: field positions and readers, framing and CRC-32C checks,
//! producer peeks, and the stamp of base offset and leader epoch. The field readers assume a
//! whole header: every entry point that takes untrusted bytes checks the length first.
//! Layout (big-endian): base offset i64 @0, length i32 @8, leader epoch i32 @12, magic i8 @16,
//! CRC-32C u32 @17 (over bytes 21..end), attributes, offsets, timestamps and producer fields,
//! record count i32 @57, records @61. Offset and epoch lie outside the CRC: stamping is free.

use crate::error::{Error, Result};

pub const HEADER_SIZE: usize = 61;
/// Bytes before the batch length field's coverage starts (base offset + length).
pub(super) const LOG_OVERHEAD: usize = 12;
pub(super) const MAGIC: i8 = 2;

pub(super) const BASE_OFFSET_AT: usize = 0;
pub(super) const LENGTH_AT: usize = 8;
pub(super) const LEADER_EPOCH_AT: usize = 12;
pub(super) const MAGIC_AT: usize = 16;
pub(super) const CRC_AT: usize = 17;
pub(super) const ATTRIBUTES_AT: usize = 21;
pub(super) const LAST_OFFSET_DELTA_AT: usize = 23;
pub(super) const BASE_TIMESTAMP_AT: usize = 27;
pub(super) const MAX_TIMESTAMP_AT: usize = 35;
pub(super) const PRODUCER_ID_AT: usize = 43;
pub(super) const PRODUCER_EPOCH_AT: usize = 51;
pub(super) const BASE_SEQUENCE_AT: usize = 53;
pub(super) const RECORD_COUNT_AT: usize = 57;

pub(super) const TIMESTAMP_TYPE_BIT: i16 = 0x08;
pub(super) const TRANSACTIONAL_BIT: i16 = 0x10;
pub(super) const CONTROL_BIT: i16 = 0x20;

/// Which clock a batch's timestamps come from (`message.timestamp.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

impl TimestampType {
    pub(super) fn from_attributes(attributes: i16) -> TimestampType {
        if attributes & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }
}

pub(super) fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

pub(super) fn read_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub(super) fn read_u32(buf: &[u8], at: usize) -> u32 {
    read_i32(buf, at) as u32
}

pub(super) fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

/// Checks the framing of the batch at the start of `buf` (length, magic) without touching its
/// records: what recovery and reads need to walk a segment. Returns the batch's total size.
pub fn check_framing(buf: &[u8]) -> Result<usize> {
    if buf.len() < HEADER_SIZE {
        return Err(Error::CorruptBatch(format!(
            "{} bytes is shorter than the {HEADER_SIZE}-byte batch header",
            buf.len()
        )));
    }
    let length = read_i32(buf, LENGTH_AT);
    let min_length = (HEADER_SIZE - LOG_OVERHEAD) as i32;
    if length < min_length {
        return Err(Error::CorruptBatch(format!("batch length field {length} is below the minimum of {min_length}")));
    }
    let size = length as usize + LOG_OVERHEAD;
    if size > buf.len() {
        return Err(Error::CorruptBatch(format!(
            "batch length field says {size} bytes but only {} are present",
            buf.len()
        )));
    }
    let magic = buf[MAGIC_AT] as i8;
    if magic != MAGIC {
        return Err(Error::UnsupportedMagic(magic));
    }
    Ok(size)
}

/// CRC-32C of bytes 21..end of a batch, as stored at byte 17.
pub(super) fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_AT..])
}

/// Checks framing and the stored CRC-32C of the batch at the start of `buf`; returns its size.
pub(crate) fn check_crc(buf: &[u8]) -> Result<usize> {
    let size = check_framing(buf)?;
    let stored = read_u32(buf, CRC_AT);
    let computed = compute_crc(&buf[..size]);
    if stored != computed {
        return Err(Error::CorruptBatch(format!("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")));
    }
    Ok(size)
}

/// The header a batch is stored with (for a batch validation accepted, so at least a header
/// long): the producer's header with the base offset and leader epoch stamped, and, when the
/// stored max timestamp must differ from what the producer wrote (log append time, or a wrong
/// claim), the attributes, max timestamp and CRC rewritten. The record bytes after the header
/// are never touched, so they can be written from the producer's buffer as they are.
pub(crate) fn stamp_header(
    batch: &[u8],
    base_offset: i64,
    leader_epoch: i32,
    stored_max_timestamp_ms: i64,
    timestamp_type: TimestampType,
) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    header.copy_from_slice(&batch[..HEADER_SIZE]);
    header[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    header[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&leader_epoch.to_be_bytes());

    let mut attributes = read_i16(&header, ATTRIBUTES_AT);
    match timestamp_type {
        TimestampType::CreateTime => attributes &= !TIMESTAMP_TYPE_BIT,
        TimestampType::LogAppendTime => attributes |= TIMESTAMP_TYPE_BIT,
    }
    let old_attributes = read_i16(&header, ATTRIBUTES_AT);
    let old_max = read_i64(&header, MAX_TIMESTAMP_AT);
    if attributes != old_attributes || stored_max_timestamp_ms != old_max {
        header[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        header[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&stored_max_timestamp_ms.to_be_bytes());
        // The CRC covers header bytes 21..61 and the records; recompute it from the new header
        // part and the records' CRC, combined, rather than over a rewritten copy.
        let records = &batch[HEADER_SIZE..];
        let records_crc = crc32c::crc32c(records);
        let header_crc = crc32c::crc32c(&header[ATTRIBUTES_AT..]);
        let crc = crc32c::crc32c_combine(header_crc, records_crc, records.len());
        header[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
    header
}

/// The producer id and transactional flag of the batch at the start of `buf`, if it is at
/// least a header long.
pub fn peek_producer(buf: &[u8]) -> Option<(i64, bool)> {
    (buf.len() >= HEADER_SIZE)
        .then(|| (read_i64(buf, PRODUCER_ID_AT), read_i16(buf, ATTRIBUTES_AT) & TRANSACTIONAL_BIT != 0))
}

/// The producer epoch of the batch at the start of `buf`, read without validation.
pub fn peek_producer_epoch(buf: &[u8]) -> Option<i16> {
    (buf.len() >= HEADER_SIZE).then(|| read_i16(buf, PRODUCER_EPOCH_AT))
}

/// The fields of a stored batch header that reads and recovery need, read without a CRC check.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoredHeader {
    pub base_offset: i64,
    pub size: usize,
    pub last_offset_delta: i32,
    pub max_timestamp_ms: i64,
}

impl StoredHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
}

/// The partition leader epoch stamped in a batch header (what a leader wrote it under).
pub(crate) fn read_leader_epoch(buf: &[u8]) -> i32 {
    read_i32(buf, LEADER_EPOCH_AT)
}

/// Reads the header of the stored batch at the start of `buf`, checking only its framing.
pub(crate) fn read_stored_header(buf: &[u8]) -> Result<StoredHeader> {
    let size = check_framing(buf)?;
    let last_offset_delta = read_i32(buf, LAST_OFFSET_DELTA_AT);
    if last_offset_delta < 0 {
        return Err(Error::CorruptBatch(format!("negative last offset delta {last_offset_delta}")));
    }
    // The base offset lies outside the CRC: bound it so offset arithmetic cannot overflow.
    let base_offset = read_i64(buf, BASE_OFFSET_AT);
    if !(0..=i64::MAX / 2).contains(&base_offset) {
        return Err(Error::CorruptBatch(format!("base offset {base_offset} is out of range")));
    }
    Ok(StoredHeader { base_offset, size, last_offset_delta, max_timestamp_ms: read_i64(buf, MAX_TIMESTAMP_AT) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::builder::RecordBatchBuilder;
    use crate::format::records::RecordBatch;
    use crate::format::validate::validate;

    fn sample(count: usize) -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new(1_000);
        for i in 0..count {
            builder.push(1_000 + i as i64 * 10, Some(format!("k{i}").as_bytes()), Some(b"value"), &[]);
        }
        builder.build().unwrap()
    }

    #[test]
    fn stamping_changes_only_offset_and_epoch_for_create_time() {
        let batch = sample(2);
        let info = validate(&batch, 1 << 20).unwrap();
        let header = stamp_header(&batch, 42, 7, info.max_timestamp_ms, TimestampType::CreateTime);
        let mut stored = header.to_vec();
        stored.extend_from_slice(&batch[HEADER_SIZE..]);
        assert_eq!(&stored[16..], &batch[16..]);
        let stored = RecordBatch::new(stored.into()).unwrap();
        assert_eq!(stored.base_offset(), 42);
        assert_eq!(stored.partition_leader_epoch(), 7);
        stored.verify_crc().unwrap();
    }

    #[test]
    fn stamping_log_append_time_rewrites_the_crc() {
        let batch = sample(3);
        let header = stamp_header(&batch, 0, 0, 99_999, TimestampType::LogAppendTime);
        let mut stored = header.to_vec();
        stored.extend_from_slice(&batch[HEADER_SIZE..]);
        let stored = RecordBatch::new(stored.into()).unwrap();
        stored.verify_crc().unwrap();
        assert_eq!(stored.timestamp_type(), TimestampType::LogAppendTime);
        assert!(stored.records().unwrap().all(|r| r.unwrap().timestamp_ms == 99_999));
    }
}
