//! Sluice's Kafka broker: the network, the protocol handlers, cluster metadata and the
//! partitions a node holds. Protocol types come from the `kafka-protocol` crate; storage is
//! `sluice-storage`. The broker knows nothing of stream-processing jobs.

pub mod api;
pub mod broker;
pub mod config;
pub mod data_dir;
pub mod dispatch;
pub mod error;
pub mod group;
pub mod metadata;
pub mod network;
pub mod replica_manager;
pub mod response;
pub mod topic_config;
pub mod txn;

pub use broker::Broker;
pub use config::BrokerConfig;
pub use error::{Error, Result};
