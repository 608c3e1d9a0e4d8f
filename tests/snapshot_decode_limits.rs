//! A snapshot file of a few bytes never makes the loader allocate gigabytes, whatever lengths
//! its payload claims (found by the fuzz target `snapshot_decode`, docs/FUZZING.md). A file
//! with valid checksums and a corrupt payload is refused as corrupt, so recovery falls back to
//! an older snapshot, instead of the process aborting on an allocation.
//!
//! This binary counts the largest single allocation through a global allocator of its own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use creditflow::snapshot::{self, Header, SnapshotError};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The fuzzer's input, less its first byte (the target's mode: a payload to frame).
const CRASHING_PAYLOAD: &[u8] = &[
    0x00, 0x01, 0x11, 0xfc, 0x00, 0x00, 0x00, 0xff, 0xf7, 0x0f, 0x2c, 0x80,
];

#[test]
fn a_corrupt_length_in_a_small_snapshot_allocates_no_gigabytes() {
    let header = Header {
        partition: 0,
        partition_count: 1,
        applied_through: 0,
        last_seq: 0,
        last_payload_hash: 0,
        output_seq_floor: 0,
        clock: None,
        fingerprints: Vec::new(),
        settings: Vec::new(),
        order: Default::default(),
        previous: None,
    };
    let file = snapshot::encode(&header, CRASHING_PAYLOAD).expect("a header encodes");
    LARGEST.store(0, Ordering::Relaxed);
    let result = snapshot::decode_file(Path::new("p00000.snap"), &file);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        matches!(result, Err(SnapshotError::Corrupt { .. })),
        "a corrupt payload is refused as corrupt"
    );
    assert!(
        largest <= 1 << 20,
        "decoding a {}-byte file allocated {largest} bytes at once",
        file.len()
    );
}

/// The same bytes as a delta's payload: refused as corrupt, no gigabytes either (a delta's
/// accounts, rings and timers are decoded with the same limits).
#[test]
fn a_corrupt_length_in_a_small_delta_allocates_no_gigabytes() {
    let header = Header {
        partition: 0,
        partition_count: 1,
        applied_through: 1,
        last_seq: 1,
        last_payload_hash: 0,
        output_seq_floor: 0,
        clock: None,
        fingerprints: Vec::new(),
        settings: Vec::new(),
        order: Default::default(),
        previous: Some(0),
    };
    for payload in [CRASHING_PAYLOAD, &[0xff; 64][..]] {
        let file = snapshot::encode(&header, payload).expect("a header encodes");
        LARGEST.store(0, Ordering::Relaxed);
        let result = snapshot::decode_delta_file(Path::new("p00000.delta"), &file);
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            matches!(result, Err(SnapshotError::Corrupt { .. })),
            "a corrupt delta is refused as corrupt"
        );
        assert!(
            largest <= 1 << 20,
            "decoding a delta allocated {largest} bytes at once"
        );
    }
}
