//! Sluice's Kafka broker: the network, the protocol handlers, cluster metadata and the
//! partitions a node holds. Protocol types come from the `kafka-protocol` crate; storage is
//! `sluice-storage`. The broker knows nothing of stream-processing jobs.

pub mod api;
pub mod broker;
pub mod clock;
pub mod config;
pub mod connection;
pub mod controller;
pub mod data_dir;
pub mod dispatch;
pub mod error;
pub mod group;
pub mod in_process;
pub mod internal_topics;
pub mod metadata;
pub mod network;
pub mod partition;
pub mod replica_manager;
pub mod response;
pub mod server;
pub mod topic_config;
pub mod topic_partition;
pub mod txn;

pub use broker::Broker;
pub use config::BrokerConfig;
pub use error::{Error, Result};
pub use in_process::InProcessClient;
pub use topic_partition::TopicPartition;
