//! A real Ceph RADOS Gateway (Debian's `ceph-mon`, `ceph-osd`, `radosgw`),
//! started once per test run and shared by every suite that asks for it:
//! one monitor with auth off, one BlueStore OSD on a sparse file, RGW with
//! the beast frontend on a loopback port, and one S3 user.
//!
//! Started lazily by [`rgw`]; stopped by PID when the test binary exits
//! (an `atexit` hook), and by a small watchdog process should the binary
//! be killed outright. Tests share the daemons, not buckets: each test
//! makes its own with [`Rgw::bucket`].

use super::process::run_bounded;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "PTTESTACCESSKEY";
pub const SECRET_KEY: &str = "pt-test-secret-key-not-a-real-one";
pub const REGION: &str = "us-east-1";

/// Longest any one step of the bring-up may take.
const STEP_LIMIT: Duration = Duration::from_secs(60);
/// Longest a curl against RGW may take.
const CURL_LIMIT: Duration = Duration::from_secs(30);

/// The running gateway.
pub struct Rgw {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub port: u16,
    /// A file holding [`SECRET_KEY`], for `secret_access_key_file`.
    pub secret_file: PathBuf,
    /// How long the bring-up took.
    pub started_in: Duration,
    dir: PathBuf,
}

/// Everything started, for the exit hook: children, the watchdog, the dir.
struct Started {
    children: Vec<Child>,
    dir: Option<PathBuf>,
}

static STARTED: Mutex<Started> = Mutex::new(Started {
    children: Vec::new(),
    dir: None,
});
static RGW: OnceLock<Result<Rgw, String>> = OnceLock::new();

/// The shared gateway, started on first use. `None` (the test returns
/// early) when Ceph is not installed and `CI` is not `true`; under CI a
/// missing package fails the test, as does a gateway that cannot start.
pub fn rgw() -> Option<&'static Rgw> {
    for tool in [
        "ceph-mon",
        "ceph-osd",
        "radosgw",
        "radosgw-admin",
        "monmaptool",
        "ceph",
    ] {
        if !super::require_tool(tool) {
            return None;
        }
    }
    if !super::require_tool("curl") {
        return None;
    }
    match RGW.get_or_init(start) {
        Ok(rgw) => Some(rgw),
        Err(e) => panic!("cannot start Ceph RGW: {e}"),
    }
}

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

