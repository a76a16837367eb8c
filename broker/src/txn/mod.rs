//! Transactions: the transaction coordinator (`coordinator`), each transactional id's state
//! machine (`state`), its records in `__transaction_state` (`record`), and the markers that
//! end a transaction in each of its partitions (`markers`).

pub mod coordinator;
mod leadership;
pub mod markers;
pub mod record;
pub mod state;

pub use coordinator::TransactionCoordinator;
pub use markers::{MarkerOutcome, MarkerWriter};
