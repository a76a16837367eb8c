//! Record batch compression: the codec named by a batch's attribute bits, decompression of a
//! batch's record area into a buffer bounded in size (so a hostile batch cannot exhaust
//! memory), and the compression the builder applies. Kafka producers frame these codecs in
//! particular ways: lz4 uses the LZ4 frame format, and snappy is either raw (librdkafka) or in
//! the xerial block framing (the Java client); both snappy forms are read.

use std::io::{Read, Write};

use crate::error::{Error, Result};

/// The attribute bits that name the codec.
pub(super) const COMPRESSION_MASK: i16 = 0x07;
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// Magic, version and compatible-version fields before the first xerial block.
const XERIAL_HEADER_SIZE: usize = 16;

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

/// Decompresses a batch's record area into a new buffer of at most `limit` bytes.
pub(super) fn decompress(codec: Compression, input: &[u8], limit: usize) -> Result<Vec<u8>> {
    let fail = |reason: String| Error::Decompression { codec: codec.name(), reason };
    match codec {
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(input), limit).map_err(fail),
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(input), limit).map_err(fail),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(|e| fail(e.to_string()))?;
            read_bounded(decoder, limit).map_err(fail)
        }
        Compression::Snappy => decompress_snappy(input, limit).map_err(fail),
    }
}

/// Reads a decoder to its end, failing once more than `limit` bytes come out.
fn read_bounded(reader: impl Read, limit: usize) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let read = reader.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
    if read > limit {
        return Err(format!("decompressed size exceeds the {limit}-byte limit"));
    }
    Ok(out)
}

fn decompress_snappy(input: &[u8], limit: usize) -> std::result::Result<Vec<u8>, String> {
    if input.len() >= XERIAL_HEADER_SIZE && input[..8] == XERIAL_MAGIC[..] {
        let mut out = Vec::new();
        let mut rest = &input[XERIAL_HEADER_SIZE..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err("xerial block length truncated".into());
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let block = rest.get(4..4 + len).ok_or("xerial block runs past the end of the batch")?;
            append_raw_snappy(block, &mut out, limit)?;
            rest = &rest[4 + len..];
        }
        Ok(out)
    } else {
        let mut out = Vec::new();
        append_raw_snappy(input, &mut out, limit)?;
        Ok(out)
    }
}

fn append_raw_snappy(block: &[u8], out: &mut Vec<u8>, limit: usize) -> std::result::Result<(), String> {
    let len = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    if out.len() + len > limit {
        return Err(format!("decompressed size exceeds the {limit}-byte limit"));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new().decompress(block, &mut out[start..]).map_err(|e| e.to_string())?;
    Ok(())
}

/// The compression level to use; None is the builder's (fast) choice.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Levels {
    /// 1..=9, or -1 for the codec's default (6).
    pub gzip: Option<i32>,
    pub zstd: Option<i32>,
}

/// Compresses a builder's encoded records with `codec`, framed as Kafka producers frame it
/// (lz4 frame, raw snappy).
pub(super) fn compress(codec: Compression, input: &[u8]) -> Result<Vec<u8>> {
    compress_with(codec, input, Levels::default())
}

/// [`compress`] at the given levels.
pub(super) fn compress_with(codec: Compression, input: &[u8], levels: Levels) -> Result<Vec<u8>> {
    let fail = |err: std::io::Error| Error::Compression { codec: codec.name(), reason: err.to_string() };
    match codec {
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => {
            let level = match levels.gzip {
                None => flate2::Compression::fast(),
                Some(level) if level < 0 => flate2::Compression::default(),
                Some(level) => flate2::Compression::new(level as u32),
            };
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
            encoder.write_all(input).map_err(fail)?;
            encoder.finish().map_err(fail)
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(input)
            .map_err(|err| Error::Compression { codec: "snappy", reason: err.to_string() }),
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(input).map_err(fail)?;
            encoder.finish().map_err(|err| Error::Compression { codec: "lz4", reason: err.to_string() })
        }
        Compression::Zstd => zstd::bulk::compress(input, levels.zstd.unwrap_or(1)).map_err(fail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::builder::RecordBatchBuilder;
    use crate::format::header::HEADER_SIZE;
    use crate::format::validate::validate;

    /// The record area of an uncompressed batch holding one record.
    fn plain_records(value: &[u8]) -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new(1);
        builder.push(1, None, Some(value), &[]);
        builder.build().unwrap()[HEADER_SIZE..].to_vec()
    }

    #[test]
    fn xerial_framed_snappy_is_read() {
        let records = plain_records(b"hello snappy");
        let block = snap::raw::Encoder::new().compress_vec(&records).unwrap();
        let mut framed = b"\x82SNAPPY\x00".to_vec();
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
        framed.extend_from_slice(&block);
        assert_eq!(decompress(Compression::Snappy, &framed, 1 << 20).unwrap(), records);
    }

    #[test]
    fn decompression_is_bounded() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut builder = RecordBatchBuilder::new(0).compression(codec);
            builder.push(0, None, Some(&vec![b'a'; 1 << 20]), &[]);
            let batch = builder.build().unwrap();
            assert!(batch.len() < 100_000, "{codec:?} should compress a run of one byte");
            let err = validate(&batch, 64 << 10).unwrap_err();
            assert!(matches!(err, Error::Decompression { .. }), "{codec:?}: {err}");
        }
    }

    #[test]
    fn garbage_in_a_compressed_batch_is_a_typed_error() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let err = decompress(codec, b"definitely not compressed data", 1 << 20).unwrap_err();
            assert!(matches!(err, Error::Decompression { .. }), "{codec:?}");
        }
    }
}
