//! The snapshot loader's decoding (`snapshot::decode_file`) on any bytes: never a panic and no
//! unbounded allocation. The first byte chooses what the rest is: even, a whole file (framing,
//! lengths, checksums); odd, a payload, framed with a valid header and checksums so that the
//! state decoder itself is reached (random bytes would almost never pass a CRC32C).
#![no_main]

use std::path::Path;

use creditflow::snapshot::{self, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = Path::new("fuzz.snap");
    if mode % 2 == 0 {
        let _ = snapshot::decode_file(path, rest);
        return;
    }
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
    let file = snapshot::encode(&header, rest).expect("a header encodes");
    let _ = snapshot::decode_file(path, &file);
});
