//! The broker's client for requests it sends other brokers on its own behalf (transaction
//! markers for partitions they lead): one Kafka request and its response over a fresh
//! connection to the broker's inter-broker endpoint, blocking, with a deadline on every step.
//! Followers' fetches have their own long-lived connections (`replica_fetcher`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::metadata::ClusterMetadata;

/// A response larger than this is refused (a broken or hostile peer).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// The `host:port` brokers use to reach `node_id` (its `listener` endpoint).
pub fn address_of(metadata: &ClusterMetadata, node_id: i32, listener: &str) -> Option<String> {
    let endpoint = metadata.brokers.get(&node_id).filter(|b| !b.fenced)?.endpoint(listener)?;
    Some(format!("{}:{}", endpoint.host, endpoint.port))
}

/// Sends `request` as `api` v`version` to `address` and returns the decoded response.
pub fn call<Req: Encodable, Resp: Decodable>(
    address: &str,
    api: ApiKey,
    version: i16,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, String> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("sluice-broker")));
    let mut body = BytesMut::new();
    header.encode(&mut body, api.request_header_version(version)).map_err(|e| e.to_string())?;
    request.encode(&mut body, version).map_err(|e| e.to_string())?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);

    let target = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} does not resolve"))?;
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).ok();
    stream.write_all(&frame).map_err(|e| format!("{address}: {e}"))?;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(|e| format!("{address}: {e}"))?;
    let length = i32::from_be_bytes(length);
    if length < 0 || length as usize > MAX_RESPONSE_BYTES {
        return Err(format!("{address} answered with a {length}-byte frame"));
    }
    let mut buf = vec![0u8; length as usize];
    stream.read_exact(&mut buf).map_err(|e| format!("{address}: {e}"))?;
    let mut bytes = Bytes::from(buf);
    ResponseHeader::decode(&mut bytes, api.response_header_version(version)).map_err(|e| e.to_string())?;
    Resp::decode(&mut bytes, version).map_err(|e| e.to_string())
}
