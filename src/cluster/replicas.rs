//! `sluice cluster reassign | reassignments | elect-leaders | log-dirs | decommission`: moving
//! replicas and leaders on a running cluster, in the manner of `kafka-reassign-partitions.sh`,
//! `kafka-leader-election.sh` and `kafka-log-dirs.sh`, over the same Kafka APIs
//! (AlterPartitionReassignments, ListPartitionReassignments, ElectLeaders, DescribeLogDirs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    AlterPartitionReassignmentsRequest, ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::describe_log_dirs_request::DescribeLogDirsRequest;
use kafka_protocol::messages::elect_leaders_request::{ElectLeadersRequest, TopicPartitions};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsRequest;
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::client::{error_name, Client};

/// Admin requests may wait this long on the metadata quorum.
const ADMIN_TIMEOUT_MS: i32 = 30_000;

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Starts moving partitions to new replica sets (None: cancels the move in progress); prints
/// and fails on any partition the cluster refused.
fn alter(
    client: &mut Client,
    bootstrap: &str,
    moves: &BTreeMap<(String, i32), Option<Vec<i32>>>,
) -> anyhow::Result<()> {
    let mut topics: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
    for ((topic, partition), target) in moves {
        let replicas = target.as_ref().map(|t| t.iter().map(|r| BrokerId(*r)).collect());
        topics
            .entry(topic)
            .or_default()
            .push(ReassignablePartition::default().with_partition_index(*partition).with_replicas(replicas));
    }
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(ADMIN_TIMEOUT_MS)
        .with_allow_replication_factor_change(true)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    ReassignableTopic::default().with_name(topic_name(name)).with_partitions(partitions)
                })
                .collect(),
        );
    let response = client.call(bootstrap, 1, &request)?;
    if response.error_code != 0 {
        bail!("the reassignment was refused: {}", error_name(response.error_code));
    }
    let mut refused = Vec::new();
    for topic in &response.responses {
        for partition in &topic.partitions {
            if partition.error_code != 0 {
                let message = partition.error_message.as_ref().map_or(String::new(), |m| format!(": {m}"));
                refused.push(format!(
                    "{}-{}: {}{message}",
                    topic.name.0,
                    partition.partition_index,
                    error_name(partition.error_code)
                ));
            }
        }
    }
    if !refused.is_empty() {
        bail!("the cluster refused to move {}", refused.join("; "));
    }
    Ok(())
}

/// A partition move in progress: its replicas, those being added, those being removed.
type Move = [Vec<i32>; 3];

/// The moves in progress, by (topic, partition).
fn ongoing(client: &mut Client, bootstrap: &str) -> anyhow::Result<BTreeMap<(String, i32), Move>> {
    let request = ListPartitionReassignmentsRequest::default().with_timeout_ms(ADMIN_TIMEOUT_MS);
    let response = client.call(bootstrap, 0, &request)?;
    if response.error_code != 0 {
        bail!("listing reassignments failed: {}", error_name(response.error_code));
    }
    let ids = |ids: &[BrokerId]| ids.iter().map(|id| id.0).collect::<Vec<_>>();
    let mut moves = BTreeMap::new();
    for topic in response.topics {
        for p in topic.partitions {
            let entry = [ids(&p.replicas), ids(&p.adding_replicas), ids(&p.removing_replicas)];
            moves.insert((topic.name.0.to_string(), p.partition_index), entry);
        }
    }
    Ok(moves)
}

/// Waits (up to `limit`) until none of `moves` is in progress.
fn wait_done(client: &mut Client, bootstrap: &str, moves: &[(String, i32)], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<_> = ongoing(client, bootstrap)?.into_keys().filter(|k| moves.contains(k)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let names: Vec<String> = left.iter().map(|(t, p)| format!("{t}-{p}")).collect();
            bail!("still moving after {} s: {}", limit.as_secs(), names.join(", "));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn reassign(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    replicas: Option<&str>,
    wait: Option<u64>,
) -> anyhow::Result<()> {
    let target = match replicas {
        Some(list) => Some(
            list.split(',')
                .map(|id| id.trim().parse::<i32>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--replicas takes broker ids like 1,2,3, got \"{list}\""))?,
        ),
        None => None,
    };
    let mut client = Client::connect(bootstrap)?;
    let key = (topic.to_string(), partition);
    alter(&mut client, bootstrap, &[(key.clone(), target.clone())].into_iter().collect())?;
    match &target {
        Some(target) => println!("moving {topic}-{partition} to replicas {target:?}"),
        None => println!("cancelled the move of {topic}-{partition}"),
    }
    if let (Some(seconds), Some(_)) = (wait, &target) {
        wait_done(&mut client, bootstrap, &[key], Duration::from_secs(seconds))?;
        println!("{topic}-{partition} is on {target:?}", target = target.unwrap_or_default());
    }
    Ok(())
}

pub fn reassignments(bootstrap: &str) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap)?;
    let moves = ongoing(&mut client, bootstrap)?;
    println!("{:<30} {:<16} {:<10} REMOVING", "PARTITION", "REPLICAS", "ADDING");
    for ((topic, partition), [replicas, adding, removing]) in &moves {
        let list = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        println!(
            "{:<30} {:<16} {:<10} {}",
            format!("{topic}-{partition}"),
            list(replicas),
            list(adding),
            list(removing)
        );
    }
    println!("{} reassignment(s) in progress", moves.len());
    Ok(())
}

