//! Encoding a response into a frame without copying record bytes: the encoder writes into a
//! buffer as usual, except that record sets handed to it from the log (fetched batches) are
//! spliced in as the `Bytes` they already are, so the frame is a list of chunks written to
//! the socket one after another.

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::Encodable;

/// Record sets smaller than this are copied: a separate write costs more than the copy.
const SPLICE_MIN_BYTES: usize = 4096;

struct ResponseWriter<'a> {
    /// Everything before the current buffer.
    chunks: Vec<Bytes>,
    chunks_len: usize,
    current: BytesMut,
    /// Byte slices that may be spliced instead of copied.
    splice: &'a [Bytes],
}

impl ResponseWriter<'_> {
    fn into_chunks(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.chunks.push(self.current.freeze());
        }
        self.chunks
    }
}

// SAFETY: every method delegates to the inner `BytesMut`, which upholds `BufMut`'s contract;
// `put_slice` only adds the alternative of appending a whole chunk after the buffer.
unsafe impl BufMut for ResponseWriter<'_> {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded with the caller's guarantee that `cnt` bytes were initialised.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SPLICE_MIN_BYTES {
            if let Some(shared) = self.splice.iter().find(|b| b.as_ptr() == src.as_ptr() && b.len() == src.len()) {
                let done = std::mem::take(&mut self.current);
                self.chunks_len += done.len() + shared.len();
                self.chunks.push(done.freeze());
                self.chunks.push(shared.clone());
                return;
            }
        }
        self.current.extend_from_slice(src);
    }
}

impl ByteBufMut for ResponseWriter<'_> {
    fn offset(&self) -> usize {
        self.chunks_len + self.current.len()
    }

    fn seek(&mut self, offset: usize) {
        // Message encoders never seek (only record-batch encoders do, and we never encode
        // records); seeking within the current buffer is all that could make sense.
        let local = offset.saturating_sub(self.chunks_len);
        self.current.resize(local, 0);
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.chunks_len);
        let end = r.end.saturating_sub(self.chunks_len);
        &mut self.current[start..end]
    }
}

/// Encodes a whole response frame (size, header, body) as chunks for the socket. The header
/// version follows the body's flexibility, except that ApiVersions always uses header v0 so
/// that any client can read it.
pub fn encode<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
    splice: &[Bytes],
) -> Result<Vec<Bytes>, String> {
    let header_version = if api_key == ApiKey::ApiVersions { 0 } else { api_key.response_header_version(version) };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut writer =
        ResponseWriter { chunks: Vec::new(), chunks_len: 0, current: BytesMut::with_capacity(256), splice };
    writer.current.put_i32(0); // the size, filled in below
    header.encode(&mut writer, header_version).map_err(|e| e.to_string())?;
    body.encode(&mut writer, version).map_err(|e| e.to_string())?;
    let size = i32::try_from(writer.offset() - 4).map_err(|_| "response larger than 2 GiB".to_string())?;
    let mut chunks = writer.into_chunks();
    // The size prefix sits at the start of the first chunk, which is always the writer's own
    // buffer (it holds at least the prefix and the header).
    let mut first = BytesMut::from(&chunks[0][..]);
    first[..4].copy_from_slice(&size.to_be_bytes());
    chunks[0] = first.freeze();
    Ok(chunks)
}

/// What a request gets back.
pub enum Outcome {
    Respond(Vec<Bytes>),
    /// Produce with acks=0 gets no response.
    NoResponse,
    Close(String),
    /// A response ready later (acks=all waiting for the ISR); it still goes out in request
    /// order, after those of the requests before it.
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>),
}

/// Encodes a response frame, or closes the connection if it cannot be encoded.
pub fn respond<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
    splice: &[Bytes],
) -> Outcome {
    match encode(api_key, version, correlation_id, body, splice) {
        Ok(chunks) => Outcome::Respond(chunks),
        Err(err) => Outcome::Close(format!("cannot encode {api_key:?} v{version} response: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchResponse, FetchableTopicResponse, PartitionData};
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn fetched_records_are_spliced_not_copied() {
        let records = Bytes::from(vec![7u8; 10_000]);
        let response = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(kafka_protocol::messages::TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![PartitionData::default().with_records(Some(records.clone()))])]);
        let version = 11;
        let chunks = encode(ApiKey::Fetch, version, 42, &response, std::slice::from_ref(&records)).unwrap();
        assert!(chunks.iter().any(|c| c.as_ptr() == records.as_ptr()), "records were copied");
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut expected = BytesMut::new();
        header_and_body(&mut expected, &response, version);
        assert_eq!(&whole[4..], &expected[..]);
        assert_eq!(i32::from_be_bytes(whole[..4].try_into().unwrap()) as usize, whole.len() - 4);
    }

    fn header_and_body(out: &mut BytesMut, response: &FetchResponse, version: i16) {
        ResponseHeader::default()
            .with_correlation_id(42)
            .encode(out, ApiKey::Fetch.response_header_version(version))
            .unwrap();
        response.encode(out, version).unwrap();
    }
}
