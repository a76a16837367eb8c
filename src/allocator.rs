//! The global allocator: the system's, except that single allocations of 256 MiB or more are
//! reserved lazily (`MAP_NORESERVE`). The protocol decoder sizes vectors from element counts
//! read off the wire before decoding an element, so a 20-byte request claiming two billion
//! topics would otherwise abort the process; lazily reserved, it costs only address space and
//! decoding fails at the first missing element.

use std::alloc::{GlobalAlloc, Layout, System};

/// Above every legitimate single allocation's size but for a maximal request frame, which
/// behaves the same when lazily reserved: its pages are committed as they are written.
const LAZY_THRESHOLD: usize = 256 << 20;
const PAGE: usize = 4096;

pub struct LazyHugeAllocator;

fn is_lazy(layout: &Layout) -> bool {
    layout.size() >= LAZY_THRESHOLD && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}

// SAFETY: small allocations go to `System` unchanged. Lazy ones are page-aligned anonymous
// mappings (alignment <= 4096 is checked), released with `munmap` of the same size: `dealloc`
// and `realloc` receive the layout the block was allocated with, so `is_lazy` gives the same
// answer for a block at allocation and at release.
unsafe impl GlobalAlloc for LazyHugeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_lazy(&layout) {
            // SAFETY: see the impl comment.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_lazy(&layout) {
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_lazy(&layout) {
            // SAFETY: `ptr` came from `map` with this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` forms a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_lazy(&layout) && !is_lazy(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh block of the new layout; copy what both hold, free the old one.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_allocations_cost_no_memory_until_touched() {
        let allocator = LazyHugeAllocator;
        let layout = Layout::from_size_align(64 << 30, 8).unwrap();
        // SAFETY: the block is written within bounds and freed with its layout.
        unsafe {
            let ptr = allocator.alloc(layout);
            assert!(!ptr.is_null(), "a 64 GiB lazy reservation failed");
            *ptr = 1;
            *ptr.add((64 << 30) - 1) = 2;
            allocator.dealloc(ptr, layout);
        }
        let mut small = Vec::<u8>::with_capacity(1000);
        small.push(1);
        assert_eq!(small[0], 1);
    }
}
