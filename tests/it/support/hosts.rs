//! Host names that resolve to loopback for as long as a test needs them: a
//! line in /etc/hosts (Go's resolver, which skopeo and dockerd use, does
//! not map `*.localhost` to loopback by itself), added and removed by a
//! guard. Tests that edit the file take turns.

use std::sync::{Mutex, MutexGuard};

/// Held by the one guard alive at a time, so two tests never rewrite the
/// file from stale copies of it.
static HOSTS_FILE: Mutex<()> = Mutex::new(());

/// `127.0.0.1 <names> # pullthrough test <pid> <n>` in /etc/hosts while it
/// lives; drop (also while unwinding from a panic) removes that line only.
pub struct HostsLine {
    line: String,
    _turn: MutexGuard<'static, ()>,
}

impl HostsLine {
    /// Adds the line; `None` when /etc/hosts cannot be written here.
    pub fn add(names: &[&str]) -> Option<HostsLine> {
        // A test that panicked while holding it left nothing behind (its
        // guard's drop ran): the file is fine to edit.
        let turn = HOSTS_FILE.lock().unwrap_or_else(|e| e.into_inner());
        let marker = format!("# pullthrough test {} {}", std::process::id(), names[0]);
        let line = format!("127.0.0.1 {} {marker}", names.join(" "));
        let mut text = std::fs::read_to_string("/etc/hosts").ok()?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        std::fs::write("/etc/hosts", text).ok()?;
        Some(HostsLine { line, _turn: turn })
    }

    /// Skips (or under `CI=true` fails) the calling test when /etc/hosts
    /// cannot be written.
    pub fn add_or_skip(names: &[&str]) -> Option<HostsLine> {
        let added = HostsLine::add(names);
        if added.is_none() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cannot add {names:?} to /etc/hosts (CI=true)");
            }
            eprintln!("skipping: cannot write /etc/hosts");
        }
        added
    }
}

impl Drop for HostsLine {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
            let kept: String = text
                .lines()
                .filter(|l| *l != self.line)
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = std::fs::write("/etc/hosts", kept);
        }
    }
}
