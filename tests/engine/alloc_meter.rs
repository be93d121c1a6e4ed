//! Counting the bytes each thread allocates, so that a test can bound the peak memory of a
//! load on its own thread (the loaders run on the caller's thread; tests on other threads
//! do not count). The allocator forwards to the system's and keeps two numbers per thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Meter;

thread_local! {
    /// Bytes allocated minus bytes freed on this thread (memory freed on another thread
    /// than the one that allocated it moves both threads' counts; tests only compare).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The most `LIVE` has been since the last [`measure`] started.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    // `try_with`: allocations during a thread's teardown are not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + bytes;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

#[expect(
    unsafe_code,
    reason = "a global allocator implements an unsafe trait; this one forwards every call to the system allocator unchanged"
)]
mod global {
    use super::*;

    unsafe impl GlobalAlloc for Meter {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            add(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    #[global_allocator]
    static METER: Meter = Meter;
}

/// Runs `f` on this thread and returns what it returned, the most bytes this thread held at
/// once during it, and the bytes it still holds after it (what `f` returned, mostly), both
/// counted from what it held before.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let out = f();
    let peak = PEAK.with(Cell::get) - before;
    let kept = LIVE.with(Cell::get) - before;
    (out, peak.max(0) as usize, kept.max(0) as usize)
}
