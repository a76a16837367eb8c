//! The operators jobs are composed of: event-time watermarks, window assignment, the keyed
//! windowed aggregation, aggregate functions, keyed process functions with timers, and the
//! keyed-state maps they keep their state in.

pub mod aggregate_functions;
pub mod state;
pub mod watermark;
pub mod window_assigner;
pub mod windowed_aggregate;
