//! Decompression of compressed record batches (gzip, snappy, lz4, zstd), bounded in output
//! size so that a hostile batch cannot exhaust memory. Kafka producers frame these codecs in
//! particular ways: lz4 uses the LZ4 frame format, and snappy is either raw (librdkafka) or in
//! the xerial block framing (the Java client); both snappy forms are accepted.

use std::io::Read;

use crate::batch::Compression;
use crate::error::{Error, Result};

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// Magic, version and compatible-version fields before the first xerial block.
const XERIAL_HEADER_SIZE: usize = 16;

/// Decompresses a batch's record area into a new buffer of at most `limit` bytes.
pub fn decompress(codec: Compression, input: &[u8], limit: usize) -> Result<Vec<u8>> {
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
