//! Sluice's Kafka broker: the network, the protocol handlers, cluster metadata, the
//! partitions a node holds and the group and transaction coordinators. Protocol types come
//! from the `kafka-protocol` crate; storage is `sluice-storage`. The broker knows nothing of
//! stream-processing jobs.
//!
//! What other crates use: a [`server::Server`] (a running broker, started by the binary or
//! by tests), [`Broker`] with its [`BrokerConfig`], the [`InProcessClient`] through which
//! jobs reach the broker, the [`clock`], and [`DataDirLock`] for tools that open a stopped
//! broker's logs.

mod api;
mod broker;
pub mod clock;
mod config;
mod connection;
mod controller;
mod data_dir;
mod dispatch;
mod error;
mod fetch_session;
mod group;
pub mod in_process;
mod inter_broker;
mod internal_topics;
mod isr;
mod leader_balance;
mod liveness;
mod metadata;
mod network;
mod partition;
mod publisher;
mod quorum;
mod replica_fetcher;
mod replica_manager;
mod response;
pub mod server;
mod topic_config;
mod topic_partition;
mod txn;

pub use broker::Broker;
pub use config::{BrokerConfig, ClusterConfig, GroupConfig, TransactionConfig};
pub use data_dir::DataDirLock;
pub use error::{Error, Result};
pub use in_process::InProcessClient;
pub use topic_partition::TopicPartition;
