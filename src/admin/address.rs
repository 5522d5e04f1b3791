//! The running mirror's admin address, left in the cache directory so
//! `pullthrough cache ls|stats` can ask the mirror that holds the cache.
//! The index lock, not this file, says whether a mirror runs: a file a
//! crash left behind is never believed on its own (the lock is free, so
//! the commands read the files) and the next start replaces it.
//!
//! The file also carries a token made at start that opens the admin API's
//! reads (never its actions), so the commands work whatever `admin_read`
//! says: whoever may read the cache directory may read what it holds
//! anyway. The file is the owner's only (mode 0600).

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "admin-address.json";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AdminAddress {
    /// The process that wrote it, to tell its file from a successor's.
    pub pid: u32,
    /// Base URL of the listener the admin API reads are asked on.
    pub url: String,
    /// Opens `/api/v1/` reads of this process, as `Authorization: Bearer`.
    pub read_token: String,
}

/// 32 random bytes, hex: a read token for this process's file.
pub fn new_read_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(FILE_NAME)
}

/// A URL this host can reach a listener bound to `addr` at: a wildcard
/// bind is asked on loopback.
pub fn local_url(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// Writes the file whole (temp file, rename), so a reader never sees half.
pub fn write(cache_dir: &Path, url: &str, read_token: &str) -> std::io::Result<AdminAddress> {
    use std::io::Write as _;
    let address = AdminAddress {
        pid: std::process::id(),
        url: url.to_owned(),
        read_token: read_token.to_owned(),
    };
    let text = serde_json::to_vec(&address).map_err(std::io::Error::other)?;
    let temp = cache_dir.join(format!(".{FILE_NAME}.{}", address.pid));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&temp)?.write_all(&text)?;
    std::fs::rename(&temp, path(cache_dir))?;
    Ok(address)
}

/// Removes the file if it is still `ours` (a successor may have replaced it).
pub fn remove(cache_dir: &Path, ours: &AdminAddress) {
    if read(cache_dir).as_ref() == Some(ours) {
        let _ = std::fs::remove_file(path(cache_dir));
    }
}

pub fn read(cache_dir: &Path) -> Option<AdminAddress> {
    let text = std::fs::read(path(cache_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_asked_on_loopback() {
        let any: SocketAddr = "0.0.0.0:9090".parse().expect("addr");
        assert_eq!(local_url(any, false), "http://127.0.0.1:9090");
        let any6: SocketAddr = "[::]:443".parse().expect("addr");
        assert_eq!(local_url(any6, true), "https://[::1]:443");
    }

    #[test]
    fn written_read_and_removed_only_by_its_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = write(dir.path(), "http://127.0.0.1:1", "t").expect("written");
        assert_eq!(read(dir.path()), Some(ours.clone()));
        let successor = AdminAddress {
            pid: ours.pid + 1,
            url: "http://127.0.0.1:2".into(),
            read_token: "u".into(),
        };
        std::fs::write(
            dir.path().join(FILE_NAME),
            serde_json::to_vec(&successor).expect("json"),
        )
        .expect("replaced");
        remove(dir.path(), &ours);
        assert_eq!(read(dir.path()), Some(successor.clone()), "not ours: kept");
        remove(dir.path(), &successor);
        assert_eq!(read(dir.path()), None);
    }
}
