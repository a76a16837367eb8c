//! The in-broker stream processor. Built in the stream-processing issue; empty until then.
