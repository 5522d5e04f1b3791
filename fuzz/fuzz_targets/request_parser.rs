//! Fuzzes the request parser: paths (`parse_route`), repository names,
//! tags, references, digests and `Range` headers. The invariants are in
//! `../checks.rs`, shared with the stable smoke test the main suite runs.

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::request_parser(data));
