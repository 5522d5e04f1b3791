//! A TCP forwarder on a loopback port of its own, for tests that need a
//! component to vanish mid-transfer without stopping the shared one (the
//! RGW started once per run): [`TcpProxy::kill`] drops the listener and
//! every connection at once. Answers can be slowed, so a transfer is
//! still running when the test kills the proxy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// At most `bytes` forwarded towards the client per `every`.
#[derive(Clone, Copy)]
pub struct Pace {
    pub bytes: usize,
    pub every: Duration,
}

pub struct TcpProxy {
    pub port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Forwards 127.0.0.1:<port> to `target`; answers paced by `pace`.
    pub async fn start(target: SocketAddr, pace: Option<Pace>) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let conns = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let task = tokio::spawn(forward(client, upstream, pace));
                if let Ok(mut conns) = conns.lock() {
                    conns.push(task);
                }
            }
        });
        if let Ok(mut t) = tasks.lock() {
            t.push(accept);
        }
        TcpProxy { port, tasks }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the listener and every connection, as a crashed host would.
    pub fn kill(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn forward(client: TcpStream, upstream: TcpStream, pace: Option<Pace>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
    };
    let answers = async {
        let chunk = pace.map_or(64 * 1024, |p| p.bytes.max(1));
        let mut buf = vec![0u8; chunk];
        loop {
            let n = match upstream_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            if let Some(pace) = pace {
                tokio::time::sleep(pace.every).await;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, answers);
}
