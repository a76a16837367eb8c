//! Kafka's framing by hand, for tests that send exact requests (bad ones too) and read the
//! exact responses: a 4-byte size, a request header, the body.

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub fn frame<T: Encodable>(api_key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("bad-input-test")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, api_key.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

pub fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

pub fn decode<R: Decodable>(api_key: ApiKey, version: i16, mut body: Bytes) -> (i32, R) {
    let header_version = if api_key == ApiKey::ApiVersions { 0 } else { api_key.response_header_version(version) };
    let header = ResponseHeader::decode(&mut body, header_version).unwrap();
    (header.correlation_id, R::decode(&mut body, version).unwrap())
}

pub fn call<T: Encodable, R: Decodable>(
    stream: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> R {
    stream.write_all(&frame(api_key, version, correlation_id, body)).unwrap();
    let frame = read_frame(stream)
        .unwrap_or_else(|| panic!("no {api_key:?} v{version} response: the broker closed the connection"));
    let (id, response) = decode(api_key, version, frame);
    assert_eq!(id, correlation_id);
    response
}
