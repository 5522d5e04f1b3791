//! The load generator of `benches/fanout.py`: N connections that GET one
//! blob at the same moment and check every byte against the expected file
//! in memory (a memcmp per chunk, so the client costs the kernel's copy
//! and little more), recording when each client saw its first and its
//! last byte.
//!
//! Rust rather than Python: a Python client checking 50 GB would spend
//! more CPU than the server it measures (memoryview compare runs at
//! ~0.5 GB/s here), on the same two cores.
//!
//! ```text
//! fanout --port P --path /v2/…/blobs/sha256:… --expect FILE --clients N
//!        [--threads T] [--timeout-s S]
//! ```
//!
//! Prints one JSON object: per-client status, bytes, time to first body
//! byte and to the last byte (seconds from the common start), errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const READ_BUF: usize = 256 * 1024;

struct Args {
    port: u16,
    path: String,
    expect: String,
    clients: usize,
    threads: usize,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 0,
        path: String::new(),
        expect: String::new(),
        clients: 1,
        threads: 2,
        timeout: Duration::from_secs(600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench`; nothing else is ours to ignore.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--port" => args.port = number(&value)? as u16,
            "--path" => args.path = value,
            "--expect" => args.expect = value,
            "--clients" => args.clients = number(&value)? as usize,
            "--threads" => args.threads = number(&value)?.max(1) as usize,
            "--timeout-s" => args.timeout = Duration::from_secs(number(&value)?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.port == 0 || args.path.is_empty() || args.expect.is_empty() {
        return Err("--port, --path and --expect are required".into());
    }
    Ok(args)
}

#[derive(Default)]
struct Outcome {
    status: u16,
    bytes: u64,
    first_byte: Option<f64>,
    last_byte: Option<f64>,
    error: Option<String>,
}

/// The response head: status and Content-Length, and where the body starts.
fn parse_head(head: &[u8]) -> Result<(u16, Option<u64>), String> {
    let text = std::str::from_utf8(head).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok());
    Ok((status, len))
}

async fn client(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    expected: Arc<Vec<u8>>,
    mut go: watch::Receiver<Option<Instant>>,
    out: &mut Outcome,
) -> Result<(), String> {
    let mut conn = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = conn.set_nodelay(true);
    let start = match go.wait_for(Option::is_some).await {
        Ok(at) => at.unwrap_or_else(Instant::now),
        Err(_) => return Err("driver went away".into()),
    };
    conn.write_all(&request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; READ_BUF];
    // The head (and maybe the first body bytes) first.
    let mut filled = 0;
    let body_at = loop {
        let n = conn
            .read(&mut buf[filled..])
            .await
            .map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err("closed before the head ended".into());
        }
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if filled == buf.len() {
            return Err("head too long".into());
        }
    };
    let (status, len) = parse_head(&buf[..body_at - 4])?;
    out.status = status;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    if len != Some(expected.len() as u64) {
        return Err(format!("Content-Length {len:?}, want {}", expected.len()));
    }
    let mut pos = 0usize;
    let check = |chunk: &[u8], pos: &mut usize, out: &mut Outcome| -> Result<(), String> {
        if chunk.is_empty() {
            return Ok(());
        }
        if out.first_byte.is_none() {
            out.first_byte = Some(start.elapsed().as_secs_f64());
        }
        let end = *pos + chunk.len();
        if end > expected.len() {
            return Err(format!("more than {} bytes", expected.len()));
        }
        if chunk != &expected[*pos..end] {
            return Err(format!("wrong bytes in [{}, {end})", *pos));
        }
        *pos = end;
        out.bytes = end as u64;
        Ok(())
    };
    check(&buf[body_at..filled], &mut pos, out)?;
    while pos < expected.len() {
        let n = conn
            .read(&mut buf)
            .await
            .map_err(|e| format!("read body at {pos}: {e}"))?;
        if n == 0 {
            return Err(format!("closed at {pos} of {}", expected.len()));
        }
        check(&buf[..n], &mut pos, out)?;
    }
    out.last_byte = Some(start.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `clients` clients against `addr` on `runtime`.
fn run_clients(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    path: &str,
    expected: &Arc<Vec<u8>>,
    clients: usize,
    timeout: Duration,
) -> Vec<Outcome> {
    let request = Arc::new(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fanout-bench\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    );
    runtime.block_on(async {
        let (go_tx, go_rx) = watch::channel(None);
        let mut tasks = Vec::with_capacity(clients);
        for _ in 0..clients {
            let (request, expected, go) =
                (Arc::clone(&request), Arc::clone(expected), go_rx.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Outcome::default();
                let run = client(addr, request, expected, go, &mut out);
                match tokio::time::timeout(timeout, run).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => out.error = Some(e),
                    Err(_) => out.error = Some(format!("timed out at {} bytes", out.bytes)),
                }
                out
            }));
        }
        // Let every connection be established before the common start.
        tokio::time::sleep(Duration::from_millis(200 + clients as u64)).await;
        let _ = go_tx.send(Some(Instant::now()));
        let mut outcomes = Vec::with_capacity(tasks.len());
        for t in tasks {
            outcomes.push(t.await.unwrap_or_else(|e| Outcome {
                error: Some(format!("client task: {e}")),
                ..Outcome::default()
            }));
        }
        outcomes
    })
}

/// Without arguments (`cargo test --all-targets` runs every bench target
/// so): checks the checker against a loopback server that sends the
/// expected bytes to every client but one, which gets one byte flipped.
fn self_check(runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    let expected: Arc<Vec<u8>> = Arc::new((0..3 * READ_BUF as u32).map(|i| i as u8).collect());
    let clients = 4;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let body = Arc::clone(&expected);
    let server = runtime.spawn(async move {
        for n in 0..clients {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut body = body.to_vec();
            if n == 0 {
                body[READ_BUF + 7] ^= 1;
            }
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = conn.read(&mut head).await;
                let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    let outcomes = run_clients(
        runtime,
        addr,
        "/x",
        &expected,
        clients,
        Duration::from_secs(30),
    );
    server.abort();
    let ok = outcomes.iter().filter(|o| o.error.is_none()).count();
    let caught = outcomes
        .iter()
        .filter(|o| {
            o.error
                .as_deref()
                .is_some_and(|e| e.starts_with("wrong bytes"))
        })
        .count();
    if ok != clients - 1 || caught != 1 {
        return Err(format!(
            "{ok} clients ok and {caught} caught the flipped byte"
        ));
    }
    Ok(())
}

fn main() {
    // `cargo bench` adds `--bench`; nothing else means a bare run.
    if std::env::args().skip(1).all(|a| a == "--bench") {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        match self_check(&runtime) {
            Ok(()) => println!("fanout: self-check passed (run by benches/fanout.py for figures)"),
            Err(e) => {
                eprintln!("fanout: self-check failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fanout: {e}");
            std::process::exit(2);
        }
    };
    let expected = match std::fs::read(&args.expect) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("fanout: {}: {e}", args.expect);
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let outcomes = run_clients(
        &runtime,
        addr,
        &args.path,
        &expected,
        args.clients,
        args.timeout,
    );
    let json = serde_json::json!({
        "clients": outcomes.len(),
        "expected_bytes": expected.len(),
        "status": outcomes.iter().map(|o| o.status).collect::<Vec<_>>(),
        "bytes": outcomes.iter().map(|o| o.bytes).collect::<Vec<_>>(),
        "first_byte": outcomes.iter().map(|o| o.first_byte).collect::<Vec<_>>(),
        "last_byte": outcomes.iter().map(|o| o.last_byte).collect::<Vec<_>>(),
        "errors": outcomes.iter().enumerate()
            .filter_map(|(i, o)| o.error.as_ref().map(|e| format!("client {i}: {e}")))
            .collect::<Vec<_>>(),
    });
    println!("{json}");
}
