//! The offline commands (`pullthrough gc`, `pullthrough cache …`) run as
//! the binary, bounded in time.

use super::process::run_bounded;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `pullthrough ARGS` to completion (bounded).
pub fn pullthrough(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    command.args(args).env("RUST_LOG", "warn");
    run_bounded(command, Duration::from_secs(60))
}

/// Runs `pullthrough ARGS --json`, asserting success, and parses stdout.
pub fn pullthrough_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = pullthrough(&all);
    assert!(
        output.status.success(),
        "pullthrough {all:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "pullthrough {all:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
