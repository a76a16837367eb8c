//! The in-broker stream processor (issue 6, in progress). What exists so far are its
//! event-time building blocks, each usable and tested on its own: watermarks with bounded
//! out-of-orderness and idle partitions (`watermark`), epoch-aligned tumbling and sliding
//! windows and merging session windows (`window`), and the window aggregates
//! (`aggregate`). Sources, operators, keyed state, the job runtime and exactly-once sinks
//! come next.

pub mod aggregate;
pub mod watermark;
pub mod window;
