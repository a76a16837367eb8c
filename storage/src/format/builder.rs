//! Building magic-2 record batches (Kafka's `MemoryRecordsBuilder`): what the stream
//! processor's sinks, the coordinators and the transaction markers write, and what tests and
//! benchmarks feed the log. Records are encoded once into one buffer; the header is filled in
//! at the end with the count, timestamps and CRC-32C. Also the recompression of a produced
//! batch into a topic's `compression.type`.

use super::compression::{self, Compression};
use super::header::{self, HEADER_SIZE};
use crate::error::Result;

fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8 & 0x7f) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            put_varlong(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
        None => put_varlong(out, -1),
    }
}

/// Accumulates records and produces one batch.
pub struct RecordBatchBuilder {
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
    control: bool,
    count: i32,
    records: Vec<u8>,
    scratch: Vec<u8>,
}

impl RecordBatchBuilder {
    /// A builder whose record timestamps are stored relative to `base_timestamp_ms`.
    pub fn new(base_timestamp_ms: i64) -> RecordBatchBuilder {
        RecordBatchBuilder {
            base_timestamp_ms,
            max_timestamp_ms: base_timestamp_ms,
            compression: Compression::None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            control: false,
            count: 0,
            records: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of encoded records so far (before compression).
    pub fn records_size(&self) -> usize {
        self.records.len()
    }

    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        let body = &mut self.scratch;
        body.clear();
        body.push(0); // attributes
        put_varlong(body, timestamp_ms - self.base_timestamp_ms);
        put_varlong(body, i64::from(self.count));
        put_bytes(body, key);
        put_bytes(body, value);
        put_varlong(body, headers.len() as i64);
        for (key, value) in headers {
            put_bytes(body, Some(key));
            put_bytes(body, *value);
        }
        put_varlong(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(body);
        self.max_timestamp_ms = if self.count == 0 { timestamp_ms } else { self.max_timestamp_ms.max(timestamp_ms) };
        self.count += 1;
    }

    /// The finished batch, base offset 0 and leader epoch -1 (the log assigns both).
    pub fn build(self) -> Result<Vec<u8>> {
        let payload = compression::compress(self.compression, &self.records)?;
        let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&((HEADER_SIZE - header::LOG_OVERHEAD + payload.len()) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.push(header::MAGIC as u8);
        out.extend_from_slice(&[0; 4]); // CRC, filled in below
        let attributes = self.compression.attribute_bits()
            | if self.transactional { header::TRANSACTIONAL_BIT } else { 0 }
            | if self.control { header::CONTROL_BIT } else { 0 };
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&(self.count - 1).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&payload);
        let crc = header::compute_crc(&out);
        out[header::CRC_AT..header::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

/// `batch` (validated) with its records stored under `target` instead (`compression.type`):
/// the same records, header and producer fields, with the codec bits, length and CRC redone.
/// Decompression is bounded by `max_decompressed_bytes`.
pub(crate) fn recompress(
    batch: &[u8],
    target: Compression,
    levels: compression::Levels,
    max_decompressed_bytes: usize,
) -> Result<Vec<u8>> {
    let attributes = header::read_i16(batch, header::ATTRIBUTES_AT);
    let source = Compression::from_attributes(attributes)?;
    let records = compression::decompress(source, &batch[HEADER_SIZE..], max_decompressed_bytes)?;
    let payload = compression::compress_with(target, &records, levels)?;
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&batch[..HEADER_SIZE]);
    out.extend_from_slice(&payload);
    let length = (HEADER_SIZE - header::LOG_OVERHEAD + payload.len()) as i32;
    out[header::LENGTH_AT..header::LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    let attributes = (attributes & !compression::COMPRESSION_MASK) | target.attribute_bits();
    out[header::ATTRIBUTES_AT..header::ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = header::compute_crc(&out);
    out[header::CRC_AT..header::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}
