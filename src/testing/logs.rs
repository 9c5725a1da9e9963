//! An in-memory log sink for tests that assert what was (or was not) logged.

use std::sync::{Arc, Mutex};

/// A cloneable writer that keeps every byte written to it; hand `buf.make_writer()` to a
/// `tracing_subscriber` and read `buf.text()` afterwards.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// A writer factory for `tracing_subscriber::fmt().with_writer(..)`.
    pub fn make_writer(&self) -> impl Fn() -> LogBuffer + Send + Sync + 'static {
        let w = self.clone();
        move || w.clone()
    }

    /// Everything written so far, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// Where the global capturing subscriber writes this thread's events (none: dropped).
    static CAPTURE: std::cell::RefCell<Option<LogBuffer>> = const { std::cell::RefCell::new(None) };
}

/// The writer of the global capturing subscriber: the current thread's capture, if any.
struct ThreadCapture;

impl std::io::Write for ThreadCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buf) = c.borrow_mut().as_mut() {
                let _ = buf.write(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether this process's global subscriber is the capturing one (set on first use).
static GLOBAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Runs `f` with every event of this thread recorded (every level), and returns its result and
/// the log text.
///
/// A subscriber set for one thread only (`with_default`) raced with the other tests of the same
/// binary: a callsite they reached first, on a thread without a subscriber, could keep an
/// interest of "never" and the capture then missed its events (seen in CI). So the capture is one
/// global subscriber, set on first use, that records at every level and writes each event to
/// the capture of the thread it happened on; events of other threads are dropped. Where another
/// global subscriber is already set, a subscriber for this thread is used as before.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let global = *GLOBAL.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| ThreadCapture)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).is_ok()
    });
    let buf = LogBuffer::default();
    if global {
        CAPTURE.with(|c| *c.borrow_mut() = Some(buf.clone()));
        let out = f();
        CAPTURE.with(|c| *c.borrow_mut() = None);
        return (out, buf.text());
    }
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.make_writer())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    (out, buf.text())
}
