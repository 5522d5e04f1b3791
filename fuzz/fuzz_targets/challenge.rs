//! Fuzzes the `WWW-Authenticate` challenge parser and the
//! validation a challenge passes before it is kept (`parse_challenge`,
//! `Authenticator::accept`). The invariants are in `../checks.rs`, shared
//! with the stable smoke test the main suite runs.

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::challenge(data));
