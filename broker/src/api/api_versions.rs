//! ApiVersions: what this broker implements. Works before anything else (no
//! authentication exists yet, and it must work before it when it does).

use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::{ApiKey, RequestHeader};

use crate::connection::ConnectionState;

/// Produce is advertised from v0 although dispatch serves it from v3 only, as Kafka 4.0 does
/// (KAFKA-18659): librdkafka before the fix for its issue #4956 (e.g. 2.0.2, under Debian
/// bookworm's kcat) compresses with gzip or snappy only if the broker's Produce range includes
/// v0, and otherwise sends those batches uncompressed without a word. (Its lz4 check also
/// wants FindCoordinator v0, which waits for consumer groups.) Clients pick
/// the highest version both sides know (11 here), so none sends v0-v2; one that does still
/// gets UNSUPPORTED_VERSION logged and its connection closed.
const PRODUCE_ADVERTISED_MIN_VERSION: i16 = 0;

/// The dispatch table's versions as clients are told them.
fn advertised_to_clients(served: &[ApiVersion]) -> Vec<ApiVersion> {
    served
        .iter()
        .cloned()
        .map(|api| {
            if api.api_key == ApiKey::Produce as i16 {
                api.with_min_version(PRODUCE_ADVERTISED_MIN_VERSION)
            } else {
                api
            }
        })
        .collect()
}

/// `served` is what dispatch serves, from its table.
pub fn handle(
    conn: &mut ConnectionState,
    header: &RequestHeader,
    request: ApiVersionsRequest,
    served: &[ApiVersion],
) -> ApiVersionsResponse {
    if header.request_api_version >= 3 {
        conn.client_software =
            Some(format!("{} {}", request.client_software_name.as_str(), request.client_software_version.as_str()));
    }
    // Features (KIP-584) are left at their defaults, which the encoder does not write: older
    // librdkafka mis-reads tagged fields it does not know.
    ApiVersionsResponse::default().with_api_keys(advertised_to_clients(served))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{advertised_versions, APIS};

    #[test]
    fn produce_is_advertised_from_v0_and_everything_else_as_served() {
        let advertised = advertised_to_clients(&advertised_versions());
        assert_eq!(advertised.len(), APIS.len());
        for (api, spec) in advertised.iter().zip(APIS) {
            assert_eq!(api.api_key, spec.key as i16);
            assert_eq!(api.max_version, spec.max_version);
            let min_version = if spec.key == ApiKey::Produce { 0 } else { spec.min_version };
            assert_eq!(api.min_version, min_version, "{:?}", spec.key);
        }
        let produce = APIS.iter().find(|api| api.key == ApiKey::Produce).unwrap();
        assert_eq!(produce.min_version, 3, "dispatch still rejects Produce v0-v2");
    }
}
