//! The metadata publisher: the broker's side of the metadata log. The quorum's state machine
//! hands it every new image; a thread of its own applies the latest one to the broker's parts
//! (partitions opened, removed and given their leadership; topic defaults), so the quorum
//! never waits on the broker's file work. A change is done on this broker once [`Reconciled`]
//! has passed its offset, which is what a request that made the change waits for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::metadata::ClusterMetadata;

/// How far this broker has acted on the metadata log.
#[derive(Default)]
pub struct Reconciled {
    offset: Mutex<u64>,
    changed: Condvar,
}

impl Reconciled {
    pub fn new(offset: u64) -> Reconciled {
        Reconciled { offset: Mutex::new(offset), changed: Condvar::new() }
    }

    /// Waits until the broker has acted on the metadata up to `offset`, for up to `timeout`.
    pub fn wait(&self, offset: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut reached = self.offset.lock();
        while *reached < offset {
            if self.changed.wait_until(&mut reached, deadline).timed_out() {
                return *reached >= offset;
            }
        }
        true
    }

    pub fn offset(&self) -> u64 {
        *self.offset.lock()
    }

    fn advance(&self, offset: u64) {
        let mut reached = self.offset.lock();
        if offset > *reached {
            *reached = offset;
            self.changed.notify_all();
        }
    }
}

/// The sending half, for the state machine: never blocks.
pub fn channel() -> (Sender<Arc<ClusterMetadata>>, Receiver<Arc<ClusterMetadata>>) {
    std::sync::mpsc::channel()
}

pub struct MetadataPublisher {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl MetadataPublisher {
    /// Applies every image from `images` (the latest of those waiting, skipping older ones)
    /// with `apply`, then marks its offset reconciled.
    pub fn start(
        images: Receiver<Arc<ClusterMetadata>>,
        mut apply: impl FnMut(&Arc<ClusterMetadata>) + Send + 'static,
        reconciled: Arc<Reconciled>,
    ) -> MetadataPublisher {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metadata-publisher".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    let mut latest = match images.recv_timeout(Duration::from_millis(100)) {
                        Ok(image) => image,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    while let Ok(newer) = images.try_recv() {
                        latest = newer;
                    }
                    if latest.offset < reconciled.offset() {
                        continue;
                    }
                    apply(&latest);
                    reconciled.advance(latest.offset);
                }
            })
            .expect("spawning the metadata publisher");
        MetadataPublisher { stop, thread: Mutex::new(Some(thread)) }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.lock().take() {
            thread.join().ok();
        }
    }
}
