//! ApiVersions: what this broker implements. Works before anything else (no
//! authentication exists yet, and it must work before it when it does).

use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::RequestHeader;

use crate::dispatch::advertised_versions;
use crate::network::ConnectionState;

pub fn handle(conn: &mut ConnectionState, header: &RequestHeader, request: ApiVersionsRequest) -> ApiVersionsResponse {
    if header.request_api_version >= 3 {
        conn.client_software =
            Some(format!("{} {}", request.client_software_name.as_str(), request.client_software_version.as_str()));
    }
    // Features (KIP-584) are left at their defaults, which the encoder does not write: older
    // librdkafka mis-reads tagged fields it does not know.
    ApiVersionsResponse::default().with_api_keys(advertised_versions())
}
