//! The log writer `serve` uses: formatted lines go into one bounded
//! in-memory buffer that a single thread writes out in batches, so a
//! request never makes (or waits on) a write syscall for its access line.
//! When the buffer is full, access lines are dropped and counted
//! (`pullthrough_log_lines_dropped_total{kind="access"}`); other lines are
//! rare and worth more, so they are kept past that bound, up to a hard
//! one (`kind="other"` past it). Dropping the guard writes out what is
//! queued.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes queued before access lines are dropped: at ~250 bytes a line,
/// a few thousand lines, i.e. a stalled stderr for a while at full load.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// The bound on all queued lines, warnings included: a stderr that never
/// drains must not grow the queue without end.
const HARD_CAPACITY_FACTOR: usize = 4;

/// How long the writer lets lines pile up after a write, so under load
/// one write (and one wake-up) carries many lines.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// The target whose lines may be dropped (see `server::access`).
const ACCESS_TARGET: &str = "access";

struct Queue {
    lines: Vec<u8>,
    /// The writer sleeps on the condvar; only then is a wake-up needed.
    writer_waiting: bool,
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
    dropped_access: AtomicU64,
    dropped_other: AtomicU64,
}

impl Shared {
    /// A writer that panicked mid-write leaves whole lines behind, so a
    /// poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `MakeWriter` handed to `tracing_subscriber::fmt`.
#[derive(Clone)]
pub struct LogQueue {
    shared: Arc<Shared>,
}

/// Writes out what is queued and stops the writer thread when dropped.
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The queue that `dropped_access_lines` reports on.
static INSTALLED: OnceLock<Arc<Shared>> = OnceLock::new();

/// Set when the process logs plain text without colours: access lines,
/// one per request, are then formatted by `server::access` itself (far
/// cheaper than `tracing`'s field visitors) and queued as they come.
static ACCESS_AS_TEXT: AtomicBool = AtomicBool::new(false);

/// Says that the installed queue's lines are plain text, as
/// `tracing_subscriber::fmt` writes them without ANSI colours.
pub fn access_lines_as_text() {
    ACCESS_AS_TEXT.store(true, Ordering::Relaxed);
}

/// Where access lines go as text their caller formats: `None` when they
/// must go through `tracing` instead (another format, or no queue).
pub fn text_access_lines() -> Option<AccessLines> {
    if !ACCESS_AS_TEXT.load(Ordering::Relaxed) {
        return None;
    }
    INSTALLED.get().map(|shared| AccessLines { shared })
}

/// The installed queue, taking access lines formatted as text.
pub struct AccessLines {
    shared: &'static Arc<Shared>,
}

impl AccessLines {
    /// Queues one whole line (dropped and counted if the queue is full).
    pub fn push(&self, line: &[u8]) {
        push(self.shared, line, true);
    }
}

/// A queue in front of stderr, the process's log.
pub fn stderr() -> io::Result<(LogQueue, FlushOnDrop)> {
    let (queue, guard) = spawn(io::stderr(), DEFAULT_CAPACITY)?;
    let _ = INSTALLED.set(queue.shared.clone());
    Ok((queue, guard))
}

/// Lines dropped so far by the process's log queue: (access, other).
pub fn dropped_lines() -> (u64, u64) {
    INSTALLED.get().map_or((0, 0), |s| {
        (
            s.dropped_access.load(Ordering::Relaxed),
            s.dropped_other.load(Ordering::Relaxed),
        )
    })
}

/// A queue of at most `capacity` bytes of access lines in front of `sink`.
pub fn spawn(
    sink: impl Write + Send + 'static,
    capacity: usize,
) -> io::Result<(LogQueue, FlushOnDrop)> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            lines: Vec::with_capacity(capacity.min(64 * 1024)),
            writer_waiting: false,
            closing: false,
        }),
        wake: Condvar::new(),
        capacity,
        dropped_access: AtomicU64::new(0),
        dropped_other: AtomicU64::new(0),
    });
    let drained = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(&drained, sink))?;
    Ok((
        LogQueue {
            shared: shared.clone(),
        },
        FlushOnDrop {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches(shared: &Shared, mut sink: impl Write) {
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = shared.lock();
            while queue.lines.is_empty() && !queue.closing {
                queue.writer_waiting = true;
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                queue.writer_waiting = false;
            }
            if queue.lines.is_empty() {
                return;
            }
            std::mem::swap(&mut queue.lines, &mut batch);
        }
        // A log that cannot be written has nowhere to report it.
        let _ = sink.write_all(&batch);
        let _ = sink.flush();
        batch.clear();
        if !shared.lock().closing {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}

impl LogQueue {
    /// Access lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped_access.load(Ordering::Relaxed)
    }

    fn push(&self, line: &[u8], droppable: bool) {
        push(&self.shared, line, droppable);
    }
}

fn push(shared: &Shared, line: &[u8], droppable: bool) {
    let mut queue = shared.lock();
    let queued = queue.lines.len() + line.len();
    let (bound, dropped) = if droppable {
        (shared.capacity, &shared.dropped_access)
    } else {
        (
            shared.capacity * HARD_CAPACITY_FACTOR,
            &shared.dropped_other,
        )
    };
    if queued > bound {
        drop(queue);
        dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    queue.lines.extend_from_slice(line);
    let wake = queue.writer_waiting;
    drop(queue);
    if wake {
        shared.wake.notify_one();
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: `tracing_subscriber::fmt` formats a whole line and
/// hands it over in one `write_all`, so each `write` is one line.
pub struct LineWriter<'a> {
    queue: &'a LogQueue,
    droppable: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.queue.push(line, self.droppable);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            queue: self,
            droppable: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            queue: self,
            droppable: meta.target() == ACCESS_TARGET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that holds every write until the test lets it through, as a
    /// stderr pipe nobody reads does, and reports what it was given.
    struct Gated {
        open: mpsc::Receiver<()>,
        written: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _ = self.open.recv();
            let _ = self.written.send(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn write_line(queue: &LogQueue, target_is_access: bool, line: &str) {
        let mut w = LineWriter {
            queue,
            droppable: target_is_access,
        };
        w.write_all(line.as_bytes()).expect("queued");
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_access_lines_keeps_the_rest_and_flushes_on_drop() {
        let (open, gate) = mpsc::channel();
        let (written_tx, written) = mpsc::channel();
        let sink = Gated {
            open: gate,
            written: written_tx,
        };
        let (queue, guard) = spawn(sink, 100).expect("writer thread");

        // The first line is taken by the writer, which then blocks in the
        // sink: everything after it stays queued.
        write_line(&queue, true, "access 0 ------------------------------\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !taken_by_writer(&queue) {
            assert!(
                std::time::Instant::now() < deadline,
                "writer never took line 0"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 1..=5 {
            write_line(
                &queue,
                true,
                &format!("access {i} -----------------------------\n"),
            );
        }
        write_line(&queue, false, "warn kept even past the bound\n");
        // 40-byte lines into 100 bytes: lines 1 and 2 fit, 3..=5 do not.
        assert_eq!(queue.dropped(), 3);
        // Other lines stop at the hard bound (400 bytes queued).
        for _ in 0..20 {
            write_line(&queue, false, "warn ---------------------------------\n");
        }
        let other_dropped = queue.shared.dropped_other.load(Ordering::Relaxed);
        assert!(queue.shared.lock().lines.len() <= 400);
        assert!(other_dropped >= 10, "{other_dropped} other lines dropped");

        let release = std::thread::spawn(move || {
            for _ in 0..10 {
                if open.send(()).is_err() {
                    break;
                }
            }
        });
        drop(guard);
        release.join().expect("release thread");
        let out: Vec<u8> = written.try_iter().flatten().collect();
        let out = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = out
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap_or(l))
            .collect();
        let kept = 20 - other_dropped as usize;
        let mut expected = vec!["0", "1", "2", "kept"];
        expected.extend(std::iter::repeat_n(
            "---------------------------------",
            kept,
        ));
        assert_eq!(lines, expected, "written: {out}");
    }

    /// The writer has swapped line 0 out of the queue.
    fn taken_by_writer(queue: &LogQueue) -> bool {
        let q = queue.shared.lock();
        q.lines.is_empty() && !q.writer_waiting
    }
}
