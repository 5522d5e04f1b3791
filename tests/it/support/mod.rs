//! Helpers shared by every suite: the pullthrough process, ports, hashing,
//! and the rule that a missing real component fails under CI.

#![allow(dead_code)]

pub mod client;
pub mod deploy;
pub mod docker;
pub mod hub;
pub mod mirror;
pub mod oci_layout;
pub mod process;
pub mod registry;

use sha2::{Digest as _, Sha256};
use std::net::TcpListener;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// `sha256:<hex>` of `bytes`, as registries name content.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether an external program is on PATH. Under `CI=true` a missing
/// program is a failure, never a silent skip: a skipped suite hides holes.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is required by this test and is missing (CI=true)");
        }
        eprintln!("skipping: {tool} not installed (run the README test command)");
    }
    found
}
