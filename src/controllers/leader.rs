//! Leader election with a `coordination.k8s.io/v1` Lease, following client-go's rules
//! (ADR 0025). Every replica runs an [`Elector`]; it publishes "this replica leads" on a
//! `watch` channel that the controller host uses to start and stop the controllers.
//!
//! - A held Lease expires `leaseDurationSeconds` after this replica last *saw it change* (its
//!   own clock; other replicas' clocks are never compared).
//! - The holder renews every `retry_period`. When renewals keep failing for `renew_deadline`
//!   (shorter than the lease duration), or the Lease shows another holder, it steps down at
//!   once, before anyone else may take over.
//! - A replica that shuts down releases the Lease (holder cleared); the others watch the Lease
//!   and take it over immediately instead of waiting out the duration.
//!
//! Writes use optimistic concurrency (the Lease's resourceVersion), so two replicas can never
//! both win one round.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};

use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Election settings (`molecule operator --lease-*`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the Lease (the operator's own namespace in a cluster).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's holder identity; unique per process.
    pub identity: String,
    /// How long a Lease that stopped changing stays held (15 s default).
    pub lease_duration: Duration,
    /// The holder steps down when it could not renew for this long (10 s default).
    pub renew_deadline: Duration,
    /// How often the holder renews and the others re-check (2 s default).
    pub retry_period: Duration,
}

impl Settings {
    /// The client-go defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Settings {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the ordering the safety argument needs: retry < renew deadline < lease duration.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero()
            || self.retry_period >= self.renew_deadline
            || self.renew_deadline >= self.lease_duration
        {
            return Err(format!(
                "leader election needs retry period < renew deadline < lease duration (got {}s, {}s, {}s)",
                self.retry_period.as_secs_f64(),
                self.renew_deadline.as_secs_f64(),
                self.lease_duration.as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// A holder identity unique to this process: `<hostname>_<random>` (two replicas on one host,
/// or a restarted pod with the same name, never share one).
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "molecule".into());
    format!("{host}_{}", crate::util::random_suffix(8))
}

/// What to do with the Lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Free, expired or ours: write ourselves in (acquire or renew).
    Take,
    /// Someone else holds it; it expires in `remaining` unless it changes again.
    Follow { remaining: Duration },
}

/// The pure election rule. `unchanged_for` is how long the Lease's (holder, renewTime) has been
/// the same as far as this replica saw; `duration` the Lease's own `leaseDurationSeconds`.
pub fn decide(
    holder: Option<&str>,
    me: &str,
    unchanged_for: Duration,
    duration: Duration,
) -> Decision {
    match holder {
        None | Some("") => Decision::Take,
        Some(h) if h == me => Decision::Take,
        Some(_) if unchanged_for >= duration => Decision::Take,
        Some(_) => Decision::Follow {
            remaining: duration - unchanged_for,
        },
    }
}

/// The spec this replica writes when it takes the Lease: a renewal keeps the acquire time and
/// the transition count; an acquisition from someone else (or from nobody) counts a transition.
pub fn taken_spec(
    current: Option<&LeaseSpec>,
    me: &str,
    now: jiff::Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let ours = current.and_then(|c| c.holder_identity.as_deref()) == Some(me);
    let transitions = current.and_then(|c| c.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs().clamp(1, i32::MAX as u64) as i32),
        acquire_time: if ours {
            current.and_then(|c| c.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match current {
            None => 0,
            Some(_) if ours => transitions,
            Some(_) => transitions.saturating_add(1),
        }),
        ..Default::default()
    }
}

/// The spec written on release: no holder, so others take over at once.
pub fn released_spec(current: &LeaseSpec, now: jiff::Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// When this replica last saw the Lease change, on its own clock.
struct Observation {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

impl Observation {
    fn update(slot: &mut Option<Observation>, spec: &LeaseSpec) {
        let changed = match slot {
            Some(o) => o.holder != spec.holder_identity || o.renew != spec.renew_time,
            None => true,
        };
        if changed {
            *slot = Some(Observation {
                holder: spec.holder_identity.clone(),
                renew: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
    }
}

enum Round {
    Leading,
    Following(Duration),
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    metrics: std::sync::Arc<Metrics>,
}

impl Elector {
    pub fn new(client: kube::Client, settings: Settings, metrics: std::sync::Arc<Metrics>) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            metrics,
        }
    }

    fn lease_duration(&self, spec: &LeaseSpec) -> Duration {
        spec.lease_duration_seconds
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or(self.settings.lease_duration)
    }

    /// One round: read the Lease, then acquire, renew or follow.
    async fn round(&self, seen: &mut Option<Observation>) -> Result<Round, kube::Error> {
        let me = &self.settings.identity;
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(taken_spec(
                    None,
                    me,
                    jiff::Timestamp::now(),
                    self.settings.lease_duration,
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Round::Following(self.settings.retry_period))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        Observation::update(seen, &spec);
        let unchanged_for = seen.as_ref().map(|o| o.at.elapsed()).unwrap_or_default();
        match decide(
            spec.holder_identity.as_deref(),
            me,
            unchanged_for,
            self.lease_duration(&spec),
        ) {
            Decision::Follow { remaining } => Ok(Round::Following(remaining)),
            Decision::Take => {
                lease.spec = Some(taken_spec(
                    Some(&spec),
                    me,
                    jiff::Timestamp::now(),
                    self.settings.lease_duration,
                ));
                // `replace` sends the resourceVersion we read: a concurrent winner makes it 409.
                match self
                    .api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(Round::Leading),
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        Ok(Round::Following(self.settings.retry_period))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Clears the holder if it is still us.
    async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released_spec(&spec, jiff::Timestamp::now()));
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }

    fn set_leading(&self, tx: &watch::Sender<bool>, leading: bool) {
        self.publish(tx, leading, false)
    }

    fn publish(&self, tx: &watch::Sender<bool>, leading: bool, stopping: bool) {
        let changed = tx.send_if_modified(|v| {
            let changed = *v != leading;
            *v = leading;
            changed
        });
        self.metrics.set(
            "molecule_leader",
            &[("lease", &self.settings.name)],
            if leading { 1.0 } else { 0.0 },
        );
        if changed {
            if leading {
                self.metrics.inc(
                    "molecule_leader_transitions_total",
                    &[("lease", &self.settings.name)],
                );
                tracing::info!(event = "leader.acquired", identity = %self.settings.identity, lease = %self.settings.name, "this replica is the leader");
            } else if stopping {
                tracing::info!(event = "leader.stepped_down", identity = %self.settings.identity, lease = %self.settings.name, "stepping down for shutdown");
            } else {
                tracing::warn!(event = "leader.lost", identity = %self.settings.identity, lease = %self.settings.name, "this replica is no longer the leader");
            }
        }
    }

    /// Watches the Lease so a release or a new holder is seen at once, not a retry period later.
    fn watch_lease(
        &self,
    ) -> (
        mpsc::Receiver<Option<LeaseSpec>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let cfg =
            watcher::Config::default().fields(&format!("metadata.name={}", self.settings.name));
        let stream = watcher(self.api.clone(), cfg);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let spec = match ev {
                    Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                        Some(l.spec.unwrap_or_default())
                    }
                    Ok(watcher::Event::Delete(_)) => None,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "lease watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let _ = tx.try_send(spec);
            }
        });
        (rx, task)
    }

    /// Campaigns until `release` fires, publishing leadership on `leading`; then, if this
    /// replica holds the Lease, clears it (the caller stops its controllers first).
    pub async fn run(self, leading: watch::Sender<bool>, release: Shutdown) {
        if let Err(e) = self.settings.validate() {
            tracing::error!("{e}");
            return;
        }
        self.set_leading(&leading, false);
        let (mut changes, watch_task) = self.watch_lease();
        let stop = release.wait();
        tokio::pin!(stop);
        let mut seen: Option<Observation> = None;
        let mut last_renew: Option<Instant> = None;
        'campaign: loop {
            // A hung API call must not keep a leader past its renew deadline.
            let budget = match last_renew {
                Some(at) => self
                    .settings
                    .renew_deadline
                    .saturating_sub(at.elapsed())
                    .max(Duration::from_millis(100)),
                None => self.settings.renew_deadline,
            };
            let round = match tokio::time::timeout(budget, self.round(&mut seen)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {}ms", budget.as_millis())),
            };
            let wait = match round {
                Ok(Round::Leading) => {
                    last_renew = Some(Instant::now());
                    self.set_leading(&leading, true);
                    self.settings.retry_period
                }
                Ok(Round::Following(remaining)) => {
                    last_renew = None;
                    self.set_leading(&leading, false);
                    remaining.min(self.settings.retry_period)
                }
                Err(e) => {
                    self.metrics.inc(
                        "molecule_leader_errors_total",
                        &[("lease", &self.settings.name)],
                    );
                    tracing::warn!(error = %e, lease = %self.settings.name, "leader election round failed");
                    if let Some(at) = last_renew
                        && at.elapsed() >= self.settings.renew_deadline
                    {
                        // Others may take over once the lease duration passes: stop first.
                        last_renew = None;
                        self.set_leading(&leading, false);
                    }
                    // While leading, retry sooner than the renew deadline runs out.
                    (self.settings.retry_period / 2).max(Duration::from_millis(100))
                }
            };
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = &mut stop => break 'campaign,
                    Some(spec) = changes.recv() => {
                        let holder = spec.as_ref().and_then(|s| s.holder_identity.clone());
                        let mine = holder.as_deref() == Some(self.settings.identity.as_str());
                        if let Some(spec) = &spec {
                            Observation::update(&mut seen, spec);
                        }
                        if *leading.borrow() && !mine {
                            // Someone else holds it now: stop writing at once.
                            last_renew = None;
                            self.set_leading(&leading, false);
                            break;
                        }
                        if !*leading.borrow() && holder.as_deref().is_none_or(str::is_empty) {
                            break; // released or deleted: try right away
                        }
                    }
                }
            }
        }
        watch_task.abort();
        let was_leading = *leading.borrow();
        self.publish(&leading, false, true);
        if was_leading {
            match tokio::time::timeout(Duration::from_secs(5), self.release()).await {
                Ok(Ok(true)) => {
                    tracing::info!(event = "leader.released", lease = %self.settings.name, "released the lease")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not release the lease; it expires on its own")
                }
                Err(_) => tracing::warn!("releasing the lease timed out; it expires on its own"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn free_own_and_expired_leases_are_taken() {
        assert_eq!(decide(None, "a", Duration::ZERO, D), Decision::Take);
        assert_eq!(decide(Some(""), "a", Duration::ZERO, D), Decision::Take);
        assert_eq!(decide(Some("a"), "a", Duration::ZERO, D), Decision::Take);
        assert_eq!(decide(Some("b"), "a", D, D), Decision::Take);
        assert_eq!(
            decide(Some("b"), "a", Duration::from_secs(4), D),
            Decision::Follow {
                remaining: Duration::from_secs(11)
            }
        );
    }

    #[test]
    fn renewals_keep_acquire_time_and_acquisitions_count_transitions() {
        let t0 = jiff::Timestamp::from_second(1_700_000_000).expect("ts");
        let t1 = jiff::Timestamp::from_second(1_700_000_002).expect("ts");
        let created = taken_spec(None, "a", t0, D);
        assert_eq!(created.holder_identity.as_deref(), Some("a"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(15));
        let renewed = taken_spec(Some(&created), "a", t1, D);
        assert_eq!(renewed.acquire_time, created.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(t1)));
        assert_eq!(renewed.lease_transitions, Some(0));
        let taken = taken_spec(Some(&renewed), "b", t1, D);
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(t1)));
        assert_eq!(taken.lease_transitions, Some(1));
        let released = released_spec(&taken, t1);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(1));
        assert_eq!(decide(None, "c", Duration::ZERO, D), Decision::Take);
    }

    #[test]
    fn settings_must_order_retry_renew_and_duration() {
        let s = Settings::new("ns", "l", "me");
        assert!(s.validate().is_ok());
        let bad = Settings {
            renew_deadline: Duration::from_secs(20),
            ..s.clone()
        };
        assert!(bad.validate().is_err());
        let bad = Settings {
            retry_period: Duration::ZERO,
            ..s
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        assert_ne!(default_identity(), default_identity());
    }
}
