//! The workspace container's lifecycle: create or reuse on start (replacing it when its spec
//! hash or image changed), stop, remove, inspect.

use std::collections::BTreeSet;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};

use super::errors::{
    bounded, is_not_found, is_removal_in_progress, map_create_error, map_error, status_of,
};
use super::spec::{Limits, data_volumes, limits, normalized_env, redact, spec_hash};
use super::volumes::config_payload;
use super::{
    AGENT_PORT, BackendError, DockerBackend, LABEL_ATTEMPT, LABEL_SPEC_HASH, Lookup, Presence,
    StartSpec, Started, WorkspaceRef,
};

impl DockerBackend {
    pub(super) async fn lookup_container(&self, ws: &WorkspaceRef) -> Result<Lookup, BackendError> {
        let name = ws.container_name();
        match self.timed(self.docker.inspect_container(&name, None)).await {
            Ok(c) => {
                let labels = c.config.as_ref().and_then(|cfg| cfg.labels.as_ref());
                if labels.is_some_and(|l| self.owned_by(l, ws)) {
                    Ok(Lookup::Owned(Box::new(c)))
                } else {
                    tracing::warn!(container = %name, "a container with the workspace's name exists but is not managed for this workspace; leaving it alone");
                    Ok(Lookup::Foreign)
                }
            }
            Err(e) if is_not_found(&e) => Ok(Lookup::Absent),
            Err(e) => Err(map_error("inspect container", e)),
        }
    }

