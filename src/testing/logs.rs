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

/// Runs `f` with a subscriber that records every level, and returns its result and the log text.
///
/// Other tests of the same binary run on other threads without a subscriber. A callsite they
/// reach first can have its interest cached as "never" while this subscriber is being
/// registered, and then this capture would miss its events; so the cache is rebuilt once this
/// subscriber is in place.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buf = LogBuffer::default();
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
