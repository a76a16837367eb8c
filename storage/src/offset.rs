//! Offsets and leader epochs, the two numbers every log operation is about, as newtypes so
//! that swapping one for the other (or for a plain count) does not compile. Offsets are
//! dense: every record gets the next one.

/// A position in a partition's log. Offsets are dense: every record gets the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    pub fn value(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The epoch of the partition leader that appended a batch, stamped into each batch header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaderEpoch(pub i32);

impl LeaderEpoch {
    /// Kafka's "no epoch" value.
    pub const NONE: LeaderEpoch = LeaderEpoch(-1);
}
