//! What makes an import run again besides its own record: its child Workspaces. The watch
//! backs off while the API is unavailable instead of retrying at once, over and over.

use std::collections::HashMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::build::ORG_LABEL;
use crate::resources::{OrgImport, Workspace};

/// First wait after a failed watch.
const RETRY_MIN: Duration = Duration::from_millis(800);
/// Longest wait between two attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Backoff of a watch while the API is unavailable: exponential from 0.8 s to a 30 s cap, with
/// jitter (each wait up to twice as long), never giving up, and starting over once an event
/// arrives (kube's `Backoff` over a `backon` builder).
pub(super) struct RetryBackoff {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
}

impl RetryBackoff {
    pub(super) fn new() -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN)
            .with_max_delay(RETRY_MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        RetryBackoff {
            current: builder.build(),
            builder,
        }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.current.next()
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

/// Events of the Workspaces made by org imports; a failed watch is yielded, then waited out.
fn child_events(
    client: Client,
) -> impl Stream<Item = Result<watcher::Event<Workspace>, watcher::Error>> + Send {
    let api: Api<Workspace> = Api::all(client);
    watcher(api, watcher::Config::default().labels(ORG_LABEL)).backoff(RetryBackoff::new())
}

/// The owning OrgImport of a child whose spec changed (generation) or that was deleted: the
/// import puts it back. Status updates (heartbeats) do not trigger anything.
pub(super) fn child_triggers(client: Client) -> impl Stream<Item = ObjectRef<OrgImport>> + Send {
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    child_events(client).filter_map(move |ev| {
        let out = match ev {
            Ok(watcher::Event::InitApply(w)) => {
                generations.insert(w.uid().unwrap_or_default(), w.metadata.generation);
                None
            }
            Ok(watcher::Event::Apply(w)) => {
                let before = generations.insert(w.uid().unwrap_or_default(), w.metadata.generation);
                (before != Some(w.metadata.generation))
                    .then(|| owner(&w))
                    .flatten()
            }
            Ok(watcher::Event::Delete(w)) => {
                generations.remove(&w.uid().unwrap_or_default());
                owner(&w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching org workspaces failed; backing off");
                None
            }
            _ => None,
        };
        futures::future::ready(out)
    })
}

/// The OrgImport that owns `w`.
fn owner(w: &Workspace) -> Option<ObjectRef<OrgImport>> {
    w.owner_references()
        .iter()
        .find(|o| o.kind == "OrgImport" && o.api_version == crate::resources::API_VERSION)
        .map(|o| ObjectRef::new(&o.name).within(&w.namespace().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_starts_over() {
        let mut b = RetryBackoff::new();
        let waits: Vec<Duration> = b.by_ref().take(12).collect();
        assert_eq!(waits.len(), 12, "it never gives up");
        assert!(waits[0] >= RETRY_MIN && waits[0] <= RETRY_MIN * 2);
        assert!(waits[3] >= RETRY_MIN * 8, "exponential: {waits:?}");
        assert!(
            waits.iter().all(|w| *w <= RETRY_MAX * 2),
            "capped: {waits:?}"
        );
        b.reset();
        assert!(b.next().is_some_and(|w| w <= RETRY_MIN * 2));
    }

    /// Against a closed port every attempt fails at once: a watch without backoff makes
    /// thousands of attempts a second; this one waits between them.
    #[tokio::test]
    async fn the_child_watch_backs_off_while_the_api_is_down() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let url = format!("http://127.0.0.1:{port}").parse().expect("url");
        let client = Client::try_from(kube::Config::new(url)).expect("client");
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = failures.clone();
        let watch = child_events(client).for_each(move |e| {
            if e.is_err() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            futures::future::ready(())
        });
        let window = Duration::from_secs(3);
        assert!(
            tokio::time::timeout(window, watch).await.is_err(),
            "the watch never ends"
        );
        let n = failures.load(std::sync::atomic::Ordering::SeqCst);
        // Attempts at 0 s, after 0.8–1.6 s, then 1.6–3.2 s later: at most 3 in the window.
        assert!(n >= 1, "the watch tried");
        assert!(
            n <= 5,
            "{n} attempts in {window:?}: the watch does not back off"
        );
    }
}
