//! The Kafka broker. Built in the single-node broker issue; empty until then.
