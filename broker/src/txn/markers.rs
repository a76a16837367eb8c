//! Transaction markers: the commit or abort marker the transaction coordinator writes to
//! each partition of a transaction, durably, before the transaction counts as complete. A
//! marker in `__consumer_offsets` also settles the offsets committed in the transaction, so
//! the group coordinator is told. (On a cluster, a partition led elsewhere gets its marker
//! through WriteTxnMarkers: this is where that goes.)

use std::sync::Arc;

use sluice_storage::MarkerKind;

use crate::group::GroupCoordinator;
use crate::internal_topics::OFFSETS_TOPIC;
use crate::partition::PendingAppend;
use crate::replica_manager::ReplicaManager;
use crate::topic_partition::TopicPartition;

/// What became of one marker.
#[derive(Debug)]
pub enum MarkerOutcome {
    Written,
    /// The partition's topic was deleted: nobody can read the transaction there any more.
    PartitionGone,
}

pub struct MarkerWriter {
    replicas: Arc<ReplicaManager>,
    groups: Arc<GroupCoordinator>,
}

impl MarkerWriter {
    pub(crate) fn new(replicas: Arc<ReplicaManager>, groups: Arc<GroupCoordinator>) -> MarkerWriter {
        MarkerWriter { replicas, groups }
    }

    /// Writes `producer_id`'s marker to `target` and waits until it is durable. Blocking.
    pub fn write(
        &self,
        target: &TopicPartition,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> sluice_storage::Result<MarkerOutcome> {
        let Some(partition) = self.replicas.partition(&target.topic, target.partition) else {
            return Ok(MarkerOutcome::PartitionGone);
        };
        let kind = if commit { MarkerKind::Commit } else { MarkerKind::Abort };
        let written =
            partition.append_marker(producer_id, producer_epoch, kind, now_ms).and_then(PendingAppend::wait_committed);
        match written {
            Ok(_) => {}
            // Deleted while the marker was written.
            Err(_) if self.replicas.partition(&target.topic, target.partition).is_none() => {
                return Ok(MarkerOutcome::PartitionGone)
            }
            Err(err) => return Err(err),
        }
        if target.topic == OFFSETS_TOPIC {
            self.groups.complete_txn_offsets(target.partition, producer_id, commit);
        }
        Ok(MarkerOutcome::Written)
    }
}
