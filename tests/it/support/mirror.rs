//! The one way a suite starts the mirror: [`Mirror::builder`], in-process on
//! port 0 by default, or as the real binary with [`MirrorBuilder::process`]
//! for signal, crash, log-output and exit-status tests.
//!
//! ```ignore
//! let mirror = Mirror::builder(&hub.url())
//!     .config("[[upstream]]\nurl = \"…\"\ntag_ttl = \"1s\"\n")
//!     .arg("--max-size", "1MiB")
//!     .timings(|t| t.breaker_open = Duration::from_millis(200))
//!     .start();
//! ```
//!
//! In-process, the server runs on a thread of its own with its own tokio
//! runtime (so sync tests and `#[tokio::test]`s start it alike); stopping
//! resolves its shutdown future and joins the thread, bounded. In process
//! mode the child is stopped by PID. Either way, when a `Mirror` is dropped
//! it is stopped and the cache's invariants are checked (see
//! [`check_cache`]) unless the test opted out with
//! [`MirrorBuilder::skip_invariants`].

use super::wait_until;
use pullthrough::config::{Config, Overrides, Timings};
use sha2::{Digest as _, Sha256};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait for the mirror to listen.
const START_LIMIT: Duration = Duration::from_secs(20);
/// Longest wait for downloads to end (tmp/ to empty) before a stop.
const IDLE_LIMIT: Duration = Duration::from_secs(10);
/// Longest a stop may take (drain included) before the server is abandoned.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// How to start a mirror; see the module documentation.
#[derive(Clone)]
pub struct MirrorBuilder {
    upstream: Option<String>,
    /// TOML written to a file of the mirror's own (`--config`).
    config_toml: Option<String>,
    /// A config file the test wrote itself (`--config`).
    config_path: Option<PathBuf>,
    /// CLI flags with values, in order.
    args: Vec<(String, String)>,
    cache_dir: Option<PathBuf>,
    timings: Option<Timings>,
    metrics_listener: bool,
    process: bool,
    env: Vec<(String, String)>,
    rust_log: String,
    invariants: bool,
}

