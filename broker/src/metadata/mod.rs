//! Cluster metadata: the records of the metadata log and the image they add up to: brokers
//! (their endpoints and whether they are fenced), topics (ids, partition counts, config
//! overrides) with each partition's replicas, leader, leader epoch and ISR, the dynamic broker
//! configs and producer-id blocks. The log is replicated by the metadata quorum
//! ([`crate::quorum`]); every node applies the same records in the same order, so `apply` is
//! deterministic and refuses a record that does not fit the image instead of half-applying it.
//! Invariants: names and ids are unique; partition counts only grow; a partition's leader
//! epoch only grows, and its leader is one of its replicas or none.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub(crate) mod reassignment;

pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";

/// A partition without a leader (every replica that could lead is fenced).
pub const NO_LEADER: i32 = -1;

/// Where a partition lives: its replicas in preference order (the first is the preferred
/// leader), the one leading it, the epoch of that leadership and the in-sync replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    pub replicas: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
    /// A reassignment in progress ([`reassignment`]): the replicas being added (they
    /// fetch, and must join the ISR) and those removed once they have; `replicas` holds both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<i32>,
}

impl PartitionAssignment {
    /// A new partition on `replicas`, led by the first of them at epoch 0.
    pub fn new(replicas: Vec<i32>) -> PartitionAssignment {
        let leader = replicas.first().copied().unwrap_or(NO_LEADER);
        PartitionAssignment {
            isr: replicas.clone(),
            replicas,
            leader,
            leader_epoch: 0,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }
}

/// One listener of a broker, as other brokers and clients are told to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub listener: String,
    pub host: String,
    pub port: u16,
}

/// A broker the controller knows: registered by its node id, one incarnation (process start)
/// at a time. A fenced broker leads nothing until it registers or heartbeats again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub node_id: i32,
    pub incarnation: Uuid,
    pub endpoints: Vec<Endpoint>,
    pub fenced: bool,
}

impl BrokerRegistration {
    /// The endpoint of `listener`, the listener a client or broker connected on.
    pub fn endpoint(&self, listener: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.listener == listener)
    }
}

/// One change to the cluster metadata, stored as JSON in the metadata log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataRecord {
    /// Names the cluster; only the first one counts.
    Cluster {
        cluster_id: String,
    },
    Topic {
        name: String,
        id: Uuid,
        partitions: i32,
        configs: BTreeMap<String, String>,
        /// One per partition.
        assignments: Vec<PartitionAssignment>,
    },
    /// Grows a topic to `partitions`; `assignments` are the new partitions'.
    Partitions {
        id: Uuid,
        partitions: i32,
        assignments: Vec<PartitionAssignment>,
    },
    /// Replaces the topic's config overrides as a whole.
    TopicConfigs {
        id: Uuid,
        configs: BTreeMap<String, String>,
    },
    RemoveTopic {
        id: Uuid,
    },
    /// Replaces the dynamic broker configs (IncrementalAlterConfigs on the broker) as a whole.
    BrokerConfigs {
        configs: BTreeMap<String, String>,
    },
    /// Producer ids below `next` may have been handed out: after a restart, allocation
    /// continues from here, so no id is ever given to two producers.
    ProducerIds {
        next: i64,
    },
    /// Reserves the producer ids from `from` (which must be the first unreserved one, so two
    /// brokers reserving at once never get the same block) up to `next`.
    ReserveProducerIds {
        from: i64,
        next: i64,
    },
    /// A broker process started (a new incarnation) and is reachable at `endpoints`.
    RegisterBroker {
        node_id: i32,
        incarnation: Uuid,
        endpoints: Vec<Endpoint>,
    },
    /// The broker stopped heartbeating (or is shutting down): it is fenced until it is back.
    FenceBroker {
        node_id: i32,
        incarnation: Uuid,
    },
    /// The broker heartbeats again in the same incarnation.
    UnfenceBroker {
        node_id: i32,
        incarnation: Uuid,
    },
    /// Moves a partition to the `target` replicas (KIP-455); None cancels the move in progress.
    ReassignPartition {
        topic_id: Uuid,
        partition: i32,
        target: Option<Vec<i32>>,
    },
    /// A partition's leadership or ISR changed; the epoch grows with every leader change.
    PartitionChange {
        topic_id: Uuid,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        isr: Vec<i32>,
    },
}

/// A record that does not fit the image: the Kafka error and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRejected {
    pub code: ResponseError,
    pub message: String,
}

