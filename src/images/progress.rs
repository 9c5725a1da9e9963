//! Progress of image pulls and builds (ADR 0043): the Docker streams are folded into a few
//! numbers, and a progress line is due at most once per [`EVERY`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Least time between two progress lines of one pull or build.
pub const EVERY: Duration = Duration::from_secs(5);

/// Rate limit of progress lines: due once `every` passed since the start or the last line.
#[derive(Debug)]
pub struct Ticker {
    every: Duration,
    last: Instant,
}

impl Ticker {
    pub fn new(every: Duration) -> Self {
        Ticker {
            every,
            last: Instant::now(),
        }
    }

    /// Whether a line is due at `now`; if so the next one is `every` later.
    pub fn due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last) >= self.every {
            self.last = now;
            true
        } else {
            false
        }
    }
}

/// One layer of a pull: bytes downloaded of the total, and whether it is in place.
#[derive(Clone, Copy, Debug, Default)]
struct Layer {
    current: u64,
    total: u64,
    done: bool,
}

/// Layers and bytes of a pull, from the engine's status messages.
#[derive(Debug, Default)]
pub struct PullProgress {
    layers: BTreeMap<String, Layer>,
}

/// What a pull progress line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullSnapshot {
    pub layers_done: usize,
    pub layers: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl PullProgress {
    /// Folds in one status message (`id` is the layer, `status` e.g. `Downloading`).
    pub fn observe(
        &mut self,
        id: Option<&str>,
        status: Option<&str>,
        current: Option<i64>,
        total: Option<i64>,
    ) {
        let (Some(id), Some(status)) = (id, status) else {
            return;
        };
        // Messages about the whole image ("Pulling from library/x", "Digest: …") carry the
        // tag or repository as id, not a layer; layer ids are 12 hex digits.
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return;
        }
        let layer = self.layers.entry(id.to_string()).or_default();
        match status {
            "Downloading" => {
                layer.current = current.unwrap_or(0).max(0) as u64;
                layer.total = total.unwrap_or(0).max(0) as u64;
            }
            "Download complete" | "Verifying Checksum" => layer.current = layer.total,
            "Pull complete" | "Already exists" => {
                layer.current = layer.total;
                layer.done = true;
            }
            _ => {}
        }
    }

    pub fn snapshot(&self) -> PullSnapshot {
        PullSnapshot {
            layers_done: self.layers.values().filter(|l| l.done).count(),
            layers: self.layers.len(),
            bytes_done: self.layers.values().map(|l| l.current).sum(),
            bytes_total: self.layers.values().map(|l| l.total).sum(),
        }
    }
}

/// The build step (`3/7`) named by a line of the classic builder's output (`Step 3/7 : RUN …`)
/// or of BuildKit's plain output (`#5 [3/7] RUN …`).
pub fn build_step(line: &str) -> Option<String> {
    let step = |s: &str| {
        let (a, b) = s.split_once('/')?;
        (!a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit()))
        .then(|| format!("{a}/{b}"))
    };
    if let Some(rest) = line.strip_prefix("Step ") {
        return step(rest.split_whitespace().next()?);
    }
    let open = line.find('[')?;
    let close = line[open..].find(']')? + open;
    let inner = &line[open + 1..close];
    step(inner.split_whitespace().last()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_progress_counts_layers_and_bytes() {
        let mut p = PullProgress::default();
        p.observe(
            Some("latest"),
            Some("Pulling from library/alpine"),
            None,
            None,
        );
        p.observe(Some("aaaaaaaaaaaa"), Some("Pulling fs layer"), None, None);
        p.observe(Some("bbbbbbbbbbbb"), Some("Already exists"), None, None);
        p.observe(
            Some("aaaaaaaaaaaa"),
            Some("Downloading"),
            Some(400),
            Some(1000),
        );
        assert_eq!(
            p.snapshot(),
            PullSnapshot {
                layers_done: 1,
                layers: 2,
                bytes_done: 400,
                bytes_total: 1000
            }
        );
        p.observe(Some("aaaaaaaaaaaa"), Some("Download complete"), None, None);
        p.observe(
            Some("aaaaaaaaaaaa"),
            Some("Extracting"),
            Some(10),
            Some(1000),
        );
        p.observe(Some("aaaaaaaaaaaa"), Some("Pull complete"), None, None);
        let s = p.snapshot();
        assert_eq!((s.layers_done, s.layers, s.bytes_done), (2, 2, 1000));
    }

    #[test]
    fn build_steps_are_read_from_both_builders() {
        assert_eq!(build_step("Step 3/7 : RUN make").as_deref(), Some("3/7"));
        assert_eq!(build_step("#5 [2/4] COPY . /src").as_deref(), Some("2/4"));
        assert_eq!(
            build_step("#7 [builder 3/9] RUN cargo build").as_deref(),
            Some("3/9")
        );
        assert_eq!(build_step("Successfully built 0123"), None);
        assert_eq!(build_step(" ---> Running in abc"), None);
    }

    #[test]
    fn ticker_is_due_once_per_period() {
        let mut t = Ticker::new(Duration::from_secs(5));
        let start = t.last;
        assert!(!t.due(start + Duration::from_secs(1)));
        assert!(t.due(start + Duration::from_secs(5)));
        assert!(!t.due(start + Duration::from_secs(9)));
        assert!(t.due(start + Duration::from_secs(10)));
    }
}