impl MirrorBuilder {
    /// The mirror's config file holds `toml`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_string());
        self
    }

    /// The mirror reads this config file (one the test wrote and keeps).
    pub fn config_file(mut self, path: &Path) -> Self {
        self.config_path = Some(path.to_path_buf());
        self
    }

    /// A command-line flag with its value, e.g. `("--max-size", "1MiB")`.
    /// In-process mode takes the flags `Overrides` has (`--max-size`,
    /// `--metrics-listen`, `--tls-cert`, `--tls-key`, `--config`); others
    /// (`--log-format`) need [`MirrorBuilder::process`].
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        if flag == "--config" {
            self.config_path = Some(PathBuf::from(value));
        } else {
            self.args.push((flag.to_string(), value.to_string()));
        }
        self
    }

    /// Runs on (or restarts on) an existing cache directory.
    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_path_buf());
        self
    }

    /// Shortens internal waits (in-process only: the binary has no flag).
    pub fn timings(mut self, edit: impl FnOnce(&mut Timings)) -> Self {
        let mut timings = self.timings.take().unwrap_or_default();
        edit(&mut timings);
        self.timings = Some(timings);
        self
    }

    /// Also serves `/metrics` on a second listener, at `metrics_addr`.
    pub fn metrics_listener(mut self) -> Self {
        self.metrics_listener = true;
        self
    }

    /// Runs the real binary as a child process.
    pub fn process(mut self) -> Self {
        self.process = true;
        self
    }

    /// An environment variable for the child (process mode).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// `RUST_LOG` of the child (process mode); `warn` unless told.
    pub fn log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }

    /// No cache checks on drop. Say why at the call site: only a test that
    /// damages the cache on purpose may opt out.
    pub fn skip_invariants(mut self) -> Self {
        self.invariants = false;
        self
    }

    /// Starts the mirror and returns once it listens (bounded).
    pub fn start(self) -> Mirror {
        blocking(|| self.start_now())
    }

    fn start_now(self) -> Mirror {
        let root_dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let root = root_dir.path().to_path_buf();
        let cache_dir = self.cache_dir.clone().unwrap_or_else(|| root.join("cache"));
        let mut builder = self;
        if let Some(toml) = builder.config_toml.take() {
            let path = root.join("pullthrough.toml");
            std::fs::write(&path, toml).expect("write the mirror's config file");
            builder.config_path = Some(path);
        }
        builder.cache_dir = Some(cache_dir.clone());
        let running = builder.launch(&root);
        let (addr, metrics_addr) = (running.addr(), running.metrics_addr());
        Mirror {
            running,
            addr,
            metrics_addr,
            cache_dir,
            root,
            builder,
            crashed: false,
            _root_dir: root_dir,
        }
    }

    fn launch(&self, root: &Path) -> Running {
        if self.process {
            Running::Process(ChildMirror::spawn(self, root))
        } else {
            Running::InProcess(InProcess::start(self))
        }
    }

    fn overrides(&self) -> Overrides {
        let mut overrides = Overrides {
            cache_dir: self.cache_dir.clone(),
            upstream: self.upstream.clone(),
            ..Overrides::default()
        };
        for (flag, value) in &self.args {
            let value = Some(value.clone());
            match flag.as_str() {
                "--max-size" => overrides.max_size = value,
                "--metrics-listen" => overrides.metrics_listen = value,
                "--tls-cert" => overrides.tls_cert = value.map(PathBuf::from),
                "--tls-key" => overrides.tls_key = value.map(PathBuf::from),
                "--upstream" => overrides.upstream = value,
                "--storage" => overrides.storage = value,
                other => panic!(
                    "{other} is not a setting of the in-process mirror; use .process() for it"
                ),
            }
        }
        overrides
    }
}

/// A running mirror. Dropping it stops it and checks the cache.
pub struct Mirror {
    running: Running,
    pub addr: SocketAddr,
    /// The second, operations-only listener, when asked for.
    pub metrics_addr: Option<SocketAddr>,
    pub cache_dir: PathBuf,
    /// A fresh directory of the mirror's own: the child's working
    /// directory, and where the cache is unless the test named one.
    pub root: PathBuf,
    builder: MirrorBuilder,
    /// Killed on purpose: the cache may hold what a crash leaves.
    crashed: bool,
    _root_dir: Arc<tempfile::TempDir>,
}

impl Mirror {
    /// A mirror of `upstream` (the first upstream's URL, as `--upstream`).
    pub fn builder(upstream: &str) -> MirrorBuilder {
        MirrorBuilder {
            upstream: Some(upstream.to_string()),
            ..Mirror::from_config_only()
        }
    }

    /// A mirror whose upstreams all come from its config file.
    pub fn from_config_only() -> MirrorBuilder {
        MirrorBuilder {
            upstream: None,
            config_toml: None,
            config_path: None,
            args: Vec::new(),
            cache_dir: None,
            timings: None,
            metrics_listener: false,
            process: false,
            env: Vec::new(),
            rust_log: "warn".to_string(),
            invariants: true,
        }
    }

    /// A mirror of `upstream` with default settings, in-process.
    pub fn start(upstream: &str) -> Mirror {
        Mirror::builder(upstream).start()
    }