pub fn elect_leaders(
    bootstrap: &str,
    unclean: bool,
    topic: Option<&str>,
    partition: Option<i32>,
) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap)?;
    let partitions = match topic {
        None => None,
        Some(topic) => {
            let indexes = match partition {
                Some(p) => vec![p],
                None => {
                    let cluster = client.metadata(Some(&[topic.to_string()]))?;
                    let metadata = cluster.topics.get(topic).filter(|t| t.error_code == 0);
                    let metadata = metadata.with_context(|| format!("topic \"{topic}\" does not exist"))?;
                    metadata.leaders.keys().copied().collect()
                }
            };
            Some(vec![TopicPartitions::default().with_topic(topic_name(topic)).with_partitions(indexes)])
        }
    };
    let request = ElectLeadersRequest::default()
        .with_election_type(i8::from(unclean))
        .with_topic_partitions(partitions)
        .with_timeout_ms(ADMIN_TIMEOUT_MS);
    let response = client.call(bootstrap, 2, &request)?;
    if response.error_code != 0 {
        bail!("the election was refused: {}", error_name(response.error_code));
    }
    let (mut elected, mut not_needed) = (0, 0);
    for topic in &response.replica_election_results {
        for p in &topic.partition_result {
            match error_name(p.error_code).as_str() {
                "NONE" => {
                    elected += 1;
                    println!("{}-{}: elected", topic.topic.0, p.partition_id);
                }
                "ELECTION_NOT_NEEDED" => not_needed += 1,
                other => {
                    let message = p.error_message.as_ref().map_or(String::new(), |m| format!(": {m}"));
                    println!("{}-{}: {other}{message}", topic.topic.0, p.partition_id);
                }
            }
        }
    }
    println!("{elected} leader(s) elected, {not_needed} partition(s) needed none");
    Ok(())
}

pub fn log_dirs(bootstrap: &str) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap)?;
    let cluster = client.metadata(None)?;
    println!("{:<7} {:<30} {:>14} {:>10}", "BROKER", "PARTITION", "SIZE (bytes)", "LAG");
    for (id, address) in &cluster.brokers {
        let response = client.call(address, 4, &DescribeLogDirsRequest::default().with_topics(None))?;
        for dir in &response.results {
            for topic in &dir.topics {
                for p in &topic.partitions {
                    let name = format!("{}-{}", topic.name.0, p.partition_index);
                    println!("{id:<7} {name:<30} {:>14} {:>10}", p.partition_size, p.offset_lag);
                }
            }
            println!("{id:<7} {} ({} of {} bytes free)", dir.log_dir, dir.usable_bytes, dir.total_bytes);
        }
    }
    Ok(())
}

/// Moves every replica off `broker` (each to the live broker holding the fewest replicas
/// that does not have one of that partition yet), then, with `wait`, waits until the moves
/// are done and the broker holds nothing; it can then be stopped for good.
pub fn decommission(bootstrap: &str, broker: i32, wait: Option<u64>) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap)?;
    let cluster = client.metadata(None)?;
    if !cluster.brokers.contains_key(&broker) {
        bail!(
            "broker {broker} is not a live broker of this cluster ({:?})",
            cluster.brokers.keys().collect::<Vec<_>>()
        );
    }
    let others: Vec<i32> = cluster.brokers.keys().copied().filter(|id| *id != broker).collect();
    let mut load: BTreeMap<i32, usize> = others.iter().map(|id| (*id, 0)).collect();
    for topic in cluster.topics.values() {
        for (replicas, _) in topic.replicas.values() {
            for r in replicas {
                if let Some(count) = load.get_mut(r) {
                    *count += 1;
                }
            }
        }
    }
    let mut moves = BTreeMap::new();
    for (name, topic) in &cluster.topics {
        for (partition, (replicas, _)) in &topic.replicas {
            let Some(at) = replicas.iter().position(|r| *r == broker) else { continue };
            let candidate = others.iter().filter(|id| !replicas.contains(id)).min_by_key(|id| load[id]).copied();
            let Some(replacement) = candidate else {
                bail!(
                    "{name}-{partition} has {} replicas and there are not enough other brokers to move broker {broker}'s to",
                    replicas.len()
                );
            };
            *load.get_mut(&replacement).expect("a live broker") += 1;
            let mut target = replicas.clone();
            target[at] = replacement;
            moves.insert((name.clone(), *partition), Some(target));
        }
    }
    if moves.is_empty() {
        println!("broker {broker} holds no replicas");
        return Ok(());
    }
    alter(&mut client, bootstrap, &moves)?;
    println!("moving {} replica(s) off broker {broker}", moves.len());
    if let Some(seconds) = wait {
        let keys: Vec<(String, i32)> = moves.keys().cloned().collect();
        wait_done(&mut client, bootstrap, &keys, Duration::from_secs(seconds))?;
        println!("broker {broker} holds no replicas; it can be stopped");
    }
    Ok(())
}
