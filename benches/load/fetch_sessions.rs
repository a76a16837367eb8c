//! `fetch-sessions`: broker CPU per Fetch of many partitions, sessionless (every request names
//! every partition, as librdkafka does) and in an incremental session (KIP-227: requests name
//! only what moved, responses carry only what changed). Nothing is produced during the
//! measurement, so both measure the cost of asking: what a consumer or follower of many idle
//! partitions pays. Speaks the protocol directly (Fetch v12), since the harness's client has
//! no sessions. Broker CPU is read from /proc for the harness's own broker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use clap::Args;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

#[derive(Args, Clone)]
pub struct FetchSessionsArgs {
    #[arg(long, default_value_t = 1000)]
    partitions: i32,
    /// Fetches per mode.
    #[arg(long, default_value_t = 2000)]
    fetches: u32,
}

impl FetchSessionsArgs {
    pub fn partitions(&self) -> i32 {
        self.partitions
    }
}

const VERSION: i16 = 12;

/// Sends one request and reads its response; returns it with the response's size.
fn call(stream: &mut TcpStream, correlation_id: i32, request: &FetchRequest) -> (FetchResponse, usize) {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("fetch-sessions-bench")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, ApiKey::Fetch.request_header_version(VERSION)).expect("encode header");
    request.encode(&mut buf, VERSION).expect("encode fetch");
    let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    stream.write_all(&frame).expect("send fetch");
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("read response size");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).expect("read response");
    let len = body.len();
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(VERSION)).expect("response header");
    (FetchResponse::decode(&mut body, VERSION).expect("decode fetch response"), len)
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf only reads a system constant.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn full_request(topic: &str, partitions: i32, session_id: i32, epoch: i32) -> FetchRequest {
    let wanted = (0..partitions)
        .map(|p| FetchPartition::default().with_partition(p).with_partition_max_bytes(1 << 20))
        .collect();
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(50 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(wanted)])
}

pub fn run(bootstrap: &str, broker_pid: u32, topic: &str, args: &FetchSessionsArgs) {
    let mut stream = TcpStream::connect(bootstrap).expect("connect to the broker");
    stream.set_nodelay(true).ok();
    let (opened, _) = call(&mut stream, 0, &full_request(topic, args.partitions, 0, 0));
    assert_ne!(opened.session_id, 0, "the broker gave no session");
    let id = opened.session_id;
    let sessionless = full_request(topic, args.partitions, 0, -1);
    let (mut correlation, mut epoch) = (0, 0);
    // Rounds of each mode in turn, the best round of each kept: the broker's once-a-second
    // log upkeep lands in some rounds and not others.
    const ROUNDS: u32 = 10;
    let per_round = (args.fetches / ROUNDS).max(1);
    let mut best = [(f64::MAX, f64::MAX, 0usize); 2];
    for _ in 0..ROUNDS {
        for (mode, slot) in best.iter_mut().enumerate() {
            let (cpu, start) = (cpu_seconds(broker_pid), Instant::now());
            let mut bytes = 0;
            for _ in 0..per_round {
                correlation += 1;
                let request = if mode == 0 {
                    sessionless.clone()
                } else {
                    epoch += 1;
                    FetchRequest::default()
                        .with_max_wait_ms(0)
                        .with_max_bytes(50 << 20)
                        .with_session_id(id)
                        .with_session_epoch(epoch)
                };
                let (response, len) = call(&mut stream, correlation, &request);
                assert_eq!(response.error_code, 0, "fetch failed");
                bytes += len;
            }
            let cpu = (cpu_seconds(broker_pid) - cpu) / f64::from(per_round) * 1e6;
            let wall = start.elapsed().as_secs_f64() / f64::from(per_round) * 1e6;
            if cpu < slot.0 {
                *slot = (cpu, wall, bytes / per_round as usize);
            }
        }
    }
    let [(cpu_full, wall_full, bytes_full), (cpu_incr, wall_incr, bytes_incr)] = best;
    println!(
        "fetch-sessions partitions={} fetches={} -> sessionless: {cpu_full:.0} us broker CPU, {wall_full:.0} us round trip, {bytes_full} response bytes per fetch; incremental: {cpu_incr:.0} us broker CPU, {wall_incr:.0} us round trip, {bytes_incr} response bytes per fetch",
        args.partitions, args.fetches
    );
}
