//! One transactional id's state machine, as Kafka's transaction coordinator runs it:
//!
//! ```text
//! Empty | CompleteCommit | CompleteAbort --AddPartitions/AddOffsets--> Ongoing
//! Ongoing --EndTxn(commit)--> PrepareCommit --markers written--> CompleteCommit
//! Ongoing --EndTxn(abort) | timeout | new InitProducerId--> PrepareAbort --markers--> CompleteAbort
//! ```
//!
//! Every transition is a method here that checks the producer id and epoch first. A
//! transaction that ends (or is fenced) by InitProducerId or a timeout gets a new epoch, so
//! the old producer instance is fenced.

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;

use crate::topic_partition::TopicPartition;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    /// The code in `__transaction_state` records.
    pub fn code(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_code(code: i8) -> Option<TxnState> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    fn is_preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence)
    }
}

/// What EndTxn has to do.
#[derive(Debug, PartialEq, Eq)]
pub enum EndAction {
    /// Write the markers, then complete.
    WriteMarkers,
    /// A retry of an EndTxn that already completed the same way.
    AlreadyDone,
}

#[derive(Clone, Debug)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    pub start_ms: i64,
    pub last_update_ms: i64,
    /// In memory only: the producer id and epoch a client-requested bump (KIP-360) moved
    /// away from, so that a retry of that request (its response lost) gets the same answer
    /// instead of being fenced. Cleared by any other fence.
    pub last_producer: Option<(i64, i16)>,
    /// In memory only: partitions whose marker for the current decision is written, so a
    /// retry after a failed marker does not write them again.
    pub markers_done: BTreeSet<TopicPartition>,
}

impl TxnMetadata {
    /// The caller is the current producer of this transactional id.
    pub fn check_producer(&self, producer_id: i64, producer_epoch: i16) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if producer_epoch < self.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if producer_epoch > self.producer_epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        Ok(())
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: the transaction is (or becomes) ongoing.
    pub fn add_partitions(
        &mut self,
        partitions: impl IntoIterator<Item = TopicPartition>,
        now_ms: i64,
    ) -> Result<(), ResponseError> {
        match self.state {
            state if state.is_preparing() => return Err(ResponseError::ConcurrentTransactions),
            TxnState::Dead => return Err(ResponseError::InvalidTxnState),
            TxnState::Ongoing => {}
            _ => {
                self.state = TxnState::Ongoing;
                self.start_ms = now_ms;
                self.partitions.clear();
            }
        }
        self.partitions.extend(partitions);
        self.last_update_ms = now_ms;
        Ok(())
    }

    /// EndTxn: an ongoing transaction prepares to commit or abort; a retry after it
    /// completed the same way is answered as done.
    pub fn prepare_end(&mut self, commit: bool, now_ms: i64) -> Result<EndAction, ResponseError> {
        match (self.state, commit) {
            (TxnState::Ongoing, true) => self.state = TxnState::PrepareCommit,
            (TxnState::Ongoing, false) => self.state = TxnState::PrepareAbort,
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => return Ok(EndAction::AlreadyDone),
            (state, _) if state.is_preparing() => return Err(ResponseError::ConcurrentTransactions),
            _ => return Err(ResponseError::InvalidTxnState),
        }
        self.last_update_ms = now_ms;
        Ok(EndAction::WriteMarkers)
    }

    /// Fencing (a new InitProducerId, or a timeout): a new epoch, and an ongoing transaction
    /// prepares to abort under it. Returns whether markers must be written.
    pub fn fence(&mut self, now_ms: i64) -> bool {
        self.producer_epoch = self.producer_epoch.saturating_add(1);
        self.last_update_ms = now_ms;
        if self.state == TxnState::Ongoing {
            self.state = TxnState::PrepareAbort;
            return true;
        }
        false
    }

    /// The markers are written: the transaction is complete.
    pub fn complete(&mut self, now_ms: i64) {
        self.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort | TxnState::PrepareEpochFence => TxnState::CompleteAbort,
            other => other,
        };
        self.partitions.clear();
        self.markers_done.clear();
        self.last_update_ms = now_ms;
    }

    pub fn is_preparing(&self) -> bool {
        self.state.is_preparing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn() -> TxnMetadata {
        TxnMetadata {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: 0,
            timeout_ms: 60_000,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: 0,
            last_update_ms: 0,
            last_producer: None,
            markers_done: BTreeSet::new(),
        }
    }

    #[test]
    fn a_transaction_goes_ongoing_prepares_and_completes() {
        let mut t = txn();
        assert_eq!(t.prepare_end(true, 1), Err(ResponseError::InvalidTxnState));
        t.add_partitions([TopicPartition::new("a", 0)], 2).unwrap();
        assert_eq!((t.state, t.start_ms), (TxnState::Ongoing, 2));
        t.add_partitions([TopicPartition::new("a", 1)], 3).unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.prepare_end(true, 4), Ok(EndAction::WriteMarkers));
        assert_eq!(t.add_partitions([TopicPartition::new("b", 0)], 5), Err(ResponseError::ConcurrentTransactions));
        t.complete(6);
        assert_eq!(t.state, TxnState::CompleteCommit);
        assert_eq!(t.prepare_end(true, 7), Ok(EndAction::AlreadyDone));
        assert_eq!(t.prepare_end(false, 7), Err(ResponseError::InvalidTxnState));
    }

    #[test]
    fn fencing_bumps_the_epoch_and_aborts_what_is_open() {
        let mut t = txn();
        t.add_partitions([TopicPartition::new("a", 0)], 1).unwrap();
        assert!(t.fence(2));
        assert_eq!((t.state, t.producer_epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(t.check_producer(7, 0), Err(ResponseError::ProducerFenced));
        assert_eq!(t.check_producer(8, 1), Err(ResponseError::InvalidProducerIdMapping));
        t.complete(3);
        assert!(!t.fence(4));
        assert_eq!((t.state, t.producer_epoch), (TxnState::CompleteAbort, 2));
    }
}
