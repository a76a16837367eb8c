//! A broker opened in-process for unit tests, and helpers to feed it.

use std::sync::Arc;

use bytes::Bytes;
use sluice_broker::clock::{self, Clock};
use sluice_broker::{Broker, BrokerConfig, InProcessClient};
use sluice_storage::RecordBatchBuilder;

/// A broker in `dir` with one partition for each internal topic (quick to create).
pub(crate) fn open(dir: &std::path::Path) -> (Arc<Broker>, InProcessClient) {
    open_with_clock(dir, clock::system())
}

/// [`open`] with a clock of the test's.
pub(crate) fn open_with_clock(dir: &std::path::Path, clock: Arc<dyn Clock>) -> (Arc<Broker>, InProcessClient) {
    let mut config = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    config.apply("offsets.topic.num.partitions", "1").unwrap();
    config.apply("transaction.state.log.num.partitions", "1").unwrap();
    let broker = Broker::open_with_clock(config, clock).unwrap();
    let client = InProcessClient::new(broker.clone());
    (broker, client)
}

/// Produces `values` (no keys) to a partition as one batch, stamped with the broker's clock.
pub(crate) fn produce(client: &InProcessClient, topic: &str, partition: i32, values: &[Bytes]) {
    let now = client.clock().now_ms();
    let mut builder = RecordBatchBuilder::new(now);
    for value in values {
        builder.push(now, None, Some(value), &[]);
    }
    client.produce(topic, partition, &builder.build().unwrap()).unwrap();
}
