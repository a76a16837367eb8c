//! Stored batches and the records inside them: `RecordBatch` reads a batch's header fields,
//! `Records` iterates its records handing out keys, values and headers as `Bytes` slices of
//! the batch (or of its one decompressed buffer), never copies; `decode_records` is the walk
//! validation uses. Every length comes from untrusted bytes and is bounds-checked.
//! Record layout: length, attributes, timestamp delta, offset delta, key, value, headers,
//! with zigzag varints and -1 lengths for nulls.

use bytes::Bytes;

use super::compression::{self, Compression};
use super::header::{self, TimestampType, HEADER_SIZE};
use crate::error::{Error, Result};

/// Decompressed batches larger than this are refused, so a small "zip bomb" batch cannot
/// make a reader allocate without bound. 64 MiB is 64 times Kafka's default
/// `max.message.bytes`, above the ratios real records compress by (JSON under zstd: ~10x).
pub(crate) const MAX_DECOMPRESSED_BATCH_BYTES: usize = 64 << 20;

fn invalid(what: &str) -> Error {
    Error::InvalidRecord(what.to_string())
}

/// Reads a zigzag varint of at most `max_bytes` bytes at `*pos`.
fn read_varlong(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<i64> {
    let mut raw: u64 = 0;
    for i in 0..max_bytes {
        let byte = *buf.get(*pos).ok_or_else(|| invalid("record truncated inside a varint"))?;
        *pos += 1;
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err(invalid("varint longer than its type allows"))
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<i32> {
    let value = read_varlong(buf, pos, 5)?;
    i32::try_from(value).map_err(|_| invalid("varint out of the 32-bit range"))
}

/// A length-prefixed byte field: `Ok(None)` for length -1 (null) when `nullable`.
fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize, nullable: bool) -> Result<Option<&'a [u8]>> {
    let len = read_varint(buf, pos)?;
    if len < 0 {
        return if len == -1 && nullable { Ok(None) } else { Err(invalid("negative field length")) };
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| invalid("field runs past the end of its record"))?;
    let bytes = &buf[*pos..end];
    *pos = end;
    Ok(Some(bytes))
}

/// One record as slices of the buffer it was decoded from.
#[derive(Clone, Copy, Debug)]
pub(super) struct RawRecord<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub header_count: i32,
    pub headers: &'a [u8],
}

/// Decodes the record at `*pos`, checking that it fills exactly its declared length.
fn next_raw_record<'a>(buf: &'a [u8], pos: &mut usize) -> Result<RawRecord<'a>> {
    let length = read_varint(buf, pos)?;
    if length < 0 {
        return Err(invalid("negative record length"));
    }
    let end = pos
        .checked_add(length as usize)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| invalid("record runs past the end of its batch"))?;
    let body = &buf[..end];
    let mut at = *pos + 1; // attributes: unused in magic 2
    if at > end {
        return Err(invalid("record too short for its attributes"));
    }
    let timestamp_delta = read_varlong(body, &mut at, 10)?;
    let offset_delta = read_varint(body, &mut at)?;
    let key = read_bytes(body, &mut at, true)?;
    let value = read_bytes(body, &mut at, true)?;
    let header_count = read_varint(body, &mut at)?;
    if header_count < 0 {
        return Err(invalid("negative header count"));
    }
    let headers_start = at;
    for _ in 0..header_count {
        read_bytes(body, &mut at, false)?;
        read_bytes(body, &mut at, true)?;
    }
    if at != end {
        return Err(Error::InvalidRecord(format!(
            "record declares {length} bytes but its fields take {}",
            at - (end - length as usize)
        )));
    }
    *pos = end;
    Ok(RawRecord { timestamp_delta, offset_delta, key, value, header_count, headers: &buf[headers_start..end] })
}

