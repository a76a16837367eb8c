//! The jobs a broker runs: their definitions, and each kind as a plan for the one runtime:
//! `aggregation` (a declared aggregation) and the built-in `clickstream`.

pub mod aggregation;
pub mod clickstream;
pub mod definition;