/// Stops what [`start`] started, by PID, and removes its directory.
extern "C" fn stop_all() {
    let Ok(mut started) = STARTED.lock() else {
        return;
    };
    for child in started.children.iter_mut().rev() {
        let _ = child.kill();
        let _ = child.wait();
    }
    started.children.clear();
    if let Some(dir) = started.dir.take() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn keep(child: Child) -> u32 {
    let pid = child.id();
    if let Ok(mut started) = STARTED.lock() {
        started.children.push(child);
    }
    pid
}

fn start() -> Result<Rgw, String> {
    let began = Instant::now();
    // SAFETY: registers a plain function with the C runtime; it touches
    // only our own statics and child processes.
    if unsafe { atexit(stop_all) } != 0 {
        return Err("atexit refused the stop hook".into());
    }
    // Short: admin sockets live under it and unix paths stay < 108 bytes.
    let dir = tempfile::Builder::new()
        .prefix("ptrgw")
        .tempdir_in("/tmp")
        .map_err(|e| format!("tempdir: {e}"))?
        .keep();
    if let Ok(mut started) = STARTED.lock() {
        started.dir = Some(dir.clone());
    }
    let result = bring_up(&dir);
    match result {
        Ok((port, secret_file)) => {
            let started_in = began.elapsed();
            eprintln!("Ceph RGW up on 127.0.0.1:{port} in {started_in:?}");
            Ok(Rgw {
                endpoint: format!("http://127.0.0.1:{port}"),
                port,
                secret_file,
                started_in,
                dir,
            })
        }
        Err(e) => {
            let logs = tail_logs(&dir.join("log"));
            stop_all();
            Err(format!("{e}\n{logs}"))
        }
    }
}

fn bring_up(dir: &Path) -> Result<(u16, PathBuf), String> {
    let (mon_port, rgw_port) = (super::free_port(), super::free_port());
    for sub in ["mon", "osd/0", "run", "log", "rgw"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
    }
    let fsid = uuid();
    let d = dir.display();
    let conf = format!(
        "[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
ms_bind_msgr1 = false
ms_bind_ipv6 = false
public_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
ms_client_mode = crc
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
run_dir = {d}/run
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
pid_file = {d}/run/$name.pid
keyring = /dev/null
[mon]
mon_data = {d}/mon/$name
[osd]
osd_data = {d}/osd/$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = 4294967296
bluestore_fsck_on_mount = false
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_memory_target = 536870912
[client.rgw]
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw_data = {d}/rgw
"
    );
    let conf_path = dir.join("ceph.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("write ceph.conf: {e}"))?;
    let conf_arg = conf_path.display().to_string();
    let ceph = |program: &str| {
        let mut c = Command::new(program);
        c.arg("-c").arg(&conf_arg);
        c
    };

    let monmap = dir.join("monmap");
    let mut c = Command::new("monmaptool");
    c.args(["--create", "--fsid", &fsid, "--addv", "a"])
        .arg(format!("[v2:127.0.0.1:{mon_port}]"))
        .arg(&monmap);
    step("monmaptool", c)?;
    let mut c = ceph("ceph-mon");
    c.args(["--mkfs", "-i", "a", "--monmap"]).arg(&monmap);
    step("ceph-mon --mkfs", c)?;
    let mut c = ceph("ceph-mon");
    c.args(["-i", "a", "-f"]);
    let mon = spawn("ceph-mon", c, dir)?;

    let me = std::process::id();
    let osd_uuid = uuid();
    let id = step_bounded("ceph osd new", {
        let mut c = ceph("ceph");
        c.args(["osd", "new", &osd_uuid]);
        c
    })?;
    let id = id.trim().to_string();
    if id != "0" {
        return Err(format!("ceph osd new gave id {id:?}, expected 0"));
    }
    let mut c = ceph("ceph-osd");
    c.args(["-i", "0", "--mkfs", "--osd-uuid", &osd_uuid]);
    step("ceph-osd --mkfs", c)?;
    let mut c = ceph("ceph");
    c.args([
        "osd",
        "crush",
        "add",
        "osd.0",
        "1.0",
        "host=localhost",
        "root=default",
    ]);
    step("ceph osd crush add", c)?;
    let mut c = ceph("ceph-osd");
    c.args(["-i", "0", "-f"]);
    let osd = spawn("ceph-osd", c, dir)?;
    let mut c = ceph("radosgw");
    c.args(["-n", "client.rgw", "-f"]);
    let gw = spawn("radosgw", c, dir)?;
    // The watchdog: should this binary die without running its exit
    // hook (SIGKILL), the daemons go with it. It polls once a second
    // (for a day at most) and ends when the test binary does.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "n=0; while kill -0 {me} 2>/dev/null && [ $n -lt 86400 ]; do sleep 1; n=$((n+1)); done; \
             kill -9 {gw} {osd} {mon} 2>/dev/null; rm -rf '{d}'"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    keep(c.spawn().map_err(|e| format!("spawn the watchdog: {e}"))?);

    let deadline = Instant::now() + STEP_LIMIT;
    let url = format!("http://127.0.0.1:{rgw_port}/");
    loop {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-m", "2", &url]);
        if run_bounded(c, CURL_LIMIT).status.success() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "radosgw did not answer on {url} within {STEP_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = ceph("radosgw-admin");
    c.args([
        "user",
        "create",
        "--uid",
        "pullthrough",
        "--display-name",
        "pullthrough tests",
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        SECRET_KEY,
    ]);
    step("radosgw-admin user create", c)?;
    let secret_file = dir.join("s3-secret");
    std::fs::write(&secret_file, format!("{SECRET_KEY}\n"))
        .map_err(|e| format!("write the secret file: {e}"))?;
    Ok((rgw_port, secret_file))
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "5d0b1a4e-7f0e-4d0a-9a53-0c1f3b8e2a77".into())
}

/// Runs one bring-up step to its end (bounded); an error carries its output.
fn step(what: &str, command: Command) -> Result<(), String> {
    step_bounded(what, command).map(drop)
}

fn step_bounded(what: &str, mut command: Command) -> Result<String, String> {
    // `timeout` rather than run_bounded's panic: a stuck step is an error
    // that names it, and the daemons are cleaned up.
    let mut c = Command::new("timeout");
    c.arg(STEP_LIMIT.as_secs().to_string())
        .arg(command.get_program())
        .args(command.get_args());
    command = c;
    let out = run_bounded(command, STEP_LIMIT + Duration::from_secs(5));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn spawn(what: &str, mut command: Command, dir: &Path) -> Result<u32, String> {
    let log = std::fs::File::create(dir.join("log").join(format!("{what}.out")))
        .map_err(|e| format!("log file for {what}: {e}"))?;
    let err = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {what}: {e}"))?;
    Ok(keep(child))
}

fn tail_logs(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten().take(20) {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(1500)..];
            out.push_str(&format!("--- {} ---\n{tail}\n", entry.path().display()));
        }
    }
    out
}

impl Rgw {
    /// A new, empty bucket of this test's own (names are made unique).
    pub fn bucket(&self, name: &str) -> String {
        let bucket = format!("{name}-{}", unique());
        let status = self.curl(&["-X", "PUT"], &bucket);
        assert_eq!(status, 200, "create bucket {bucket}");
        bucket
    }

    /// Overwrites (or creates) an object with `bytes`.
    pub fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let file = self.dir.join(format!("upload-{}", unique()));
        std::fs::write(&file, bytes).expect("write the upload");
        let path = file.display().to_string();
        let status = self.curl(&["-T", &path], &format!("{bucket}/{key}"));
        let _ = std::fs::remove_file(&file);
        assert_eq!(status, 200, "PUT {bucket}/{key}");
    }

    /// An object's bytes, or `None` on 404.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let file = self.dir.join(format!("download-{}", unique()));
        let path = file.display().to_string();
        let status = self.curl(&["-o", &path], &format!("{bucket}/{key}"));
        let bytes = std::fs::read(&file).ok();
        let _ = std::fs::remove_file(&file);
        match status {
            200 => bytes,
            404 => None,
            other => panic!("GET {bucket}/{key}: HTTP {other}"),
        }
    }

    /// An object's ETag as the store reports it (`"<hex>-<parts>"` for a
    /// multipart upload).
    pub fn etag(&self, bucket: &str, key: &str) -> Option<String> {
        let file = self.dir.join(format!("head-{}", unique()));
        let path = file.display().to_string();
        let status = self.curl(&["-I", "-o", &path], &format!("{bucket}/{key}"));
        let head = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        (status == 200).then(|| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("etag").then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        })
    }

    /// Sets the bucket's lifecycle rules from an XML file; the status.
    pub fn put_lifecycle(&self, bucket: &str, file: &Path) -> u16 {
        let path = file.display().to_string();
        self.curl(&["-T", &path], &format!("{bucket}?lifecycle="))
    }

    /// The bucket's lifecycle rules as the store reports them.
    pub fn lifecycle(&self, bucket: &str) -> Option<String> {
        let file = self.dir.join(format!("lifecycle-{}", unique()));
        let path = file.display().to_string();
        let status = self.curl(&["-o", &path], &format!("{bucket}?lifecycle="));
        let xml = std::fs::read_to_string(&file).ok();
        let _ = std::fs::remove_file(&file);
        (status == 200).then_some(xml).flatten()
    }

    /// The keys in a bucket (first 1000), from a ListObjectsV2.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let file = self.dir.join(format!("list-{}", unique()));
        let path = file.display().to_string();
        let status = self.curl(&["-o", &path], &format!("{bucket}?list-type=2"));
        let xml = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        assert_eq!(status, 200, "list {bucket}: {xml}");
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    fn curl(&self, extra: &[&str], path: &str) -> u16 {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "20", "-w", "%{http_code}"])
            .args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
            .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(extra)
            .arg(format!("{}/{path}", self.endpoint));
        if !extra.contains(&"-o") {
            c.args(["-o", "/dev/null"]);
        }
        let out = run_bounded(c, CURL_LIMIT);
        let code = String::from_utf8_lossy(&out.stdout);
        code.trim().parse().unwrap_or(0)
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}
