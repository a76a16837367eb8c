//! The Kafka record batch (magic 2) header: its layout, validation of a batch as a producer
//! sent it, and the in-place header rewrite that assigns offsets.
//!
//! Layout (big-endian): base offset i64 @0, length i32 @8, leader epoch i32 @12, magic i8 @16,
//! CRC-32C u32 @17 (over bytes 21..end), attributes, offsets, timestamps and producer fields,
//! record count i32 @57, records @61. Offset and epoch lie outside the CRC: stamping is free.

use crate::error::{Error, Result};
use crate::record::decode_records;

pub const HEADER_SIZE: usize = 61;
/// Bytes before the batch length field's coverage starts (base offset + length).
pub const LOG_OVERHEAD: usize = 12;
pub const MAGIC: i8 = 2;

pub(crate) const BASE_OFFSET_AT: usize = 0;
pub(crate) const LENGTH_AT: usize = 8;
pub(crate) const LEADER_EPOCH_AT: usize = 12;
pub(crate) const MAGIC_AT: usize = 16;
pub(crate) const CRC_AT: usize = 17;
pub(crate) const ATTRIBUTES_AT: usize = 21;
pub(crate) const LAST_OFFSET_DELTA_AT: usize = 23;
pub(crate) const BASE_TIMESTAMP_AT: usize = 27;
pub(crate) const MAX_TIMESTAMP_AT: usize = 35;
pub(crate) const PRODUCER_ID_AT: usize = 43;
pub(crate) const PRODUCER_EPOCH_AT: usize = 51;
pub(crate) const BASE_SEQUENCE_AT: usize = 53;
pub(crate) const RECORD_COUNT_AT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
pub(crate) const TIMESTAMP_TYPE_BIT: i16 = 0x08;
pub(crate) const TRANSACTIONAL_BIT: i16 = 0x10;
pub(crate) const CONTROL_BIT: i16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_attributes(attributes: i16) -> Result<Compression> {
        match attributes & COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(Error::CorruptBatch(format!("unknown compression codec id {other}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

/// Which clock a batch's timestamps come from (`message.timestamp.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

pub(crate) fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

pub(crate) fn read_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    read_i32(buf, at) as u32
}

pub(crate) fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

/// What validation learned about a batch: enough for the log to index it and for the broker
/// to apply producer-state rules, without looking at the bytes again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    /// Total size in bytes, including the 12-byte offset and length prefix.
    pub size: usize,
    pub record_count: i32,
    pub last_offset_delta: i32,
    pub base_timestamp_ms: i64,
    /// The largest record timestamp in the batch (as validated, not as claimed).
    pub max_timestamp_ms: i64,
    /// Offset delta of the first record that carries `max_timestamp_ms`.
    pub offset_delta_of_max_timestamp: i32,
    pub compression: Compression,
    pub timestamp_type: TimestampType,
    pub is_transactional: bool,
    pub is_control: bool,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
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
pub(crate) fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_AT..])
}

/// Checks framing and the stored CRC-32C of the batch at the start of `buf`; returns its size.
pub fn check_crc(buf: &[u8]) -> Result<usize> {
    let size = check_framing(buf)?;
    let stored = read_u32(buf, CRC_AT);
    let computed = compute_crc(&buf[..size]);
    if stored != computed {
        return Err(Error::CorruptBatch(format!("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")));
    }
    Ok(size)
}

/// Fully validates one batch as a producer sent it: `buf` must be exactly one batch. Checks
/// framing, magic, CRC-32C, the record count, and every record's framing and offset delta
/// (decompressing into a buffer bounded by `max_decompressed_bytes` when compressed).
/// Touches each record once, allocating nothing for uncompressed batches.
pub fn validate(buf: &[u8], max_decompressed_bytes: usize) -> Result<BatchInfo> {
    let size = check_crc(buf)?;
    if size != buf.len() {
        return Err(Error::CorruptBatch(format!("batch length field says {size} bytes but {} were sent", buf.len())));
    }
    let attributes = read_i16(buf, ATTRIBUTES_AT);
    let compression = Compression::from_attributes(attributes)?;
    let record_count = read_i32(buf, RECORD_COUNT_AT);
    let last_offset_delta = read_i32(buf, LAST_OFFSET_DELTA_AT);
    if record_count <= 0 {
        return Err(Error::InvalidRecord(format!("batch declares {record_count} records; at least one is required")));
    }
    if last_offset_delta != record_count - 1 {
        return Err(Error::InvalidRecord(format!(
            "last offset delta {last_offset_delta} does not match {record_count} records"
        )));
    }
    let base_timestamp_ms = read_i64(buf, BASE_TIMESTAMP_AT);
    let timestamp_type =
        if attributes & TIMESTAMP_TYPE_BIT != 0 { TimestampType::LogAppendTime } else { TimestampType::CreateTime };

    // Walk the records: each must be well formed, carry the next offset delta, and together
    // they must fill the record area exactly.
    let mut max_timestamp_ms = i64::MIN;
    let mut offset_delta_of_max_timestamp = 0;
    let mut seen = 0i32;
    decode_records(buf, max_decompressed_bytes, |record| {
        if record.offset_delta != seen {
            return Err(Error::InvalidRecord(format!(
                "record {seen} has offset delta {}, expected {seen}",
                record.offset_delta
            )));
        }
        let timestamp = base_timestamp_ms.wrapping_add(record.timestamp_delta);
        if timestamp > max_timestamp_ms {
            max_timestamp_ms = timestamp;
            offset_delta_of_max_timestamp = seen;
        }
        seen += 1;
        Ok(())
    })?;
    if seen != record_count {
        return Err(Error::InvalidRecord(format!("batch declares {record_count} records but holds {seen}")));
    }

    Ok(BatchInfo {
        size,
        record_count,
        last_offset_delta,
        base_timestamp_ms,
        max_timestamp_ms,
        offset_delta_of_max_timestamp,
        compression,
        timestamp_type,
        is_transactional: attributes & TRANSACTIONAL_BIT != 0,
        is_control: attributes & CONTROL_BIT != 0,
        producer_id: read_i64(buf, PRODUCER_ID_AT),
        producer_epoch: read_i16(buf, PRODUCER_EPOCH_AT),
        base_sequence: read_i32(buf, BASE_SEQUENCE_AT),
    })
}

