//! `sluice transactions list|describe`: transaction operator tooling in the manner of Kafka's
//! `kafka-transactions.sh`, over the wire protocol (ListTransactions, DescribeTransactions,
//! DescribeProducers), so it works against any Kafka-compatible cluster.

use anyhow::bail;
use clap::Subcommand;
use kafka_protocol::messages::describe_producers_request::{DescribeProducersRequest, TopicRequest};
use kafka_protocol::messages::describe_transactions_request::DescribeTransactionsRequest;
use kafka_protocol::messages::list_transactions_request::ListTransactionsRequest;
use kafka_protocol::messages::{TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use crate::client::{error_name, Client};
use crate::groups::Connect;

const LIST_TRANSACTIONS_VERSION: i16 = 0;
const DESCRIBE_TRANSACTIONS_VERSION: i16 = 0;
const DESCRIBE_PRODUCERS_VERSION: i16 = 0;

#[derive(Subcommand)]
pub enum TransactionsCommand {
    /// List transactional ids with their producer id and state (ListTransactions).
    List {
        /// Only transactions in this state: Ongoing, CompleteCommit, CompleteAbort, Empty...
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Show a transactional id's state, producer, timeout and the partitions of its open
    /// transaction, with where that transaction starts in each (DescribeProducers).
    Describe {
        /// The transactional id.
        transactional_id: String,
        #[command(flatten)]
        connect: Connect,
    },
}

pub fn run(command: TransactionsCommand) -> anyhow::Result<()> {
    match command {
        TransactionsCommand::List { state, connect } => list(connect.bootstrap(), state),
        TransactionsCommand::Describe { transactional_id, connect } => describe(connect.bootstrap(), &transactional_id),
    }
}

fn list(bootstrap: &str, state: Option<String>) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap)?;
    let request = ListTransactionsRequest::default()
        .with_state_filters(state.into_iter().map(StrBytes::from_string).collect())
        .with_duration_filter(-1);
    let response = client.call(bootstrap, LIST_TRANSACTIONS_VERSION, &request)?;
    if response.error_code != 0 {
        bail!("ListTransactions failed: {}", error_name(response.error_code));
    }
    if let Some(unknown) = response.unknown_state_filters.first() {
        bail!("unknown transaction state {}", unknown.as_str());
    }
    println!("{:<40} {:>12} STATE", "TRANSACTIONAL-ID", "PRODUCER-ID");
    for txn in &response.transaction_states {
        println!(
            "{:<40} {:>12} {}",
            txn.transactional_id.0.as_str(),
            txn.producer_id.0,
            txn.transaction_state.as_str()
        );
    }
    Ok(())
}

fn describe(bootstrap: &str, transactional_id: &str) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap)?;
    let coordinator = client.find_coordinator_of(transactional_id, 1)?;
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(StrBytes::from_string(transactional_id.to_string()))]);
    let response = client.call(&coordinator, DESCRIBE_TRANSACTIONS_VERSION, &request)?;
    let Some(txn) = response.transaction_states.first() else { bail!("the broker described no transaction") };
    if txn.error_code != 0 {
        bail!("cannot describe transactional id {transactional_id}: {}", error_name(txn.error_code));
    }
    println!(
        "transactional id {transactional_id}: state {}, producer id {} epoch {}, timeout {} ms{}",
        txn.transaction_state.as_str(),
        txn.producer_id.0,
        txn.producer_epoch,
        txn.transaction_timeout_ms,
        if txn.transaction_start_time_ms >= 0 {
            format!(", started at {} (epoch ms)", txn.transaction_start_time_ms)
        } else {
            String::new()
        }
    );
    if txn.topics.is_empty() {
        return Ok(());
    }
    let topics: Vec<TopicRequest> = txn
        .topics
        .iter()
        .map(|t| TopicRequest::default().with_name(t.topic.clone()).with_partition_indexes(t.partitions.clone()))
        .collect();
    let producers = client.call(
        &coordinator,
        DESCRIBE_PRODUCERS_VERSION,
        &DescribeProducersRequest::default().with_topics(topics),
    )?;
    println!("{:<40} {:>9} {:>18}", "TOPIC", "PARTITION", "TXN-START-OFFSET");
    for topic in &producers.topics {
        let TopicName(name) = &topic.name;
        for partition in &topic.partitions {
            let start = partition
                .active_producers
                .iter()
                .find(|p| p.producer_id == txn.producer_id)
                .filter(|p| p.current_txn_start_offset >= 0)
                .map_or("-".to_string(), |p| p.current_txn_start_offset.to_string());
            println!("{:<40} {:>9} {:>18}", name.as_str(), partition.partition_index, start);
        }
    }
    Ok(())
}
