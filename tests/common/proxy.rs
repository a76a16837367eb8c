//! The fault-injecting TCP proxy every multi-node test routes inter-broker and controller
//! traffic through: it forwards bytes both ways between its listener and one target, and on
//! command stalls a direction (a one-way or two-way network cut: bytes wait, none are lost,
//! as TCP over a partitioned link), delays every chunk, refuses new connections, or drops
//! every live one. Plain threads, bounded waits: each pump re-checks the faults every few
//! milliseconds and stops when the proxy is dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a stalled or idle pump looks at the faults again.
const POLL: Duration = Duration::from_millis(5);

/// Which way bytes flow, seen from the proxy's clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting side to the target.
    ToTarget,
    /// From the target back.
    FromTarget,
    Both,
}

#[derive(Default)]
struct Faults {
    stop: AtomicBool,
    stall_to_target: AtomicBool,
    stall_from_target: AtomicBool,
    refuse: AtomicBool,
    delay_ms: AtomicU64,
    /// Bumped to drop every connection open at that moment.
    drop_generation: AtomicU64,
}

pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on an ephemeral 127.0.0.1 port forwarding to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let faults = Arc::new(Faults::default());
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let (faults, threads) = (faults.clone(), threads.clone());
            std::thread::spawn(move || accept(listener, target, faults, threads))
        };
        FaultProxy { addr, faults, threads, acceptor: Some(acceptor) }
    }

    /// Where clients connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding in `direction` until [`FaultProxy::heal`]: bytes wait, connections
    /// stay open.
    pub fn cut(&self, direction: Direction) {
        if matches!(direction, Direction::ToTarget | Direction::Both) {
            self.faults.stall_to_target.store(true, Ordering::SeqCst);
        }
        if matches!(direction, Direction::FromTarget | Direction::Both) {
            self.faults.stall_from_target.store(true, Ordering::SeqCst);
        }
    }

    /// Undoes every cut, the delay and the refusal.
    pub fn heal(&self) {
        self.faults.stall_to_target.store(false, Ordering::SeqCst);
        self.faults.stall_from_target.store(false, Ordering::SeqCst);
        self.faults.refuse.store(false, Ordering::SeqCst);
        self.faults.delay_ms.store(0, Ordering::SeqCst);
    }

    /// Delays every chunk forwarded from now on (a slow link).
    pub fn delay(&self, delay: Duration) {
        self.faults.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// New connections are closed at once until [`FaultProxy::heal`].
    pub fn refuse_new(&self) {
        self.faults.refuse.store(true, Ordering::SeqCst);
    }

    /// Closes every connection open now (both sides see the connection end).
    pub fn drop_connections(&self) {
        self.faults.drop_generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.faults.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().ok();
        }
        for thread in self.threads.lock().unwrap().drain(..) {
            thread.join().ok();
        }
    }
}

fn accept(listener: TcpListener, target: SocketAddr, faults: Arc<Faults>, threads: Arc<Mutex<Vec<JoinHandle<()>>>>) {
    while !faults.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => continue,
        };
        if faults.refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else { continue };
        threads.lock().unwrap().retain(|pump| !pump.is_finished());
        let generation = faults.drop_generation.load(Ordering::SeqCst);
        for (from, to, stalled) in [
            (client.try_clone(), server.try_clone(), Direction::ToTarget),
            (server.try_clone(), client.try_clone(), Direction::FromTarget),
        ] {
            let (Ok(from), Ok(to)) = (from, to) else { continue };
            let faults = faults.clone();
            threads.lock().unwrap().push(std::thread::spawn(move || pump(from, to, stalled, generation, &faults)));
        }
    }
}

/// Copies `from` to `to` while the proxy runs, honouring the faults for its direction.
fn pump(mut from: TcpStream, mut to: TcpStream, direction: Direction, generation: u64, faults: &Faults) {
    from.set_read_timeout(Some(POLL)).ok();
    let stalled = || match direction {
        Direction::ToTarget => faults.stall_to_target.load(Ordering::SeqCst),
        _ => faults.stall_from_target.load(Ordering::SeqCst),
    };
    let alive = || !faults.stop.load(Ordering::SeqCst) && faults.drop_generation.load(Ordering::SeqCst) == generation;
    let mut buf = vec![0u8; 64 * 1024];
    while alive() {
        if stalled() {
            std::thread::sleep(POLL);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let delay = faults.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        // A cut that began while the chunk was read holds it back too.
        while stalled() && alive() {
            std::thread::sleep(POLL);
        }
        if !alive() || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    from.shutdown(Shutdown::Both).ok();
    to.shutdown(Shutdown::Both).ok();
}
