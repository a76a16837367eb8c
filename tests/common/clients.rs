//! librdkafka clients set up for these tests: admin (with IncrementalAlterConfigs through
//! the C API, which the rdkafka crate does not wrap), consumers for explicit assignment (no
//! consumer groups yet), and the metadata look-ups tests assert on. Every call is bounded by
//! `REQUEST_DEADLINE`.

use std::ffi::{CStr, CString};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, ConfigResource, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::TestBroker;

/// Bound on any single client call (admin request, metadata, watermarks).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on producing or consuming a whole data set.
pub const BULK_DEADLINE: Duration = Duration::from_secs(120);

pub fn client_config(broker: &TestBroker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", broker.bootstrap()).set("broker.address.family", "v4");
    config
}

pub fn admin(broker: &TestBroker) -> AdminClient<DefaultClientContext> {
    client_config(broker).create().expect("create an admin client")
}

pub fn admin_options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(REQUEST_DEADLINE))
}

/// A consumer for explicit assignment only: librdkafka wants a `group.id`, but nothing here
/// joins a group or commits.
pub fn consumer_config(broker: &TestBroker) -> ClientConfig {
    let mut config = client_config(broker);
    config
        .set("group.id", "sluice-e2e")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("check.crcs", "true");
    config
}

pub fn consumer(broker: &TestBroker) -> BaseConsumer {
    consumer_config(broker).create().expect("create a consumer")
}

/// Runs an admin future to completion, failing the test after `REQUEST_DEADLINE`.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
    runtime.block_on(async { tokio::time::timeout(REQUEST_DEADLINE, future).await }).expect("admin request timed out")
}

pub fn create_topic(admin: &AdminClient<DefaultClientContext>, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results = block_on(admin.create_topics([&topic], &admin_options())).expect("CreateTopics");
    assert_eq!(results, vec![Ok(name.to_string())], "create topic {name}");
}

/// The topic's partition count, or the error Metadata gives for it.
pub fn partition_count(client: &Client<impl ClientContext>, topic: &str) -> Result<usize, RDKafkaErrorCode> {
    let metadata = client.fetch_metadata(Some(topic), REQUEST_DEADLINE).expect("Metadata");
    let found = metadata.topics().iter().find(|t| t.name() == topic).expect("the topic is in the response");
    match found.error() {
        Some(code) => Err(code.into()),
        None => Ok(found.partitions().len()),
    }
}

/// Every topic the broker lists (a Metadata request for all topics never auto-creates).
pub fn all_topics(client: &Client<impl ClientContext>) -> Vec<String> {
    let metadata = client.fetch_metadata(None, REQUEST_DEADLINE).expect("Metadata for all topics");
    metadata.topics().iter().map(|t| t.name().to_string()).collect()
}

pub fn describe_topic_configs(admin: &AdminClient<DefaultClientContext>, topic: &str) -> ConfigResource {
    let mut results = block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options()))
        .expect("DescribeConfigs");
    assert_eq!(results.len(), 1);
    results.remove(0).unwrap_or_else(|code| panic!("describe configs of {topic}: {code}"))
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// An IncrementalAlterConfigs operation (KIP-339). The rdkafka crate wraps only the legacy
/// AlterConfigs (API key 33, which replaces every config at once and which Sluice does not
/// implement); librdkafka itself has IncrementalAlterConfigs, reached here through its C API.
#[derive(Clone, Copy)]
pub enum AlterOp {
    Set,
    Delete,
}

/// Whether an admin request changes anything or only checks that it could.
#[derive(Clone, Copy, PartialEq)]
pub enum AdminMode {
    Apply,
    ValidateOnly,
}

