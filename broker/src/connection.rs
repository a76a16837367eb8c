//! What one client connection remembers between its requests, for the handlers that need
//! it (the peer's address for group member hosts; the client's software, from ApiVersions
//! v3+, for logs about what it asked for). Owned by the connection's task alone.

use std::net::SocketAddr;

#[derive(Default)]
pub struct ConnectionState {
    pub peer: Option<SocketAddr>,
    /// The listener the connection came in on: Metadata, FindCoordinator and DescribeCluster
    /// answer with the brokers' endpoints on it (empty: the broker's first listener).
    pub listener: std::sync::Arc<str>,
    /// From ApiVersions v3+, for logs about what a client asked for.
    pub client_software: Option<String>,
}
