//! Fuzzes `Accept` normalisation (`AcceptList::from_client`, its
//! `header()` and `class()`). The invariants are in `../checks.rs`, shared
//! with the stable smoke test the main suite runs.

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::accept(data));