    /// The local image id of `image`, or None when the engine does not have it.
    async fn local_image_id(&self, image: &str) -> Result<Option<String>, BackendError> {
        match self.timed(self.docker.inspect_image(image)).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error("inspect image", e)),
        }
    }

    /// Force-removes one container; gone / already being removed is success.
    pub(super) async fn force_remove(&self, id_or_name: &str) -> Result<(), BackendError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(false)
            .build();
        match self
            .timed(self.docker.remove_container(id_or_name, Some(options)))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) || is_removal_in_progress(&e) => Ok(()),
            Err(e) => Err(map_error("remove container", e)),
        }
    }

    /// Polls until no container with this id exists, up to `wait`. Returns whether it is gone.
    pub(super) async fn wait_container_gone(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<bool, BackendError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.timed(self.docker.inspect_container(id, None)).await {
                Err(e) if is_not_found(&e) => return Ok(true),
                Err(e) => return Err(map_error("inspect container", e)),
                Ok(_) if tokio::time::Instant::now() >= deadline => return Ok(false),
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn create_workspace_container(
        &self,
        spec: &StartSpec,
        body: ContainerCreateBody,
    ) -> Result<String, BackendError> {
        let name = spec.workspace.container_name();
        let mut options = CreateContainerOptionsBuilder::default().name(&name);
        if let Some(p) = spec.platform.as_deref().filter(|p| !p.is_empty()) {
            options = options.platform(p);
        }
        let options = options.build();
        match self
            .timed(self.docker.create_container(Some(options), body))
            .await
        {
            Ok(created) => {
                for w in &created.warnings {
                    tracing::warn!(container = %name, warning = %redact(w, &spec.env), "docker create warning");
                }
                tracing::info!(container = %name, id = %created.id, image = %spec.image, "created workspace container");
                Ok(created.id)
            }
            Err(e) if status_of(&e) == Some(409) => Err(BackendError::Transient(format!(
                "container name {name} is still in use (a previous container is being removed or was created concurrently)"
            ))),
            Err(DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.to_ascii_lowercase().contains("network") => {
                // Removed behind our back: the next attempt re-creates it.
                self.network_ready
                    .store(false, std::sync::atomic::Ordering::Release);
                Err(BackendError::Transient(format!(
                    "network {} is missing; it is re-created on the next attempt",
                    self.network
                )))
            }
            Err(e) => Err(map_create_error(e, &spec.image, &spec.env)),
        }
    }

    /// Reads the published host URL of port 8000, waiting briefly for a just-started container.
    async fn wait_host_url(&self, id: &str) -> Result<String, BackendError> {
        let mut last_state = String::from("unknown");
        for attempt in 0..15 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let c = self
                .timed(self.docker.inspect_container(id, None))
                .await
                .map_err(|e| map_error("inspect container", e))?;
            if let Some(url) = host_url(&c) {
                return Ok(url);
            }
            last_state = c
                .state
                .as_ref()
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".to_string());
        }
        Err(BackendError::Transient(format!(
            "container {id} has no published port {AGENT_PORT} (state {last_state})"
        )))
    }

    pub(super) async fn start_workspace(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        let ws = &spec.workspace;
        let payload = config_payload(&spec.files)?;
        let env = normalized_env(&spec.env)?;
        let limits = limits(spec)?;
        let hash = spec_hash(spec, &env, limits, &self.network);

        // Independent engine calls, issued together: they dominate the time before the create.
        // The data volumes (ADR 0048) are among them: one after the other, they cost a tier-2
        // workspace about 15 ms before its create.
        let data = futures::future::try_join_all(
            data_volumes(spec)
                .into_iter()
                .map(|(name, _)| self.ensure_data_volume(ws, name)),
        );
        let (network, volume, data, host_cpus, image_id, lookup) = tokio::join!(
            self.ensure_network_once(),
            self.ensure_volume(ws),
            data,
            self.host_cpus(),
            self.local_image_id(&spec.image),
            self.lookup_container(ws),
        );
        network?;
        let volume_dir = volume?;
        data?;
        let host_cpus = host_cpus?;
        let image_id = image_id?;

        let mut existing = match lookup? {
            Lookup::Absent => None,
            Lookup::Foreign => {
                return Err(BackendError::Permanent(format!(
                    "container name {} is taken by a container molecule does not manage",
                    ws.container_name()
                )));
            }
            Lookup::Owned(c) => Some(c),
        };
        if let Some(c) = &existing {
            let id = c.id.clone().unwrap_or_else(|| ws.container_name());
            let same_spec = c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.as_ref())
                .and_then(|l| l.get(LABEL_SPEC_HASH))
                .is_some_and(|h| *h == hash);
            let same_image = match (&image_id, &c.image) {
                (Some(want), Some(have)) => want == have,
                // Tag gone locally: keep a container that otherwise matches.
                (None, _) => true,
                (Some(_), None) => false,
            };
            let status = c.state.as_ref().and_then(|s| s.status);
            let unusable = matches!(
                status,
                Some(ContainerStateStatusEnum::DEAD | ContainerStateStatusEnum::REMOVING)
            );
            if !same_spec || !same_image || unusable {
                tracing::info!(container = %id, same_spec, same_image, ?status, "replacing workspace container");
                self.force_remove(&id).await?;
                if !self
                    .wait_container_gone(&id, Duration::from_secs(15))
                    .await?
                {
                    return Err(BackendError::Transient(format!(
                        "old container {id} is still being removed"
                    )));
                }
                existing = None;
            }
        }

        let (id, running, image_id) = match existing {
            Some(c) => {
                let id = c.id.clone().unwrap_or_else(|| ws.container_name());
                let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                let image = c.image.clone().or(image_id).unwrap_or_default();
                if let Some(payload) = payload {
                    if running {
                        self.upload(&id, payload.tar).await?;
                    } else {
                        self.write_before_start(&id, volume_dir, payload).await?;
                    }
                }
                (id, running, image)
            }
            None => {
                let Some(image_id) = image_id else {
                    return Err(BackendError::ImageMissing(spec.image.clone()));
                };
                // The hash keeps the requested limit; the engine gets at most the host's CPUs
                // (tier 4 asks for 4, a 2-CPU host would refuse the create otherwise).
                let host_nano = host_cpus.saturating_mul(1_000_000_000);
                let applied = Limits {
                    nano_cpus: limits.nano_cpus.map(|n| {
                        if n > host_nano {
                            tracing::debug!(
                                requested = n,
                                applied = host_nano,
                                "capping CPU limit to the host's CPUs"
                            );
                        }
                        n.min(host_nano)
                    }),
                    ..limits
                };
                let body = self.container_body(spec, &env, applied, &hash);
                let id = self.create_workspace_container(spec, body).await?;
                if let Some(payload) = payload {
                    // Before the first start (no token race, ADR 0006). A failure leaves a created
                    // container with the right hash; the retry writes again and starts it.
                    self.write_before_start(&id, volume_dir, payload).await?;
                }
                (id, false, image_id)
            }
        };

        if !running {
            let _permit = self.starts.acquire().await;
            self.timed(self.docker.start_container(&id, None))
                .await
                .map_err(|e| map_error("start container", e))?;
            tracing::info!(container = %id, "started workspace container");
        }
        let host_url = self.wait_host_url(&id).await?;
        Ok(Started {
            container_id: id,
            host_url,
            image_id,
        })
    }

    pub(super) async fn stop_workspace(&self, ws: &WorkspaceRef) -> Result<(), BackendError> {
        let id = match self.lookup_container(ws).await? {
            Lookup::Absent | Lookup::Foreign => return Ok(()),
            Lookup::Owned(c) => c.id.clone().unwrap_or_else(|| ws.container_name()),
        };
        let secs = i32::try_from(self.stop_timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        let bound = self.stop_timeout + self.call_timeout;
        match bounded(bound, self.docker.stop_container(&id, Some(options))).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_error("stop container", e)),
        }
    }

    pub(super) async fn remove_workspace(
        &self,
        ws: &WorkspaceRef,
        remove_volume: bool,
    ) -> Result<(), BackendError> {
        let mut ids = BTreeSet::new();
        if let Lookup::Owned(c) = self.lookup_container(ws).await? {
            ids.insert(c.id.clone().unwrap_or_else(|| ws.container_name()));
        }
        ids.extend(self.labelled_containers(ws).await?);
        for id in &ids {
            self.force_remove(id).await?;
        }
        if !remove_volume {
            return Ok(());
        }
        for id in &ids {
            if !self.wait_container_gone(id, Duration::from_secs(5)).await? {
                tracing::warn!(container = %id, "container still being removed; keeping the volume for a later pass");
                return Ok(());
            }
        }
        // Every volume of the workspace: the config volume, `/workspace` and the session
        // directory (whichever exist; ADR 0048).
        for name in [
            ws.volume_name(),
            ws.workspace_volume_name(),
            ws.sessions_volume_name(),
        ] {
            self.remove_owned_volume(ws, &name).await?;
        }
        Ok(())
    }

    pub(super) async fn inspect_workspace(
        &self,
        ws: &WorkspaceRef,
    ) -> Result<Presence, BackendError> {
        let c = match self.lookup_container(ws).await? {
            Lookup::Absent | Lookup::Foreign => return Ok(Presence::Absent),
            Lookup::Owned(c) => c,
        };
        Ok(presence_of(&c, &ws.container_name()))
    }
}

