//! Full validation of a batch as a producer sent it, before anything is written: framing,
//! magic, CRC-32C, the record count, and every record's framing and offset delta (through a
//! decompressed copy, bounded in size, when the batch is compressed). What it learns is a
//! `BatchInfo`, so the log can index the batch and apply producer rules without reading the
//! bytes again. Uncompressed batches are checked in place, allocating nothing.

use super::compression::Compression;
use super::header::{self, TimestampType};
use super::records::decode_records;
use crate::error::{Error, Result};

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
    /// The smallest record timestamp, and the offset delta of the first record carrying it
    /// (for `message.timestamp.before.max.ms`).
    pub min_timestamp_ms: i64,
    pub offset_delta_of_min_timestamp: i32,
    /// Offset delta of the first record without a key (refused on compacted topics).
    pub first_keyless_record: Option<i32>,
    pub compression: Compression,
    pub timestamp_type: TimestampType,
    pub is_transactional: bool,
    pub is_control: bool,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// Fully validates one batch as a producer sent it: `buf` must be exactly one batch. Checks
/// framing, magic, CRC-32C, the record count, and every record's framing and offset delta
/// (decompressing into a buffer bounded by `max_decompressed_bytes` when compressed).
/// Touches each record once, allocating nothing for uncompressed batches.
pub(crate) fn validate(buf: &[u8], max_decompressed_bytes: usize) -> Result<BatchInfo> {
    let size = header::check_crc(buf)?;
    if size != buf.len() {
        return Err(Error::CorruptBatch(format!("batch length field says {size} bytes but {} were sent", buf.len())));
    }
    let attributes = header::read_i16(buf, header::ATTRIBUTES_AT);
    let compression = Compression::from_attributes(attributes)?;
    let record_count = header::read_i32(buf, header::RECORD_COUNT_AT);
    let last_offset_delta = header::read_i32(buf, header::LAST_OFFSET_DELTA_AT);
    if record_count <= 0 {
        return Err(Error::InvalidRecord(format!("batch declares {record_count} records; at least one is required")));
    }
    if last_offset_delta != record_count - 1 {
        return Err(Error::InvalidRecord(format!(
            "last offset delta {last_offset_delta} does not match {record_count} records"
        )));
    }
    let base_timestamp_ms = header::read_i64(buf, header::BASE_TIMESTAMP_AT);
    let timestamp_type = TimestampType::from_attributes(attributes);

    // Walk the records: each must be well formed, carry the next offset delta, and together
    // they must fill the record area exactly.
    let mut max_timestamp_ms = i64::MIN;
    let mut offset_delta_of_max_timestamp = 0;
    let (mut min_timestamp_ms, mut offset_delta_of_min_timestamp) = (i64::MAX, 0);
    let mut first_keyless_record = None;
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
        if timestamp < min_timestamp_ms {
            min_timestamp_ms = timestamp;
            offset_delta_of_min_timestamp = seen;
        }
        if record.key.is_none() && first_keyless_record.is_none() {
            first_keyless_record = Some(seen);
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
        min_timestamp_ms,
        offset_delta_of_min_timestamp,
        first_keyless_record,
        compression,
        timestamp_type,
        is_transactional: attributes & header::TRANSACTIONAL_BIT != 0,
        is_control: attributes & header::CONTROL_BIT != 0,
        producer_id: header::read_i64(buf, header::PRODUCER_ID_AT),
        producer_epoch: header::read_i16(buf, header::PRODUCER_EPOCH_AT),
        base_sequence: header::read_i32(buf, header::BASE_SEQUENCE_AT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::builder::RecordBatchBuilder;
    use crate::format::header::{
        compute_crc, CRC_AT, HEADER_SIZE, LAST_OFFSET_DELTA_AT, LENGTH_AT, LOG_OVERHEAD, MAGIC_AT, RECORD_COUNT_AT,
    };
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
