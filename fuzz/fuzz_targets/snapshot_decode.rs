//! The snapshot loader's decoding (`snapshot::decode_file`, `decode_delta_file`) on any bytes:
//! never a panic and no unbounded allocation. The first byte chooses what the rest is: even, a
//! whole file (framing, lengths, checksums), read as a full file and as a delta; odd, a
//! payload, framed with a valid header and checksums so that the state decoder itself is
//! reached (random bytes would almost never pass a CRC32C): a full state for 1 (mod 4), a
//! delta's for 3.
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
        let _ = snapshot::decode_delta_file(path, rest);
        return;
    }
    let delta = mode % 4 == 3;
    let header = Header {
        partition: 0,
        partition_count: 1,
        applied_through: u64::from(delta),
        last_seq: 0,
        last_payload_hash: 0,
        output_seq_floor: 0,
        clock: None,
        fingerprints: Vec::new(),
        settings: Vec::new(),
        order: Default::default(),
        previous: delta.then_some(0),
    };
    let file = snapshot::encode(&header, rest).expect("a header encodes");
    if delta {
        let _ = snapshot::decode_delta_file(path, &file);
    } else {
        let _ = snapshot::decode_file(path, &file);
    }
});
