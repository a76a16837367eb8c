//! Leader elections the active controller makes on its own, besides failover
//! ([`crate::liveness`]): preferred leaders back where leadership has drifted
//! (`auto.leader.rebalance.enable`, every `leader.imbalance.check.interval.seconds`, for a
//! broker whose share of partitions it prefers but does not lead is over
//! `leader.imbalance.per.broker.percentage`), and unclean elections for leaderless partitions
//! of topics with `unclean.leader.election.enable=true`: the first live replica leads with
//! what it has, and records only the lost in-sync replicas had are gone.
//!
//! Each election is a leader change at the next epoch; a preferred leader must be a live
//! in-sync replica, so no preferred election loses anything.

use std::collections::BTreeMap;

use crate::metadata::{ClusterMetadata, MetadataRecord, PartitionAssignment, NO_LEADER};

/// One partition's change to `leader` at the next epoch, with `isr`.
fn change(
    topic_id: uuid::Uuid,
    partition: usize,
    a: &PartitionAssignment,
    leader: i32,
    isr: Vec<i32>,
) -> MetadataRecord {
    MetadataRecord::PartitionChange {
        topic_id,
        partition: partition as i32,
        leader,
        leader_epoch: a.leader_epoch + 1,
        isr,
    }
}

/// Preferred-leader elections for the brokers whose imbalance is over `percentage`.
pub fn preferred_elections(image: &ClusterMetadata, percentage: u32) -> Vec<MetadataRecord> {
    // Per preferred broker: partitions it is preferred for, and those it should get back.
    let mut preferred: BTreeMap<i32, (usize, Vec<MetadataRecord>)> = BTreeMap::new();
    for topic in image.topics() {
        for (index, a) in topic.assignments.iter().enumerate() {
            let Some(&first) = a.replicas.first() else { continue };
            let entry = preferred.entry(first).or_default();
            entry.0 += 1;
            let eligible = a.leader != first && a.isr.contains(&first) && image.is_live(first) && !a.reassigning();
            if eligible {
                entry.1.push(change(topic.id, index, a, first, a.isr.clone()));
            }
        }
    }
    preferred
        .into_values()
        .filter(|(total, moves)| !moves.is_empty() && moves.len() * 100 > *total * percentage as usize)
        .flat_map(|(_, moves)| moves)
        .collect()
}

/// Unclean elections for leaderless partitions whose topic allows them (`unclean` says,
/// from the topic's configs).
pub fn unclean_elections(
    image: &ClusterMetadata,
    unclean: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics().filter(|t| unclean(&t.configs)) {
        for (index, a) in topic.assignments.iter().enumerate() {
            if a.leader != NO_LEADER || a.isr.iter().any(|r| image.is_live(*r)) {
                continue;
            }
            if let Some(leader) = a.replicas.iter().copied().find(|r| image.is_live(*r)) {
                tracing::warn!(topic = %topic.name, partition = index, leader, "unclean leader election");
                records.push(change(topic.id, index, a, leader, vec![leader]));
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use uuid::Uuid;

    use super::*;
    use crate::metadata::Endpoint;

    fn image(
        assignments: Vec<PartitionAssignment>,
        live: &[i32],
        configs: BTreeMap<String, String>,
    ) -> ClusterMetadata {
        let mut records: Vec<MetadataRecord> = (1..=3)
            .flat_map(|node_id| {
                let incarnation = Uuid::new_v4();
                let endpoints = vec![Endpoint { listener: "PLAINTEXT".into(), host: "h".into(), port: node_id as u16 }];
                let mut records = vec![MetadataRecord::RegisterBroker { node_id, incarnation, endpoints }];
                if !live.contains(&node_id) {
                    records.push(MetadataRecord::FenceBroker { node_id, incarnation });
                }
                records
            })
            .collect();
        let partitions = assignments.len() as i32;
        records.push(MetadataRecord::Topic { name: "t".into(), id: Uuid::new_v4(), partitions, configs, assignments });
        ClusterMetadata::from_records(records)
    }

    fn led(replicas: &[i32], leader: i32, isr: &[i32]) -> PartitionAssignment {
        PartitionAssignment { leader, isr: isr.to_vec(), ..PartitionAssignment::new(replicas.to_vec()) }
    }

    fn leaders(records: &[MetadataRecord]) -> Vec<(i32, i32)> {
        records
            .iter()
            .filter_map(|r| match r {
                MetadataRecord::PartitionChange { partition, leader, .. } => Some((*partition, *leader)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn leadership_goes_back_to_live_in_sync_preferred_replicas_past_the_imbalance() {
        let image = image(
            vec![led(&[1, 2, 3], 2, &[1, 2, 3]), led(&[1, 2, 3], 1, &[1, 2, 3]), led(&[2, 1, 3], 1, &[1, 3])],
            &[1, 2, 3],
            BTreeMap::new(),
        );
        // Broker 1 leads one of its two preferred partitions (50 % off); broker 2 is not in
        // the ISR of the one it prefers, so that one stays.
        assert_eq!(leaders(&preferred_elections(&image, 10)), vec![(0, 1)]);
        assert!(preferred_elections(&image, 50).is_empty(), "50 % is not over 50 %");
    }

    #[test]
    fn an_unclean_election_only_where_the_topic_allows_it() {
        let assignments = vec![led(&[1, 2, 3], NO_LEADER, &[1]), led(&[1, 2, 3], 2, &[2, 3])];
        let allowed = |configs: &BTreeMap<String, String>| {
            configs.get("unclean.leader.election.enable").is_some_and(|v| v == "true")
        };
        let strict = image(assignments.clone(), &[2, 3], BTreeMap::new());
        assert!(unclean_elections(&strict, allowed).is_empty());
        let configs = [("unclean.leader.election.enable".to_string(), "true".to_string())].into();
        let loose = image(assignments, &[2, 3], configs);
        assert_eq!(leaders(&unclean_elections(&loose, allowed)), vec![(0, 2)]);
    }
}
