//! A bound on open segment handles (file descriptors and memory mappings) shared by every log
//! in a process, so that thousands of partitions do not mean thousands of open mappings.
//! Each segment owns a slot; opening a handle past the limit closes the least recently used
//! other one. Readers keep a handle alive through its `Arc` while they use it, so eviction
//! never pulls a mapping out from under a read: it only stops new users from finding it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::error::Result;
use crate::segment::OpenSegment;

/// Where one segment's open handle lives while it is open.
#[derive(Default)]
pub(crate) struct HandleSlot {
    handle: Mutex<Option<Arc<OpenSegment>>>,
    last_used: AtomicU64,
    /// An active segment is appended to: reopening it costs every append, so closed
    /// segments are evicted first.
    active: AtomicBool,
}

pub struct HandleCache {
    max_open: usize,
    clock: AtomicU64,
    open: Mutex<Vec<Weak<HandleSlot>>>,
}

impl HandleCache {
    /// Each open segment holds three descriptors (log, offset index, time index) and three
    /// mappings; 1,024 handles stay well inside the default limit of 65,530 mappings.
    pub const DEFAULT_MAX_OPEN: usize = 1024;

    pub fn new(max_open: usize) -> Arc<HandleCache> {
        Arc::new(HandleCache { max_open: max_open.max(1), clock: AtomicU64::new(0), open: Mutex::new(Vec::new()) })
    }

    /// Number of slots currently holding an open handle.
    pub fn open_count(&self) -> usize {
        self.open.lock().iter().filter(|slot| slot.upgrade().is_some_and(|s| s.handle.lock().is_some())).count()
    }

    /// The slot's handle, opening it with `open` if it is closed.
    pub(crate) fn get_or_open(
        &self,
        slot: &Arc<HandleSlot>,
        active: bool,
        open: impl FnOnce() -> Result<OpenSegment>,
    ) -> Result<Arc<OpenSegment>> {
        slot.last_used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        slot.active.store(active, Ordering::Relaxed);
        let mut guard = slot.handle.lock();
        if let Some(handle) = guard.as_ref() {
            return Ok(handle.clone());
        }
        let handle = Arc::new(open()?);
        *guard = Some(handle.clone());
        drop(guard);
        self.admit(slot);
        Ok(handle)
    }

    /// Replaces the slot's handle (a remap to a larger length, or a changed file).
    pub(crate) fn replace(&self, slot: &Arc<HandleSlot>, handle: Arc<OpenSegment>) {
        let was_open = slot.handle.lock().replace(handle).is_some();
        if !was_open {
            self.admit(slot);
        }
    }

    /// Closes the slot's handle now (the segment changed mode, or is being deleted).
    pub(crate) fn close(&self, slot: &Arc<HandleSlot>) {
        slot.handle.lock().take();
    }

    fn admit(&self, slot: &Arc<HandleSlot>) {
        let mut open = self.open.lock();
        // Forget slots that were closed or whose segment is gone.
        open.retain(|weak| {
            weak.upgrade().is_some_and(|s| !Arc::ptr_eq(&s, slot) && s.handle.try_lock().is_none_or(|h| h.is_some()))
        });
        open.push(Arc::downgrade(slot));
        while open.len() > self.max_open {
            // Least recently used among the others, closed segments first; a slot busy being
            // opened is skipped.
            let victim = open
                .iter()
                .enumerate()
                .filter_map(|(i, weak)| weak.upgrade().map(|s| (i, s)))
                .filter(|(_, s)| !Arc::ptr_eq(s, slot))
                .min_by_key(|(_, s)| (s.active.load(Ordering::Relaxed), s.last_used.load(Ordering::Relaxed)));
            let Some((index, victim)) = victim else { break };
            if let Some(mut handle) = victim.handle.try_lock() {
                handle.take();
            }
            open.swap_remove(index);
        }
    }
}
