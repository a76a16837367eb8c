//! The test harness's fault-injecting proxy, in front of a real broker: requests pass
//! through; a cut direction holds bytes back (nothing is lost: healed, the answer arrives);
//! a delay slows every exchange; dropped connections end; refused ones never reach the
//! broker. Multi-node tests rely on exactly these, so they are tested here on their own.

#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::proxy::{Direction, FaultProxy};
use common::TestBroker;

/// An ApiVersions v0 request frame.
fn api_versions(correlation_id: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes()); // no client id
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// The correlation id of the next response, or None if the connection ended or nothing came
/// within `wait`.
fn response(stream: &mut TcpStream, wait: Duration) -> Option<i32> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

fn broker_addr(broker: &TestBroker) -> SocketAddr {
    broker.bootstrap().parse().unwrap()
}

#[test]
fn the_proxy_forwards_holds_back_delays_and_drops_as_told() {
    let broker = TestBroker::start(&[]);
    let proxy = FaultProxy::start(broker_addr(&broker));
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.write_all(&api_versions(1)).unwrap();
    assert_eq!(response(&mut stream, Duration::from_secs(10)), Some(1), "requests pass through");

    // A one-way cut: the request waits in the proxy, and arrives once healed.
    proxy.cut(Direction::ToTarget);
    stream.write_all(&api_versions(2)).unwrap();
    assert_eq!(response(&mut stream, Duration::from_millis(500)), None, "nothing crosses a cut link");
    proxy.heal();
    assert_eq!(response(&mut stream, Duration::from_secs(10)), Some(2), "held bytes are delivered on heal");

    // The other way: the broker answers, the answer waits.
    proxy.cut(Direction::FromTarget);
    stream.write_all(&api_versions(3)).unwrap();
    assert_eq!(response(&mut stream, Duration::from_millis(500)), None);
    proxy.heal();
    assert_eq!(response(&mut stream, Duration::from_secs(10)), Some(3));

    // A slow link: each exchange takes at least the delay, each way.
    proxy.delay(Duration::from_millis(200));
    let started = Instant::now();
    stream.write_all(&api_versions(4)).unwrap();
    assert_eq!(response(&mut stream, Duration::from_secs(10)), Some(4));
    assert!(started.elapsed() >= Duration::from_millis(400), "delayed both ways: {:?}", started.elapsed());
    proxy.heal();

    // Dropped: the live connection ends; a new one works.
    proxy.drop_connections();
    stream.write_all(&api_versions(5)).ok();
    assert_eq!(response(&mut stream, Duration::from_secs(10)), None, "a dropped connection ends");
    let mut again = TcpStream::connect(proxy.addr()).unwrap();
    again.write_all(&api_versions(6)).unwrap();
    assert_eq!(response(&mut again, Duration::from_secs(10)), Some(6));

    // Refused: a new connection is closed before it reaches the broker.
    proxy.refuse_new();
    let mut refused = TcpStream::connect(proxy.addr()).unwrap();
    refused.write_all(&api_versions(7)).ok();
    assert_eq!(response(&mut refused, Duration::from_secs(10)), None);
    proxy.heal();
    let mut last = TcpStream::connect(proxy.addr()).unwrap();
    last.write_all(&api_versions(8)).unwrap();
    assert_eq!(response(&mut last, Duration::from_secs(10)), Some(8));
}
