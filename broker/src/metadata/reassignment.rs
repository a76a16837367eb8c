//! Partition reassignment (KIP-455) and leader election (KIP-460), as the metadata applies
//! them. A partition moving to a target replica set holds the old and the new replicas while
//! the new ones fetch from the leader; once every adding replica is in the ISR, the move
//! completes in the record that made it so: the replicas become the target, the ISR loses
//! the removed ones and, if the leader was removed, an in-sync target replica leads at the
//! next epoch. Brokers no longer among the replicas delete their copies.
//!
//! Invariants: the leader is a replica or none; the adding and removing replicas are
//! disjoint subsets of the replicas; a move never empties the ISR.

use kafka_protocol::error::ResponseError;

use super::{PartitionAssignment, RecordRejected, NO_LEADER};

impl PartitionAssignment {
    /// Whether a reassignment is in progress.
    pub fn reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// The replicas before the reassignment in progress (all of them if none is).
    pub fn original_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.adding_replicas.contains(r)).collect()
    }

    /// The replicas the reassignment in progress moves to (all of them if none is).
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.removing_replicas.contains(r)).collect()
    }
}

/// Starts moving `assignment` to `target` (replacing a move in progress: what it was adding
/// and the target drops is dropped again). `registered`: whether a broker id exists.
pub(crate) fn start(
    assignment: &mut PartitionAssignment,
    target: Vec<i32>,
    registered: impl Fn(i32) -> bool,
) -> Result<(), RecordRejected> {
    let invalid = |message: String| RecordRejected::new(ResponseError::InvalidReplicaAssignment, message);
    if target.is_empty() {
        return Err(invalid("the target replica set is empty".into()));
    }
    // The target comes from a client: checked in one pass, however long it is.
    let mut seen = std::collections::HashSet::with_capacity(target.len());
    if let Some(twice) = target.iter().find(|r| !seen.insert(**r)) {
        return Err(invalid(format!("the target replica set names broker {twice} twice")));
    }
    if let Some(unknown) = target.iter().find(|r| !registered(**r)) {
        return Err(invalid(format!("broker {unknown} is not registered")));
    }
    let original = assignment.original_replicas();
    let removing: Vec<i32> = original.iter().copied().filter(|r| !target.contains(r)).collect();
    let adding: Vec<i32> = target.iter().copied().filter(|r| !original.contains(r)).collect();
    let mut replicas = target;
    replicas.extend(&removing);
    assignment.replicas = replicas;
    assignment.adding_replicas = adding;
    assignment.removing_replicas = removing;
    settle(assignment);
    finish_if_done(assignment);
    Ok(())
}

/// Cancels the move in progress: back to the original replicas.
pub(crate) fn cancel(assignment: &mut PartitionAssignment) -> Result<(), RecordRejected> {
    if !assignment.reassigning() {
        return Err(RecordRejected::new(ResponseError::NoReassignmentInProgress, "no reassignment is in progress"));
    }
    assignment.replicas = assignment.original_replicas();
    assignment.adding_replicas.clear();
    assignment.removing_replicas.clear();
    settle(assignment);
    Ok(())
}

/// Completes the move in progress if every adding replica is in the ISR and some target
/// replica is.
pub(crate) fn finish_if_done(assignment: &mut PartitionAssignment) {
    if !assignment.reassigning() || !assignment.adding_replicas.iter().all(|r| assignment.isr.contains(r)) {
        return;
    }
    let target = assignment.target_replicas();
    if !assignment.isr.iter().any(|r| target.contains(r)) {
        return;
    }
    assignment.replicas = target;
    assignment.adding_replicas.clear();
    assignment.removing_replicas.clear();
    settle(assignment);
}

/// Keeps the ISR within the replicas and the leader among them: a leader that is no longer a
/// replica hands over to the first in-sync replica, at the next epoch.
fn settle(assignment: &mut PartitionAssignment) {
    let replicas = assignment.replicas.clone();
    assignment.isr.retain(|r| replicas.contains(r));
    if assignment.leader != NO_LEADER && !replicas.contains(&assignment.leader) {
        let successor = replicas.iter().copied().find(|r| assignment.isr.contains(r));
        assignment.leader = successor.unwrap_or(NO_LEADER);
        assignment.leader_epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(replicas: &[i32], isr: &[i32]) -> PartitionAssignment {
        PartitionAssignment { isr: isr.to_vec(), ..PartitionAssignment::new(replicas.to_vec()) }
    }

    #[test]
    fn a_move_holds_both_sets_until_the_new_replicas_are_in_sync() {
        let mut a = on(&[1, 2], &[1, 2]);
        start(&mut a, vec![2, 3], |_| true).unwrap();
        assert_eq!(
            (a.replicas.clone(), a.adding_replicas.clone(), a.removing_replicas.clone()),
            (vec![2, 3, 1], vec![3], vec![1])
        );
        assert_eq!((a.leader, a.leader_epoch), (1, 0), "the leader stays until the move completes");
        finish_if_done(&mut a);
        assert!(a.reassigning(), "3 is not in sync yet");
        a.isr = vec![1, 2, 3];
        finish_if_done(&mut a);
        assert_eq!((a.replicas.clone(), a.isr.clone()), (vec![2, 3], vec![2, 3]));
        assert_eq!((a.leader, a.leader_epoch), (2, 1), "the removed leader hands over at a new epoch");
        assert!(!a.reassigning());
    }

    #[test]
    fn removing_only_completes_at_once_and_a_cancel_restores_the_original() {
        let mut a = on(&[1, 2, 3], &[1, 2, 3]);
        start(&mut a, vec![1, 2], |_| true).unwrap();
        assert_eq!((a.replicas.clone(), a.isr.clone(), a.reassigning()), (vec![1, 2], vec![1, 2], false));

        let mut b = on(&[1, 2], &[1, 2]);
        start(&mut b, vec![3, 4], |_| true).unwrap();
        cancel(&mut b).unwrap();
        assert_eq!((b.replicas.clone(), b.leader, b.reassigning()), (vec![1, 2], 1, false));
        assert_eq!(cancel(&mut b).unwrap_err().code, ResponseError::NoReassignmentInProgress);
    }

    #[test]
    fn bad_targets_are_refused() {
        let mut a = on(&[1], &[1]);
        for target in [vec![], vec![2, 2], vec![9]] {
            let err = start(&mut a, target, |r| r < 5).unwrap_err();
            assert_eq!(err.code, ResponseError::InvalidReplicaAssignment);
        }
        assert_eq!(a, on(&[1], &[1]), "a refused move changes nothing");
    }
}