impl RecordRejected {
    pub(crate) fn new(code: ResponseError, message: impl Into<String>) -> RecordRejected {
        RecordRejected { code, message: message.into() }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicMetadata {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
    /// One per partition, by index.
    pub assignments: Vec<PartitionAssignment>,
}

impl TopicMetadata {
    pub fn assignment(&self, partition: i32) -> Option<&PartitionAssignment> {
        usize::try_from(partition).ok().and_then(|i| self.assignments.get(i))
    }
}

/// The metadata state the log's records add up to.
#[derive(Clone, Debug, Default)]
pub struct ClusterMetadata {
    pub cluster_id: String,
    /// Broker configs set at run time; they override the config file and flags.
    pub broker_configs: BTreeMap<String, String>,
    topics: BTreeMap<String, Arc<TopicMetadata>>,
    names_by_id: HashMap<Uuid, String>,
    /// The first producer id never handed out.
    pub producer_ids_next: i64,
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    /// The metadata log offset this image is as of (the last record applied; 0 before any).
    pub offset: u64,
}

impl ClusterMetadata {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMetadata>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicMetadata>> {
        self.names_by_id.get(id).and_then(|name| self.topics.get(name))
    }

    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicMetadata>> {
        self.topics.values()
    }

    /// Brokers that may lead partitions: registered and not fenced.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    pub fn is_live(&self, node_id: i32) -> bool {
        self.brokers.get(&node_id).is_some_and(|b| !b.fenced)
    }

    /// State as if these records had been replayed (for tests of code that reads metadata).
    #[cfg(test)]
    pub fn from_records(records: Vec<MetadataRecord>) -> ClusterMetadata {
        let mut metadata = ClusterMetadata::default();
        metadata.apply_all(&records).expect("consistent test records");
        metadata
    }

    /// Applies every record of one proposal, or none of them.
    pub fn apply_all(&mut self, records: &[MetadataRecord]) -> Result<(), RecordRejected> {
        let mut next = self.clone();
        for record in records {
            next.apply(record.clone())?;
        }
        *self = next;
        Ok(())
    }

    fn topic_mut(&mut self, id: &Uuid) -> Result<&mut TopicMetadata, RecordRejected> {
        let unknown = || RecordRejected::new(ResponseError::UnknownTopicId, format!("no topic has id {id}"));
        let name = self.names_by_id.get(id).ok_or_else(unknown)?;
        let topic = self.topics.get_mut(name).ok_or_else(unknown)?;
        Ok(Arc::make_mut(topic))
    }

    /// A partition's assignment to change, with its topic's name for messages.
    fn assignment_mut(
        &mut self,
        topic_id: &Uuid,
        partition: i32,
    ) -> Result<(String, &mut PartitionAssignment), RecordRejected> {
        let topic = self.topic_mut(topic_id)?;
        let name = topic.name.clone();
        let missing = || {
            RecordRejected::new(ResponseError::UnknownTopicOrPartition, format!("{name} has no partition {partition}"))
        };
        let assignment = usize::try_from(partition).ok().and_then(|i| topic.assignments.get_mut(i));
        match assignment {
            Some(assignment) => Ok((name, assignment)),
            None => Err(missing()),
        }
    }

    fn apply(&mut self, record: MetadataRecord) -> Result<(), RecordRejected> {
        match record {
            MetadataRecord::Cluster { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id;
                }
            }
            MetadataRecord::Topic { name, id, partitions, configs, assignments } => {
                if self.topics.contains_key(&name) {
                    return Err(RecordRejected::new(
                        ResponseError::TopicAlreadyExists,
                        format!("topic \"{name}\" already exists"),
                    ));
                }
                if assignments.len() != partitions as usize {
                    return Err(RecordRejected::new(ResponseError::InvalidRequest, "one assignment per partition"));
                }
                self.names_by_id.insert(id, name.clone());
                let topic = TopicMetadata { name: name.clone(), id, partitions, configs, assignments };
                self.topics.insert(name, Arc::new(topic));
            }
            MetadataRecord::Partitions { id, partitions, assignments } => {
                let topic = self.topic_mut(&id)?;
                if partitions <= topic.partitions || assignments.len() != (partitions - topic.partitions) as usize {
                    return Err(RecordRejected::new(
                        ResponseError::InvalidPartitions,
                        format!(
                            "topic \"{}\" has {} partitions, not fewer than {partitions}",
                            topic.name, topic.partitions
                        ),
                    ));
                }
                topic.partitions = partitions;
                topic.assignments.extend(assignments);
            }
            MetadataRecord::TopicConfigs { id, configs } => self.topic_mut(&id)?.configs = configs,
            MetadataRecord::RemoveTopic { id } => {
                let name = self.names_by_id.remove(&id).ok_or_else(|| {
                    RecordRejected::new(ResponseError::UnknownTopicId, format!("no topic has id {id}"))
                })?;
                self.topics.remove(&name);
            }
            MetadataRecord::BrokerConfigs { configs } => self.broker_configs = configs,
            MetadataRecord::ProducerIds { next } => {
                if next < self.producer_ids_next {
                    return Err(RecordRejected::new(
                        ResponseError::UnknownServerError,
                        format!("producer ids would go back from {} to {next}", self.producer_ids_next),
                    ));
                }
                self.producer_ids_next = next;
            }
            MetadataRecord::ReserveProducerIds { from, next } => {
                if from != self.producer_ids_next || next <= from {
                    return Err(RecordRejected::new(
                        ResponseError::ConcurrentTransactions,
                        format!(
                            "producer ids from {} are the next to reserve, not from {from}",
                            self.producer_ids_next
                        ),
                    ));
                }
                self.producer_ids_next = next;
            }
            MetadataRecord::RegisterBroker { node_id, incarnation, endpoints } => {
                self.brokers.insert(node_id, BrokerRegistration { node_id, incarnation, endpoints, fenced: false });
            }
            MetadataRecord::FenceBroker { node_id, incarnation }
            | MetadataRecord::UnfenceBroker { node_id, incarnation } => {
                let fenced = matches!(record, MetadataRecord::FenceBroker { .. });
                let broker =
                    self.brokers.get_mut(&node_id).filter(|b| b.incarnation == incarnation).ok_or_else(|| {
                        RecordRejected::new(
                            ResponseError::StaleBrokerEpoch,
                            format!("broker {node_id} registered again"),
                        )
                    })?;
                broker.fenced = fenced;
            }
            MetadataRecord::PartitionChange { topic_id, partition, leader, leader_epoch, isr } => {
                let live: Vec<i32> = isr.iter().copied().filter(|id| self.is_live(*id)).collect();
                let (name, assignment) = self.assignment_mut(&topic_id, partition)?;
                if leader_epoch < assignment.leader_epoch
                    || (leader_epoch == assignment.leader_epoch && leader != assignment.leader)
                {
                    return Err(RecordRejected::new(
                        ResponseError::FencedLeaderEpoch,
                        format!(
                            "{name}-{partition} is at leader epoch {}, not {leader_epoch}",
                            assignment.leader_epoch
                        ),
                    ));
                }
                if leader != NO_LEADER && !assignment.replicas.contains(&leader) {
                    return Err(RecordRejected::new(
                        ResponseError::InvalidReplicaAssignment,
                        format!("broker {leader} is not a replica of {name}-{partition}"),
                    ));
                }
                // A fenced broker (KIP-841) may fetch, but joins no ISR until it is back.
                if let Some(fenced) = isr.iter().find(|id| !assignment.isr.contains(id) && !live.contains(id)) {
                    return Err(RecordRejected::new(
                        ResponseError::IneligibleReplica,
                        format!("broker {fenced} is fenced and cannot join the ISR of {name}-{partition}"),
                    ));
                }
                assignment.leader = leader;
                assignment.leader_epoch = leader_epoch;
                assignment.isr = isr;
                reassignment::finish_if_done(assignment);
            }
            MetadataRecord::ReassignPartition { topic_id, partition, target } => {
                let registered: Vec<i32> = self.brokers.keys().copied().collect();
                let (_, assignment) = self.assignment_mut(&topic_id, partition)?;
                // Checked on a copy, so that a refused move leaves the image as it was.
                let mut moved = assignment.clone();
                match target {
                    Some(target) => reassignment::start(&mut moved, target, |r| registered.contains(&r))?,
                    None => reassignment::cancel(&mut moved)?,
                }
                *assignment = moved;
            }
        }
        Ok(())
    }

