//! A bound on open segment handles (file descriptors and memory mappings) shared by every log
//! in a process, so that thousands of partitions do not mean thousands of open mappings.
//! Each segment owns a slot; opening a handle past the limit closes the least recently used
//! other one, closed segments before active ones. Readers keep a handle alive through its
//! `Arc` while they use it, so eviction never pulls a mapping out from under a read: it only
//! stops new users from finding it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::error::Result;

/// Where one segment's open handle (a `T`) lives while it is open.
pub(crate) struct HandleSlot<T> {
    handle: Mutex<Option<Arc<T>>>,
    last_used: AtomicU64,
    /// An active segment is appended to: reopening it costs every append, so closed
    /// segments are evicted first.
    active: AtomicBool,
}

impl<T> Default for HandleSlot<T> {
    fn default() -> Self {
        HandleSlot { handle: Mutex::new(None), last_used: AtomicU64::new(0), active: AtomicBool::new(false) }
    }
}

/// What the cache needs of a slot to count it and to pick and close a victim, whatever
/// handle type the slot holds.
trait Evictable: Send + Sync {
    fn is_open(&self) -> bool;
    /// Open, or busy (being opened or closed right now): not to be forgotten yet.
    fn may_be_open(&self) -> bool;
    /// Lower goes first: closed before active, then least recently used.
    fn eviction_order(&self) -> (bool, u64);
    /// Closes the handle unless the slot is busy.
    fn try_close(&self);
}

impl<T: Send + Sync> Evictable for HandleSlot<T> {
    fn is_open(&self) -> bool {
        self.handle.lock().is_some()
    }

    fn may_be_open(&self) -> bool {
        self.handle.try_lock().is_none_or(|handle| handle.is_some())
    }

    fn eviction_order(&self) -> (bool, u64) {
        (self.active.load(Ordering::Relaxed), self.last_used.load(Ordering::Relaxed))
    }

    fn try_close(&self) {
        if let Some(mut handle) = self.handle.try_lock() {
            handle.take();
        }
    }
}

pub struct HandleCache {
    max_open: usize,
    clock: AtomicU64,
    open: Mutex<Vec<Weak<dyn Evictable>>>,
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
        self.open.lock().iter().filter(|slot| slot.upgrade().is_some_and(|s| s.is_open())).count()
    }

    /// The slot's handle, opening it with `open` if it is closed.
    pub(crate) fn get_or_open<T: Send + Sync + 'static>(
        &self,
        slot: &Arc<HandleSlot<T>>,
        active: bool,
        open: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
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
    pub(crate) fn replace<T: Send + Sync + 'static>(&self, slot: &Arc<HandleSlot<T>>, handle: Arc<T>) {
        let was_open = slot.handle.lock().replace(handle).is_some();
        if !was_open {
            self.admit(slot);
        }
    }

    /// Closes the slot's handle now (the segment changed mode, or is being deleted).
    pub(crate) fn close<T>(&self, slot: &Arc<HandleSlot<T>>) {
        slot.handle.lock().take();
    }

    fn admit<T: Send + Sync + 'static>(&self, slot: &Arc<HandleSlot<T>>) {
        let is_slot = |other: &Arc<dyn Evictable>| std::ptr::addr_eq(Arc::as_ptr(other), Arc::as_ptr(slot));
        let mut open = self.open.lock();
        // Forget slots that were closed or whose segment is gone.
        open.retain(|weak| weak.upgrade().is_some_and(|s| !is_slot(&s) && s.may_be_open()));
        let weak: Weak<HandleSlot<T>> = Arc::downgrade(slot);
        open.push(weak);
        while open.len() > self.max_open {
            // Least recently used among the others, closed segments first; a slot busy being
            // opened is skipped.
            let victim = open
                .iter()
                .enumerate()
                .filter_map(|(i, weak)| weak.upgrade().map(|s| (i, s)))
                .filter(|(_, s)| !is_slot(s))
                .min_by_key(|(_, s)| s.eviction_order());
            let Some((index, victim)) = victim else { break };
            victim.try_close();
            open.swap_remove(index);
        }
    }
}
