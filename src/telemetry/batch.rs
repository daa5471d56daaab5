//! Log lines written in batches: the line every request logs is appended to a buffer of its
//! thread's and written out with its neighbours, a batch at a time, instead of one `write` to
//! stderr per request (on the test machine that `write` was 8 % of a pool hit's CPU at `info`).
//!
//! A batch is written when it reaches [`BATCH_BYTES`], when a line at `warn` or `error` is logged
//! on its thread (the batch first, then that line, so a thread's lines keep their order), when
//! the flusher thread wakes (every `interval`: lines wait no longer than that), and at
//! [`Batched::flush`] (the process's end). What a process killed outright (`SIGKILL`, an
//! out-of-memory kill) had not yet written is lost: at most one interval of lines. Envoy's file
//! access log makes the same trade, once a second by default.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// A thread's batch is written once it holds this much (a pipe takes 64 KiB at a time).
pub const BATCH_BYTES: usize = 32 * 1024;

/// Batches by thread: each thread appends to one shard (threads beyond the shard count share),
/// so a line costs an uncontended lock and a copy.
const SHARDS: usize = 16;

/// A [`MakeWriter`] that batches lines below `warn` and writes the rest at once.
pub struct Batched<W: Write + Send + 'static> {
    inner: Arc<Inner<W>>,
}

impl<W: Write + Send + 'static> Clone for Batched<W> {
    fn clone(&self) -> Self {
        Batched {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<W: Write> {
    shards: Vec<Mutex<Vec<u8>>>,
    out: Mutex<W>,
}

impl<W: Write + Send + 'static> Batched<W> {
    /// Lines to `out`, batched, written at least every `interval` by a thread of its own (which
    /// ends when the last handle is dropped).
    pub fn new(out: W, interval: Duration) -> Batched<W> {
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            out: Mutex::new(out),
        });
        let weak: Weak<Inner<W>> = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                match weak.upgrade() {
                    Some(inner) => inner.flush_all(),
                    None => return,
                }
            })
            .expect("a thread for the log's batches");
        Batched { inner }
    }

    /// Writes every batch now.
    pub fn flush(&self) {
        self.inner.flush_all();
    }

    /// Writes every batch that no thread is writing to, without waiting: for a panic hook,
    /// whose thread may hold a batch's lock.
    pub fn try_flush(&self) {
        for shard in &self.inner.shards {
            if let (Ok(mut batch), Ok(mut out)) = (shard.try_lock(), self.inner.out.try_lock()) {
                write_out(&mut *out, &mut batch);
            }
        }
    }
}

impl<W: Write> Inner<W> {
    fn flush_all(&self) {
        for shard in &self.shards {
            self.write_batch(&mut lock(shard));
        }
    }

    /// Writes a batch out and empties it.
    fn write_batch(&self, batch: &mut Vec<u8>) {
        if !batch.is_empty() {
            write_out(&mut *lock(&self.out), batch);
        }
    }
}

/// Writes `batch` to `out` and empties it. A log that cannot be written is not worth failing a
/// request over, and there is nowhere left to report it.
fn write_out(out: &mut impl Write, batch: &mut Vec<u8>) {
    if batch.is_empty() {
        return;
    }
    let _ = out.write_all(batch);
    let _ = out.flush();
    batch.clear();
    // Give back what one outsized line made the batch hold.
    if batch.capacity() > 4 * BATCH_BYTES {
        batch.shrink_to(2 * BATCH_BYTES);
    }
}

impl<W: Write> Drop for Inner<W> {
    /// The last handle's lines are written as it goes.
    fn drop(&mut self) {
        self.flush_all();
    }
}