/// Walks every record of one batch (decompressing when needed), calling `visit` for each.
/// Fails if any record is malformed or bytes are left over after the last one.
pub(super) fn decode_records(
    batch: &[u8],
    max_decompressed_bytes: usize,
    mut visit: impl FnMut(RawRecord<'_>) -> Result<()>,
) -> Result<()> {
    let compression = Compression::from_attributes(header::read_i16(batch, header::ATTRIBUTES_AT))?;
    let count = header::read_i32(batch, header::RECORD_COUNT_AT).max(0);
    let payload = &batch[HEADER_SIZE..];
    let decompressed;
    let records = if compression == Compression::None {
        payload
    } else {
        decompressed = compression::decompress(compression, payload, max_decompressed_bytes)?;
        &decompressed[..]
    };
    let mut pos = 0;
    // Bounded by the declared count and by the bytes: each record takes at least one byte.
    for _ in 0..count {
        if pos >= records.len() {
            break;
        }
        visit(next_raw_record(records, &mut pos)?)?;
    }
    if pos != records.len() {
        return Err(Error::InvalidRecord(format!(
            "{} bytes left over after the declared records",
            records.len() - pos
        )));
    }
    Ok(())
}

/// One stored batch, as a `Bytes` slice of a segment (or of a fetch response).
#[derive(Clone, Debug)]
pub struct RecordBatch {
    bytes: Bytes,
}

impl RecordBatch {
    /// Wraps one batch, checking its framing (not its CRC: see [`RecordBatch::verify_crc`]).
    pub fn new(bytes: Bytes) -> Result<RecordBatch> {
        let size = header::check_framing(&bytes)?;
        if size != bytes.len() {
            return Err(Error::CorruptBatch(format!("batch of {size} bytes in a {}-byte buffer", bytes.len())));
        }
        Ok(RecordBatch { bytes })
    }

    /// Splits a buffer of concatenated batches (a read result) into batches. A partial batch
    /// at the end, as a size-limited fetch may return, ends the iteration.
    pub fn iter_batches(bytes: Bytes) -> BatchIter {
        BatchIter { bytes }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn verify_crc(&self) -> Result<()> {
        header::check_crc(&self.bytes).map(|_| ())
    }

    pub fn base_offset(&self) -> i64 {
        header::read_i64(&self.bytes, header::BASE_OFFSET_AT)
    }

    pub fn last_offset(&self) -> i64 {
        // Wrapping: a batch from the network may carry any base offset.
        self.base_offset().wrapping_add(i64::from(header::read_i32(&self.bytes, header::LAST_OFFSET_DELTA_AT)))
    }

    pub fn partition_leader_epoch(&self) -> i32 {
        header::read_i32(&self.bytes, header::LEADER_EPOCH_AT)
    }

    fn attributes(&self) -> i16 {
        header::read_i16(&self.bytes, header::ATTRIBUTES_AT)
    }

    pub fn compression(&self) -> Result<Compression> {
        Compression::from_attributes(self.attributes())
    }

    pub fn timestamp_type(&self) -> TimestampType {
        TimestampType::from_attributes(self.attributes())
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes() & header::TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes() & header::CONTROL_BIT != 0
    }

    pub fn base_timestamp_ms(&self) -> i64 {
        header::read_i64(&self.bytes, header::BASE_TIMESTAMP_AT)
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        header::read_i64(&self.bytes, header::MAX_TIMESTAMP_AT)
    }

    pub fn producer_id(&self) -> i64 {
        header::read_i64(&self.bytes, header::PRODUCER_ID_AT)
    }

    pub fn producer_epoch(&self) -> i16 {
        header::read_i16(&self.bytes, header::PRODUCER_EPOCH_AT)
    }

    pub fn base_sequence(&self) -> i32 {
        header::read_i32(&self.bytes, header::BASE_SEQUENCE_AT)
    }

    pub fn record_count(&self) -> i32 {
        header::read_i32(&self.bytes, header::RECORD_COUNT_AT)
    }

    /// The records, decompressed if needed into one buffer per batch; keys, values and headers
    /// are slices of the batch (or of that buffer), never copies.
    pub fn records(&self) -> Result<Records> {
        self.records_with_limit(MAX_DECOMPRESSED_BATCH_BYTES)
    }

    pub fn records_with_limit(&self, max_decompressed_bytes: usize) -> Result<Records> {
        let payload = self.bytes.slice(HEADER_SIZE..);
        let data = match self.compression()? {
            Compression::None => payload,
            codec => Bytes::from(compression::decompress(codec, &payload, max_decompressed_bytes)?),
        };
        let log_append_time = match self.timestamp_type() {
            TimestampType::LogAppendTime => Some(self.max_timestamp_ms()),
            TimestampType::CreateTime => None,
        };
        Ok(Records {
            data,
            pos: 0,
            remaining: self.record_count().max(0),
            base_offset: self.base_offset(),
            base_timestamp_ms: self.base_timestamp_ms(),
            log_append_time,
        })
    }
}

/// Iterator over the batches in a buffer of concatenated batches.
pub struct BatchIter {
    bytes: Bytes,
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.len() < HEADER_SIZE {
            return None;
        }
        match header::check_framing(&self.bytes) {
            Ok(size) => Some(Ok(RecordBatch { bytes: self.bytes.split_to(size) })),
            // A size-limited read may end in a partial batch; that is not an error.
            Err(Error::CorruptBatch(_))
                if usize::try_from(header::read_i32(&self.bytes, header::LENGTH_AT))
                    .is_ok_and(|length| length.saturating_add(header::LOG_OVERHEAD) > self.bytes.len()) =>
            {
                None
            }
            Err(err) => {
                self.bytes.clear();
                Some(Err(err))
            }
        }
    }
}

/// A record header: the key is a string in Kafka's model, handed out as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// The headers of one record, decoded lazily.
#[derive(Clone, Debug)]
pub struct Headers {
    data: Bytes,
    pos: usize,
    remaining: i32,
}

impl Headers {
    pub fn len(&self) -> usize {
        self.remaining.max(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.remaining <= 0
    }
}

impl Iterator for Headers {
    type Item = Result<Header>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let data = &self.data;
        let parsed = (|| {
            let key = read_bytes(data, &mut self.pos, false)?.unwrap_or_default();
            let value = read_bytes(data, &mut self.pos, true)?;
            Ok(Header { key: data.slice_ref(key), value: value.map(|v| data.slice_ref(v)) })
        })();
        if parsed.is_err() {
            self.remaining = 0;
        }
        Some(parsed)
    }
}

/// One record, its fields sharing the batch's memory.
#[derive(Clone, Debug)]
pub struct Record {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Headers,
}

/// Iterator over the records of one batch.
pub struct Records {
    data: Bytes,
    pos: usize,
    remaining: i32,
    base_offset: i64,
    base_timestamp_ms: i64,
    log_append_time: Option<i64>,
}

impl Iterator for Records {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let data = &self.data;
        match next_raw_record(data, &mut self.pos) {
            Ok(raw) => Some(Ok(Record {
                offset: self.base_offset.wrapping_add(i64::from(raw.offset_delta)),
                timestamp_ms: self.log_append_time.unwrap_or(self.base_timestamp_ms.wrapping_add(raw.timestamp_delta)),
                key: raw.key.map(|k| data.slice_ref(k)),
                value: raw.value.map(|v| data.slice_ref(v)),
                headers: Headers { data: data.slice_ref(raw.headers), pos: 0, remaining: raw.header_count },
            })),
            Err(err) => {
                self.remaining = 0;
                Some(Err(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::builder::RecordBatchBuilder;
    use crate::format::validate::validate;
    use proptest::prelude::*;

    type TestRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, Option<Vec<u8>>)>);

    fn build(records: &[TestRecord], compression: Compression) -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new(records[0].0).compression(compression);
        for (ts, key, value, headers) in records {
            let headers: Vec<(&[u8], Option<&[u8]>)> = headers.iter().map(|(k, v)| (&k[..], v.as_deref())).collect();
            builder.push(*ts, key.as_deref(), value.as_deref(), &headers);
        }
        builder.build().unwrap()
    }

    fn read_back(batch: Vec<u8>) -> Vec<TestRecord> {
        let batch = RecordBatch::new(Bytes::from(batch)).unwrap();
        batch
            .records()
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                let headers =
                    r.headers.map(|h| h.unwrap()).map(|h| (h.key.to_vec(), h.value.map(|v| v.to_vec()))).collect();
                (r.timestamp_ms, r.key.map(|k| k.to_vec()), r.value.map(|v| v.to_vec()), headers)
            })
            .collect()
    }

    fn records_strategy() -> impl Strategy<Value = Vec<TestRecord>> {
        let bytes = || proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64));
        let header = (proptest::collection::vec(any::<u8>(), 0..16), bytes());
        proptest::collection::vec((0i64..1 << 40, bytes(), bytes(), proptest::collection::vec(header, 0..3)), 1..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn records_round_trip_through_every_codec(records in records_strategy()) {
            for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
                let batch = build(&records, codec);
                let info = validate(&batch, 1 << 20).unwrap();
                prop_assert_eq!(info.record_count as usize, records.len());
                prop_assert_eq!(info.compression, codec);
                prop_assert_eq!(info.max_timestamp_ms, records.iter().map(|r| r.0).max().unwrap());
                prop_assert_eq!(read_back(batch), records.clone());
            }
        }
    }

    #[test]
    fn a_filtered_batch_keeps_its_offsets_and_only_the_chosen_records() {
        for codec in [Compression::None, Compression::Zstd, Compression::Snappy] {
            let records: Vec<TestRecord> = (0..6)
                .map(|i| (100 + i, Some(vec![b'k', i as u8]), (i != 4).then(|| vec![b'v'; 10]), vec![]))
                .collect();
            let batch = RecordBatch::new(Bytes::from(build(&records, codec))).unwrap();
            let mut stored = batch.as_bytes().to_vec();
            stored[..8].copy_from_slice(&1000i64.to_be_bytes()); // as the log stamps it
            let batch = RecordBatch::new(Bytes::from(stored)).unwrap();
            let Filtered::Some(kept) = filter_batch(&batch, 1 << 20, |r| r.offset % 2 == 1).unwrap() else {
                panic!("some records stay")
            };
            let kept = RecordBatch::new(Bytes::from(kept)).unwrap();
            kept.verify_crc().unwrap();
            assert_eq!((kept.base_offset(), kept.last_offset(), kept.record_count()), (1000, 1005, 3));
            let read: Vec<(i64, i64)> =
                kept.records().unwrap().map(|r| r.unwrap()).map(|r| (r.offset, r.timestamp_ms)).collect();
            assert_eq!(read, vec![(1001, 101), (1003, 103), (1005, 105)]);
            assert_eq!(kept.max_timestamp_ms(), 105);
            assert_eq!(kept.compression().unwrap(), codec);
            assert!(matches!(filter_batch(&batch, 1 << 20, |_| true).unwrap(), Filtered::All));
            assert!(matches!(filter_batch(&batch, 1 << 20, |_| false).unwrap(), Filtered::Nothing));
            let mut tombstones = Vec::new();
            filter_batch(&batch, 1 << 20, |r| {
                tombstones.push(r.is_tombstone);
                true
            })
            .unwrap();
            assert_eq!(tombstones, vec![false, false, false, false, true, false]);
        }
    }

    #[test]
    fn keys_and_values_are_slices_of_the_batch() {
        let batch =
            Bytes::from(build(&[(5, Some(b"key".to_vec()), Some(b"value".to_vec()), vec![])], Compression::None));
        let range = batch.as_ptr() as usize..batch.as_ptr() as usize + batch.len();
        let record = RecordBatch::new(batch.clone()).unwrap().records().unwrap().next().unwrap().unwrap();
        assert!(range.contains(&(record.key.unwrap().as_ptr() as usize)));
        assert!(range.contains(&(record.value.unwrap().as_ptr() as usize)));
    }

    #[test]
    fn batch_iter_splits_concatenated_batches_and_stops_at_a_partial_one() {
        let a = build(&[(1, None, Some(b"a".to_vec()), vec![])], Compression::None);
        let b = build(&[(2, None, Some(b"b".to_vec()), vec![])], Compression::None);
        let mut all = a.clone();
        all.extend_from_slice(&b);
        all.extend_from_slice(&a[..a.len() - 3]);
        let batches: Vec<_> = RecordBatch::iter_batches(Bytes::from(all)).collect::<Result<_>>().unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].as_bytes().as_ref(), &b[..]);
    }
}