/// Applies `changes` to a topic's or broker's configs; the error is the resource's error code
/// and message.
pub fn incremental_alter_configs(
    admin: &AdminClient<DefaultClientContext>,
    resource: ResourceSpecifier<'_>,
    changes: &[(&str, AlterOp, Option<&str>)],
    mode: AdminMode,
) -> Result<(), (RDKafkaErrorCode, String)> {
    let rk = admin.inner().native_ptr();
    let (resource_type, name) = match resource {
        ResourceSpecifier::Topic(topic) => (rdsys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC, topic.to_string()),
        ResourceSpecifier::Broker(id) => (rdsys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_BROKER, id.to_string()),
        ResourceSpecifier::Group(group) => (rdsys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP, group.to_string()),
    };
    let name = CString::new(name).expect("resource name without NUL");
    let changes: Vec<(CString, AlterOp, Option<CString>)> = changes
        .iter()
        .map(|(key, op, value)| {
            (CString::new(*key).unwrap(), *op, value.map(|v| CString::new(v).expect("value without NUL")))
        })
        .collect();
    let message = |ptr: *const std::os::raw::c_char| {
        // SAFETY: librdkafka returns NUL-terminated strings that live as long as the object
        // they came from, which is still alive at every call site below.
        if ptr.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
        }
    };
    // SAFETY: `rk` is the admin client's live handle (the client outlives this function).
    // The resource and the options are ours until destroyed; IncrementalAlterConfigs copies
    // both. The queue is ours and destroyed after its one event, which is destroyed after the
    // result (and its strings) has been read. Every C string passed in outlives the call that
    // reads it, and `error_text` is as long as we say.
    unsafe {
        let resource = rdsys::rd_kafka_ConfigResource_new(resource_type, name.as_ptr());
        for (key, op, value) in &changes {
            let op = match op {
                AlterOp::Set => rdsys::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                AlterOp::Delete => rdsys::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
            };
            let value = value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
            let error = rdsys::rd_kafka_ConfigResource_add_incremental_config(resource, key.as_ptr(), op, value);
            if !error.is_null() {
                let text = message(rdsys::rd_kafka_error_string(error));
                rdsys::rd_kafka_error_destroy(error);
                panic!("librdkafka refused the change to {key:?}: {text}");
            }
        }
        let options =
            rdsys::rd_kafka_AdminOptions_new(rk, rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS);
        let mut error_text = [0 as std::os::raw::c_char; 256];
        // librdkafka gives up (and says so) before our own wait on the result does.
        let timeout_ms = REQUEST_DEADLINE.as_millis() as i32 - 5000;
        let set = rdsys::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            error_text.as_mut_ptr(),
            error_text.len(),
        );
        assert_eq!(set, rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "{}", message(error_text.as_ptr()));
        let set = rdsys::rd_kafka_AdminOptions_set_validate_only(
            options,
            i32::from(mode == AdminMode::ValidateOnly),
            error_text.as_mut_ptr(),
            error_text.len(),
        );
        assert_eq!(set, rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "{}", message(error_text.as_ptr()));
        let queue = rdsys::rd_kafka_queue_new(rk);
        let mut resources = [resource];
        rdsys::rd_kafka_IncrementalAlterConfigs(rk, resources.as_mut_ptr(), 1, options, queue);
        rdsys::rd_kafka_ConfigResource_destroy(resource);
        rdsys::rd_kafka_AdminOptions_destroy(options);
        let event = rdsys::rd_kafka_queue_poll(queue, REQUEST_DEADLINE.as_millis() as i32);
        assert!(!event.is_null(), "IncrementalAlterConfigs got no result within {REQUEST_DEADLINE:?}");
        let outcome = if rdsys::rd_kafka_event_error(event) != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Err((rdsys::rd_kafka_event_error(event).into(), message(rdsys::rd_kafka_event_error_string(event))))
        } else {
            let result = rdsys::rd_kafka_event_IncrementalAlterConfigs_result(event);
            let mut count = 0;
            let results = rdsys::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
            assert_eq!(count, 1, "one resource result");
            let resource = *results;
            match rdsys::rd_kafka_ConfigResource_error(resource) {
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
                code => Err((code.into(), message(rdsys::rd_kafka_ConfigResource_error_string(resource)))),
            }
        };
        rdsys::rd_kafka_event_destroy(event);
        rdsys::rd_kafka_queue_destroy(queue);
        outcome
    }
}

/// IncrementalAlterConfigs of one topic's configs, applied.
pub fn alter_topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    changes: &[(&str, AlterOp, Option<&str>)],
) -> Result<(), (RDKafkaErrorCode, String)> {
    incremental_alter_configs(admin, ResourceSpecifier::Topic(topic), changes, AdminMode::Apply)
}