    /// Base URL, e.g. `http://127.0.0.1:5000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL of the metrics listener.
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics_addr.expect("no metrics listener"))
    }

    /// The mirror's Prometheus exposition (main listener).
    pub fn metrics(&self) -> String {
        super::metrics::scrape(self.addr)
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        super::metrics::sample_sum(&self.metrics(), name, labels)
    }

    /// Stops (gracefully) and starts again with the same settings and cache.
    pub fn restart(&mut self) {
        self.stop();
        self.running = blocking(|| self.builder.launch(&self.root));
        self.addr = self.running.addr();
        self.metrics_addr = self.running.metrics_addr();
        self.crashed = false;
    }

    /// Stops gracefully: the shutdown future in-process, SIGTERM otherwise;
    /// bounded either way.
    pub fn stop(&mut self) {
        let result = match &mut self.running {
            // The child stays (exited) so its stderr can still be read.
            Running::Process(child) => blocking(|| child.stop()),
            running => blocking(|| std::mem::replace(running, Running::Stopped).stop()),
        };
        if let Err(problem) = result {
            panic!("{problem}");
        }
    }

    // ---- process mode only ----

    fn child(&mut self) -> &mut ChildMirror {
        match &mut self.running {
            Running::Process(child) => child,
            _ => panic!("only a process-mode mirror (.process()) has a PID, signals and stderr"),
        }
    }

    fn child_ref(&self) -> &ChildMirror {
        match &self.running {
            Running::Process(child) => child,
            _ => panic!("only a process-mode mirror (.process()) has a PID, signals and stderr"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child_ref().child.id()
    }

    /// SIGKILL, as a crash would (the cache is not checked afterwards: the
    /// next start on it cleans up, and that mirror checks it).
    pub fn kill(&mut self) {
        let child = self.child();
        let _ = child.child.kill();
        let _ = child.child.wait();
        self.crashed = true;
        self.running = Running::Stopped;
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&mut self) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// The exit status, waited for at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child();
        // The child stays (exited) so its stderr can still be read.
        blocking(|| {
            wait_until("pullthrough to exit", within, || {
                child.child.try_wait().expect("try_wait")
            })
        })
    }

    /// SIGTERM and the exit status (SIGKILL after 30 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let Running::Process(mut child) = std::mem::replace(&mut self.running, Running::Stopped)
        else {
            panic!("only a process-mode mirror (.process()) can be sent signals");
        };
        blocking(|| child.terminate(Duration::from_secs(30)))
    }

    /// Whether the child has not exited.
    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Running::Process(c) => matches!(c.child.try_wait(), Ok(None)),
            _ => false,
        }
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.child_ref().stderr()
    }

    /// The whole stderr once `done` holds for it, waited for (bounded): a
    /// line may land a moment after the client has its response.
    pub fn wait_log(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let child = self.child_ref();
        blocking(|| {
            wait_until(&format!("the log line of {what}"), START_LIMIT, || {
                let log = child.stderr();
                done(&log).then_some(log)
            })
        })
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let check = self.builder.invariants && !self.crashed && !panicking;
        let mut problems = Vec::new();
        if check && !matches!(self.running, Running::Stopped) {
            // Downloads belong to no request: let them land first.
            let tmp = self.cache_dir.join("tmp");
            let deadline = Instant::now() + IDLE_LIMIT;
            blocking(|| {
                while !entries(&tmp).is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        if panicking {
            if let Running::Process(child) = &self.running {
                let log = child.stderr();
                let tail = &log[log.len().saturating_sub(4000)..];
                eprintln!("--- pullthrough stderr (last 4000 bytes) ---\n{tail}");
            }
        }
        let running = std::mem::replace(&mut self.running, Running::Stopped);
        if let Err(problem) = blocking(|| running.stop()) {
            problems.push(problem);
        }
        if check {
            problems.extend(check_cache(&self.cache_dir));
        }
        if !problems.is_empty() && !panicking {
            panic!(
                "mirror of {} (cache {}):\n  {}",
                self.builder.upstream.as_deref().unwrap_or("its config"),
                self.cache_dir.display(),
                problems.join("\n  ")
            );
        }
    }
}

/// What must hold of a cache once its mirror is stopped: nothing left in
/// `tmp/`, and every file under `blobs/sha256/xx/` is named `xx…` and
/// hashes (sha256) to its name. Returns what is wrong.
pub fn check_cache(cache: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let tmp = entries(&cache.join("tmp"));
    if !tmp.is_empty() {
        problems.push(format!("tmp/ is not empty once idle: {tmp:?}"));
    }
    for shard in entries(&cache.join("blobs/sha256")) {
        if !shard.is_dir() {
            continue;
        }
        let prefix = shard
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for file in entries(&shard) {
            let name = file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if file.is_dir() {
                problems.push(format!("a directory under blobs/: {}", file.display()));
                continue;
            }
            if !name.starts_with(&prefix) {
                problems.push(format!("{} is in the wrong shard", file.display()));
            }
            match std::fs::read(&file) {
                Ok(bytes) => {
                    let hex = hex::encode(Sha256::digest(&bytes));
                    if hex != name {
                        problems.push(format!(
                            "{} ({} bytes) hashes to {hex}: partial or wrong content under blobs/",
                            file.display(),
                            bytes.len()
                        ));
                    }
                }
                Err(e) => problems.push(format!("cannot read {}: {e}", file.display())),
            }
        }
    }
    problems
}

/// The entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// Runs blocking work from sync code and from multi-thread tokio tests alike.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

enum Running {
    InProcess(InProcess),
    Process(ChildMirror),
    Stopped,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        match self {
            Running::InProcess(s) => s.addr,
            Running::Process(c) => c.addr,
            Running::Stopped => unreachable!("a stopped mirror has no address"),
        }
    }

    fn metrics_addr(&self) -> Option<SocketAddr> {
        match self {
            Running::InProcess(s) => s.metrics_addr,
            Running::Process(c) => c.metrics_addr,
            Running::Stopped => None,
        }
    }

    fn stop(self) -> Result<(), String> {
        match self {
            Running::InProcess(server) => server.stop(),
            Running::Process(mut child) => child.stop(),
            Running::Stopped => Ok(()),
        }
    }
}

/// `server::run` on a thread with its own runtime.
struct InProcess {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl InProcess {
    fn start(builder: &MirrorBuilder) -> InProcess {
        let mut config = Config::load(builder.config_path.as_deref(), &builder.overrides())
            .unwrap_or_else(|e| panic!("mirror config: {e}"));
        if let Some(timings) = &builder.timings {
            config.timings = timings.clone();
        }
        let metrics_listener = builder.metrics_listener;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mirror".into())
            .spawn(move || serve(config, metrics_listener, ready_tx, stop_rx))
            .expect("spawn the mirror thread");
        match ready_rx.recv_timeout(START_LIMIT) {
            Ok(Ok((addr, metrics_addr))) => InProcess {
                addr,
                metrics_addr,
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            Ok(Err(e)) => {
                let _ = thread.join();
                panic!("the mirror did not start: {e}")
            }
            Err(_) => panic!("the mirror did not start within {START_LIMIT:?}"),
        }
    }

    fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take().expect("started");
        let deadline = Instant::now() + STOP_LIMIT + Duration::from_secs(5);
        while !thread.is_finished() {
            if Instant::now() > deadline {
                return Err("the mirror thread did not end".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        thread
            .join()
            .map_err(|_| "the mirror thread panicked".to_string())?
    }
}

type Ready = Result<(SocketAddr, Option<SocketAddr>), String>;

/// The mirror thread: binds port 0, opens the app, serves until told to
/// stop (the drain bounded by `STOP_LIMIT`).
fn serve(
    config: Config,
    metrics_listener: bool,
    ready: std::sync::mpsc::Sender<Ready>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), String> {
    use futures_util::FutureExt as _;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("runtime: {e}")));
            return Ok(());
        }
    };
    let result = runtime.block_on(async move {
        let bind = |addr: SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("bind {addr}: {e}"))
        };
        let opened = async {
            let main = bind("127.0.0.1:0".parse().expect("addr")).await?;
            let metrics = match (config.metrics_listen, metrics_listener) {
                (Some(addr), _) => Some(bind(addr).await?),
                (None, true) => Some(bind("127.0.0.1:0".parse().expect("addr")).await?),
                (None, false) => None,
            };
            let app = pullthrough::server::App::open(&config).map_err(|e| e.to_string())?;
            Ok::<_, String>((main, metrics, app))
        };
        let (main, metrics, app) = match opened.await {
            Ok(opened) => opened,
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(());
            }
        };
        let addrs = (
            main.local_addr().expect("local addr"),
            metrics
                .as_ref()
                .map(|m| m.local_addr().expect("local addr")),
        );
        let listeners = pullthrough::server::Listeners {
            main,
            metrics,
            tls: config.tls.clone(),
        };
        let stop = stop.map(|_| ()).shared();
        let bound = {
            let stop = stop.clone();
            async move {
                stop.await;
                tokio::time::sleep(STOP_LIMIT).await;
            }
        };
        let _ = ready.send(Ok(addrs));
        tokio::select! {
            served = pullthrough::server::run(listeners, app, stop) => {
                served.map_err(|e| format!("server::run: {e}"))
            }
            _ = bound => Err(format!("the mirror did not stop within {STOP_LIMIT:?}")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// The real binary, stderr kept in a file.
struct ChildMirror {
    child: Child,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stderr_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ChildMirror {
    fn spawn(builder: &MirrorBuilder, root: &Path) -> ChildMirror {
        assert!(
            builder.timings.is_none(),
            "timings can only be set in-process; the binary has no flag for them"
        );
        let log_dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = log_dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port())
            .parse()
            .expect("addr");
        let mut command = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--cache-dir")
            .arg(builder.cache_dir.as_ref().expect("cache dir set"));
        if let Some(upstream) = &builder.upstream {
            command.arg("--upstream").arg(upstream);
        }
        if let Some(path) = &builder.config_path {
            command.arg("--config").arg(path);
        }
        let mut metrics_addr = None;
        for (flag, value) in &builder.args {
            command.arg(flag).arg(value);
            if flag == "--metrics-listen" {
                metrics_addr = value.parse().ok();
            }
        }
        if builder.metrics_listener && metrics_addr.is_none() {
            let listen: SocketAddr = format!("127.0.0.1:{}", super::free_port())
                .parse()
                .expect("addr");
            command.arg("--metrics-listen").arg(listen.to_string());
            metrics_addr = Some(listen);
        }
        command
            .current_dir(root)
            .env("RUST_LOG", &builder.rust_log)
            // Settings from the developer's shell must not leak in.
            .env_remove("PULLTHROUGH_CONFIG")
            .env_remove("PULLTHROUGH_LOG_FORMAT")
            .env_remove("PULLTHROUGH_METRICS_LISTEN")
            .env_remove("PULLTHROUGH_MAX_SIZE")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in &builder.env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn pullthrough");
        let mut mirror = ChildMirror {
            child,
            addr,
            metrics_addr,
            stderr_path,
            _log_dir: log_dir,
        };
        for listening in std::iter::once(addr).chain(metrics_addr) {
            mirror.wait_listening(listening);
        }
        mirror
    }

    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pullthrough exited ({status}) before listening:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "pullthrough did not listen on {addr} within {START_LIMIT:?}:\n{}",
            self.stderr()
        );
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// SIGTERM, bounded; an error unless it exits cleanly.
    fn stop(&mut self) -> Result<(), String> {
        let status = self.terminate(STOP_LIMIT);
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "pullthrough exited with {status} on SIGTERM:\n{}",
                self.stderr()
            ))
        }
    }

    /// SIGTERM, then the exit status; SIGKILL after `within`.
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait for pullthrough")
    }
}

impl Drop for ChildMirror {
    fn drop(&mut self) {
        // Never leave a child behind, whatever happened before.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