fn presence_of(c: &ContainerInspectResponse, fallback_id: &str) -> Presence {
    let container_id = c.id.clone().unwrap_or_else(|| fallback_id.to_string());
    let state = c.state.clone().unwrap_or_default();
    let running = state.running.unwrap_or(false) && !state.restarting.unwrap_or(false);
    if running {
        Presence::Running {
            container_id,
            host_url: host_url(c),
            started_at: state.started_at.filter(|s| !s.is_empty()),
            attempt: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.as_ref())
                .and_then(|l| l.get(LABEL_ATTEMPT))
                .cloned(),
            waiting: None,
        }
    } else {
        Presence::Stopped {
            container_id,
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            reason: None,
        }
    }
}

/// `http://<ip>:<port>` of the published agent port, from inspect.
fn host_url(c: &ContainerInspectResponse) -> Option<String> {
    let bindings = c
        .network_settings
        .as_ref()?
        .ports
        .as_ref()?
        .get(AGENT_PORT)?
        .as_ref()?;
    bindings.iter().find_map(|b| {
        let port = b
            .host_port
            .as_deref()
            .filter(|p| !p.is_empty() && *p != "0")?;
        let ip = match b.host_ip.as_deref() {
            None | Some("") | Some("0.0.0.0") => "127.0.0.1",
            Some(ip) => ip,
        };
        if ip.contains(':') {
            Some(format!("http://[{ip}]:{port}"))
        } else {
            Some(format!("http://{ip}:{port}"))
        }
    })
}
