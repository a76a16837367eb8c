//! Consumer groups: the group coordinator (`coordinator`), one group's state of either kind
//! (`state`: a classic group, `classic`, or a KIP-848 consumer group, `consumer`, with the
//! server-side `assignor`s), committed offsets (`offsets`, and `txn_offsets` for those
//! committed inside transactions), their records in `__consumer_offsets` (`record`), and
//! loading (`load`) and cleaning (`cleanup`) that topic.

pub mod assignor;
pub mod classic;
pub mod consumer;
pub mod coordinator;
mod load;
pub mod offsets;
pub mod record;
pub mod state;
mod txn_offsets;

pub use coordinator::{GroupCoordinator, MemberClaim, OffsetCommit};
pub use state::{Group, Membership};
