//! Jobs in end-to-end tests: the admin HTTP API (requests with deadlines, polling a job's
//! status until a condition holds) and reading a job's outputs as a `read_committed`
//! consumer would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use super::clients::{consumer_config, BULK_DEADLINE, REQUEST_DEADLINE};
use super::TestBroker;

/// One request to the admin API: (status code, JSON body or Null).
pub fn admin_request(broker: &TestBroker, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(broker.admin()).expect("connect to the admin API");
    stream.set_read_timeout(Some(REQUEST_DEADLINE)).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

pub fn job_status(broker: &TestBroker, name: &str) -> Value {
    let (code, status) = admin_request(broker, "GET", &format!("/v1/jobs/{name}"), "");
    assert_eq!(code, 200, "status of job {name}: {status}");
    status
}

/// Polls the job's status until `done` holds, failing after `limit`.
pub fn wait_for_job(
    broker: &TestBroker,
    name: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        // The broker may be restarting: a refused connection is retried.
        if let Ok(stream) = TcpStream::connect(broker.admin()) {
            drop(stream);
            let status = job_status(broker, name);
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "job {name}: {what} within {limit:?}; status: {status:#}");
        }
        assert!(Instant::now() < deadline, "job {name}: {what} within {limit:?} (admin API unreachable)");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every record of `topic` visible to read_committed, as (key, JSON value), read from the
/// beginning of each partition to its end.
pub fn read_committed_json(broker: &TestBroker, topic: &str, partitions: i32) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = consumer_config(broker)
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("create a consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end = vec![false; partitions as usize];
    let mut records = Vec::new();
    let deadline = Instant::now() + BULK_DEADLINE;
    while at_end.iter().any(|done| !done) {
        assert!(Instant::now() < deadline, "read {topic} to its end within {BULK_DEADLINE:?}");
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => at_end[partition as usize] = true,
            Some(Err(err)) => panic!("consume {topic}: {err}"),
            Some(Ok(message)) => {
                at_end[message.partition() as usize] = false;
                let key = String::from_utf8(message.key().unwrap_or_default().to_vec()).expect("UTF-8 key");
                let value = serde_json::from_slice(message.payload().unwrap_or_default()).expect("a JSON value");
                records.push((key, value));
            }
        }
    }
    records
}