    /// Records that rebuild this image from nothing: what a metadata snapshot holds.
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        if !self.cluster_id.is_empty() {
            records.push(MetadataRecord::Cluster { cluster_id: self.cluster_id.clone() });
        }
        if !self.broker_configs.is_empty() {
            records.push(MetadataRecord::BrokerConfigs { configs: self.broker_configs.clone() });
        }
        if self.producer_ids_next > 0 {
            records.push(MetadataRecord::ProducerIds { next: self.producer_ids_next });
        }
        for broker in self.brokers.values() {
            let (node_id, incarnation) = (broker.node_id, broker.incarnation);
            records.push(MetadataRecord::RegisterBroker { node_id, incarnation, endpoints: broker.endpoints.clone() });
            if broker.fenced {
                records.push(MetadataRecord::FenceBroker { node_id, incarnation });
            }
        }
        for topic in self.topics.values() {
            records.push(MetadataRecord::Topic {
                name: topic.name.clone(),
                id: topic.id,
                partitions: topic.partitions,
                configs: topic.configs.clone(),
                assignments: topic.assignments.clone(),
            });
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, id: Uuid, partitions: i32) -> MetadataRecord {
        MetadataRecord::Topic {
            name: name.into(),
            id,
            partitions,
            configs: BTreeMap::new(),
            assignments: (0..partitions).map(|_| PartitionAssignment::new(vec![1])).collect(),
        }
    }

