//! The input decoder on any bytes (`wire::input::decode`, with the example catalog): never a
//! panic; the same bytes give the same verdict; the direct usage reader and serde agree; and
//! the outline that reads refused messages accepts exactly what serde_json accepts, wherever
//! serde_json's depth limit does not decide.
#![no_main]

use std::sync::OnceLock;

use creditflow::catalog::Catalog;
use creditflow::wire::{input, outline};
use libfuzzer_sys::fuzz_target;

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        creditflow::catalog::load::from_str(include_str!("../../config/catalog.toml"))
            .expect("the example catalog loads")
    })
}

fuzz_target!(|payload: &[u8]| {
    let catalog = catalog();
    let verdict = input::decode(payload, catalog);
    assert_eq!(
        verdict,
        input::decode(payload, catalog),
        "same bytes, same verdict"
    );
    assert_eq!(
        verdict,
        input::decode_without_direct_reader(payload, catalog),
        "the direct reader and serde disagree"
    );
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Err(error) if error.to_string().starts_with("recursion limit exceeded") => {}
        serde => assert_eq!(
            outline::read(payload).is_ok(),
            serde.is_ok(),
            "the outline and serde_json disagree on syntax"
        ),
    }
});