/// A poisoned lock only means a thread panicked while holding it; the bytes are still whole
/// lines or nothing, so go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This thread's shard, assigned on its first line.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// One line's writer (`tracing-subscriber` writes each formatted line with one `write_all`).
pub struct Line<'a, W: Write> {
    inner: &'a Inner<W>,
    urgent: bool,
}

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut batch = lock(&self.inner.shards[shard_index()]);
        batch.extend_from_slice(line);
        if self.urgent || batch.len() >= BATCH_BYTES {
            self.inner.write_batch(&mut batch);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for Batched<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            inner: &self.inner,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        Line {
            inner: &self.inner,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::Capture;
    use std::time::Instant;

    fn logging<T>(writer: Batched<Capture>, f: impl FnOnce() -> T) -> T {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_max_level(Level::TRACE)
            .without_time()
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f)
    }

    fn messages(text: &str) -> Vec<&str> {
        text.lines()
            .map(|l| l.rsplit(' ').next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_warning_writes_the_lines_before_it_first_and_the_rest_wait_for_a_flush() {
        let out = Capture::default();
        let batched = Batched::new(out.clone(), Duration::from_secs(3_600));
        logging(batched.clone(), || {
            tracing::info!("first");
            tracing::debug!("second");
            assert_eq!(out.text(), "", "lines below warn wait in their batch");
            tracing::warn!("third");
            assert_eq!(messages(&out.text()), ["first", "second", "third"]);
            tracing::info!("fourth");
            tracing::error!("fifth");
            tracing::info!("sixth");
        });
        assert_eq!(
            messages(&out.text()),
            ["first", "second", "third", "fourth", "fifth"]
        );
        batched.flush();
        assert_eq!(
            messages(&out.text()),
            ["first", "second", "third", "fourth", "fifth", "sixth"]
        );
    }

    #[test]
    fn a_waiting_line_is_written_within_the_interval_without_a_flush() {
        let out = Capture::default();
        let batched = Batched::new(out.clone(), Duration::from_millis(50));
        logging(batched.clone(), || tracing::info!("alone"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.text().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(messages(&out.text()), ["alone"]);
        drop(batched);
    }

    #[test]
    fn the_last_handle_dropped_writes_what_waits() {
        let out = Capture::default();
        logging(
            Batched::new(out.clone(), Duration::from_secs(3_600)),
            || tracing::info!("kept"),
        );
        assert_eq!(messages(&out.text()), ["kept"]);
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_and_in_whole_lines() {
        let out = Capture::default();
        let batched = Batched::new(out.clone(), Duration::from_secs(3_600));
        let line = "x".repeat(1_000);
        logging(batched, || {
            for _ in 0..(BATCH_BYTES / 1_000 + 1) {
                tracing::info!("{line}");
            }
        });
        let text = out.text();
        assert!(text.len() >= BATCH_BYTES, "{} bytes written", text.len());
        assert!(text.ends_with('\n'), "a batch ends at a line's end");
        assert!(text.lines().all(|l| l.ends_with(&line)));
    }

    /// Threads logging at once, the flusher and explicit flushes racing them: every line is
    /// written exactly once, whole, and each thread's lines in the order it logged them.
    #[test]
    fn concurrent_lines_are_written_once_whole_and_in_each_threads_order() {
        const THREADS: usize = 2 * SHARDS + 3;
        const LINES: usize = 2_000;
        let out = Capture::default();
        let batched = Batched::new(out.clone(), Duration::from_millis(1));
        let subscriber = Arc::new(
            tracing_subscriber::fmt()
                .with_writer(batched.clone())
                .without_time()
                .with_target(false)
                .finish(),
        );
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let subscriber = subscriber.clone();
                s.spawn(move || {
                    tracing::subscriber::with_default(subscriber, || {
                        for i in 0..LINES {
                            if i % 500 == 499 {
                                tracing::warn!("{t}:{i}");
                            } else {
                                tracing::info!("{t}:{i}");
                            }
                        }
                    })
                });
            }
            s.spawn(|| {
                for _ in 0..200 {
                    batched.flush();
                    std::thread::yield_now();
                }
            });
        });
        batched.flush();
        let text = out.text();
        let mut next = [0usize; THREADS];
        for m in messages(&text) {
            let (t, i) = m
                .split_once(':')
                .unwrap_or_else(|| panic!("a torn line: {m}"));
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(
                i, next[t],
                "thread {t}'s lines in order, none lost or repeated"
            );
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS]);
    }
}