    #[test]
    fn a_proposal_that_does_not_apply_changes_nothing() {
        let id = Uuid::new_v4();
        let mut metadata = ClusterMetadata::from_records(vec![topic("a", id, 1)]);
        let err = metadata.apply_all(&[topic("b", Uuid::new_v4(), 1), topic("a", Uuid::new_v4(), 1)]).unwrap_err();
        assert_eq!(err.code, ResponseError::TopicAlreadyExists);
        assert!(metadata.topic("b").is_none(), "half a proposal was applied");
        assert!(metadata.apply_all(&[MetadataRecord::RemoveTopic { id: Uuid::new_v4() }]).is_err());
    }

    #[test]
    fn leader_epochs_only_grow() {
        let id = Uuid::new_v4();
        let mut metadata = ClusterMetadata::from_records(vec![topic("a", id, 1)]);
        let change = |leader, leader_epoch| MetadataRecord::PartitionChange {
            topic_id: id,
            partition: 0,
            leader,
            leader_epoch,
            isr: vec![1],
        };
        metadata.apply_all(&[change(NO_LEADER, 1)]).unwrap();
        assert_eq!(metadata.apply_all(&[change(1, 1)]).unwrap_err().code, ResponseError::FencedLeaderEpoch);
        assert_eq!(metadata.apply_all(&[change(1, 0)]).unwrap_err().code, ResponseError::FencedLeaderEpoch);
        assert_eq!(metadata.apply_all(&[change(7, 2)]).unwrap_err().code, ResponseError::InvalidReplicaAssignment);
        metadata.apply_all(&[change(1, 2)]).unwrap();
        let assignment = metadata.topic("a").unwrap().assignments[0].clone();
        assert_eq!((assignment.leader, assignment.leader_epoch), (1, 2));
    }

    #[test]
    fn a_fenced_broker_joins_no_isr() {
        let (id, incarnation) = (Uuid::new_v4(), Uuid::new_v4());
        let endpoints = vec![Endpoint { listener: "PLAINTEXT".into(), host: "h".into(), port: 2 }];
        let assignments = vec![PartitionAssignment { isr: vec![1], ..PartitionAssignment::new(vec![1, 2]) }];
        let mut metadata = ClusterMetadata::from_records(vec![
            MetadataRecord::RegisterBroker { node_id: 2, incarnation, endpoints },
            MetadataRecord::FenceBroker { node_id: 2, incarnation },
            MetadataRecord::Topic { name: "a".into(), id, partitions: 1, configs: BTreeMap::new(), assignments },
        ]);
        let grow =
            MetadataRecord::PartitionChange { topic_id: id, partition: 0, leader: 1, leader_epoch: 0, isr: vec![1, 2] };
        assert_eq!(metadata.apply_all(std::slice::from_ref(&grow)).unwrap_err().code, ResponseError::IneligibleReplica);
        metadata.apply_all(&[MetadataRecord::UnfenceBroker { node_id: 2, incarnation }, grow]).unwrap();
        assert_eq!(metadata.topic("a").unwrap().assignments[0].isr, [1, 2]);
    }

    #[test]
    fn the_records_of_an_image_rebuild_it() {
        let id = Uuid::new_v4();
        let incarnation = Uuid::new_v4();
        let endpoints = vec![Endpoint { listener: "PLAINTEXT".into(), host: "h".into(), port: 1 }];
        let metadata = ClusterMetadata::from_records(vec![
            MetadataRecord::Cluster { cluster_id: "c".into() },
            MetadataRecord::RegisterBroker { node_id: 1, incarnation, endpoints },
            MetadataRecord::FenceBroker { node_id: 1, incarnation },
            topic("a", id, 2),
            MetadataRecord::ProducerIds { next: 3000 },
        ]);
        let rebuilt = ClusterMetadata::from_records(metadata.to_records());
        assert_eq!(rebuilt.cluster_id, "c");
        assert_eq!(rebuilt.brokers, metadata.brokers);
        assert_eq!(rebuilt.topic("a"), metadata.topic("a"));
        assert_eq!(rebuilt.producer_ids_next, 3000);
    }
}