/// The header a batch is stored with (for a batch `validate` accepted, so at least a header long): the producer's header with the base offset and leader
/// epoch stamped, and, when the stored max timestamp must differ from what the producer wrote
/// (log append time, or a wrong claim), the attributes, max timestamp and CRC rewritten.
/// The record bytes after the header are never touched, so they can be written from the
/// producer's buffer as they are.
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
    use crate::batch_builder::RecordBatchBuilder;
    use crate::record::RecordBatch;
    use proptest::prelude::*;

    fn sample(count: usize) -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new(1_000);
        for i in 0..count {
            builder.push(1_000 + i as i64 * 10, Some(format!("k{i}").as_bytes()), Some(b"value"), &[]);
        }
        builder.build().unwrap()
    }

    fn with_crc(mut batch: Vec<u8>) -> Vec<u8> {
        let crc = compute_crc(&batch);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    #[test]
    fn validate_reports_what_the_batch_holds() {
        let info = validate(&sample(3), 1 << 20).unwrap();
        assert_eq!(info.record_count, 3);
        assert_eq!(info.last_offset_delta, 2);
        assert_eq!(info.max_timestamp_ms, 1_020);
        assert_eq!(info.offset_delta_of_max_timestamp, 2);
        assert_eq!(info.compression, Compression::None);
        assert_eq!(info.producer_id, -1);
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut batch = sample(1);
        batch[MAGIC_AT] = 1;
        assert!(matches!(validate(&batch, 1 << 20), Err(Error::UnsupportedMagic(1))));
    }

    #[test]
    fn flipped_record_byte_fails_the_crc() {
        let mut batch = sample(2);
        let last = batch.len() - 1;
        batch[last] ^= 0x40;
        let err = validate(&batch, 1 << 20).unwrap_err();
        assert!(matches!(err, Error::CorruptBatch(ref m) if m.contains("CRC")), "{err}");
    }

    #[test]
    fn length_field_must_match_the_bytes_sent() {
        let mut longer = sample(1);
        longer.push(0);
        assert!(matches!(validate(&longer, 1 << 20), Err(Error::CorruptBatch(_))));
        let batch = sample(1);
        assert!(matches!(validate(&batch[..batch.len() - 1], 1 << 20), Err(Error::CorruptBatch(_))));
        let mut absurd = sample(1);
        absurd[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(validate(&absurd, 1 << 20), Err(Error::CorruptBatch(_))));
        let mut negative = sample(1);
        negative[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(validate(&negative, 1 << 20), Err(Error::CorruptBatch(_))));
        assert!(matches!(validate(&batch[..20], 1 << 20), Err(Error::CorruptBatch(_))));
    }

    #[test]
    fn zero_records_are_refused() {
        let mut batch = sample(1);
        batch.truncate(HEADER_SIZE);
        batch[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&0i32.to_be_bytes());
        batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        batch[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&((HEADER_SIZE - LOG_OVERHEAD) as i32).to_be_bytes());
        let batch = with_crc(batch);
        assert!(matches!(validate(&batch, 1 << 20), Err(Error::InvalidRecord(_))));
    }

    #[test]
    fn record_count_and_offset_deltas_are_checked() {
        let mut batch = sample(3);
        batch[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&4i32.to_be_bytes());
        batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&3i32.to_be_bytes());
        let err = validate(&with_crc(batch), 1 << 20).unwrap_err();
        assert!(matches!(err, Error::InvalidRecord(_)), "{err}");

        let mut batch = sample(3);
        batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&7i32.to_be_bytes());
        assert!(matches!(validate(&with_crc(batch), 1 << 20), Err(Error::InvalidRecord(_))));

        // Second record's offset delta (the byte after its length, attributes and timestamp
        // delta varints) rewritten from 1 to 5.
        let batch = sample(2);
        let records = &batch[HEADER_SIZE..];
        let first_len = (records[0] >> 1) as usize + 1;
        let mut patched = batch.clone();
        let at = HEADER_SIZE + first_len + 3; // length, attributes, timestamp delta (1 byte each)
        assert_eq!(patched[at], 2, "zigzag encoding of offset delta 1");
        patched[at] = 10;
        assert!(matches!(validate(&with_crc(patched), 1 << 20), Err(Error::InvalidRecord(_))));
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever bytes arrive, validation returns, and never panics or over-allocates.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = validate(&bytes, 1 << 16);
        }

        /// A valid batch with any byte flipped (CRC fixed up, so the record walk runs) is
        /// either still valid or refused with a typed error.
        #[test]
        fn corrupted_records_are_refused_not_panicked(count in 1usize..6, at in 0usize..200, bit in 0u8..8) {
            let mut batch = sample(count);
            let at = HEADER_SIZE + at % (batch.len() - HEADER_SIZE);
            batch[at] ^= 1 << bit;
            let _ = validate(&with_crc(batch), 1 << 16);
        }
    }
}