/// What the log cleaner sees of a record when deciding whether it stays.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordView<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub is_tombstone: bool,
}

/// What filtering a batch left of it.
#[derive(Debug)]
pub(crate) enum Filtered {
    /// Every record stays: the batch can be kept byte for byte.
    All,
    /// No record stays.
    Nothing,
    /// Some stay: the batch rebuilt with only them (same base offset, last offset delta,
    /// base timestamp, producer fields and codec; new count, max timestamp, length and CRC).
    Some(Vec<u8>),
}

/// Filters the records of a stored batch by `keep`, copying the kept records' bytes as they
/// are (their offset and timestamp deltas stay valid: the batch keeps its base offset and base
/// timestamp), recompressed with the batch's codec.
pub(crate) fn filter_batch(
    batch: &RecordBatch,
    max_decompressed_bytes: usize,
    mut keep: impl FnMut(&RecordView) -> bool,
) -> Result<Filtered> {
    let codec = batch.compression()?;
    let payload = &batch.bytes[HEADER_SIZE..];
    let decompressed;
    let records: &[u8] = if codec == Compression::None {
        payload
    } else {
        decompressed = compression::decompress(codec, payload, max_decompressed_bytes)?;
        &decompressed
    };
    let log_append_time = matches!(batch.timestamp_type(), TimestampType::LogAppendTime);
    let (base_offset, base_timestamp) = (batch.base_offset(), batch.base_timestamp_ms());
    let mut kept = Vec::with_capacity(records.len());
    let (mut count, mut total, mut max_timestamp) = (0i32, 0i32, i64::MIN);
    let mut pos = 0;
    while pos < records.len() && total < batch.record_count() {
        let start = pos;
        let raw = next_raw_record(records, &mut pos)?;
        total += 1;
        let timestamp_ms =
            if log_append_time { batch.max_timestamp_ms() } else { base_timestamp.wrapping_add(raw.timestamp_delta) };
        let view = RecordView {
            offset: base_offset.wrapping_add(i64::from(raw.offset_delta)),
            key: raw.key,
            is_tombstone: raw.value.is_none(),
        };
        if keep(&view) {
            kept.extend_from_slice(&records[start..pos]);
            count += 1;
            max_timestamp = max_timestamp.max(timestamp_ms);
        }
    }
    if count == total {
        return Ok(Filtered::All);
    }
    if count == 0 {
        return Ok(Filtered::Nothing);
    }
    let payload = compression::compress(codec, &kept)?;
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&batch.bytes[..HEADER_SIZE]);
    out.extend_from_slice(&payload);
    let length = (HEADER_SIZE - header::LOG_OVERHEAD + payload.len()) as i32;
    out[header::LENGTH_AT..header::LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    out[header::RECORD_COUNT_AT..header::RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
    if !log_append_time {
        out[header::MAX_TIMESTAMP_AT..header::MAX_TIMESTAMP_AT + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    }
    let crc = header::compute_crc(&out);
    out[header::CRC_AT..header::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Filtered::Some(out))
}
