//! Fuzzes the config file's TOML schema (`config::file::parse_text`). The
//! invariants are in `../checks.rs`, shared with the stable smoke test the
//! main suite runs.

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config(data));
