//! The controller host: builds a `kube::Client` (from the serve-written kubeconfig in embedded
//! mode, or KUBECONFIG/in-cluster config in cluster mode) and runs the selected controllers
//! until shutdown. Controllers never know which API server they talk to.

use std::sync::Arc;

use crate::shutdown::Shutdown;
use kube::{Client, ResourceExt};

use crate::telemetry::Metrics;

pub mod reaper;
pub mod runtime;
pub mod workspace;

/// Names of the controllers this build has, in start order.
pub const KNOWN: &[&str] = &["workspace", "reaper", "runtime"];

/// The Docker network every workspace joins (W01).
pub const NETWORK: &str = "molecule-core-net";

/// Settings of the controller host.
#[derive(Clone)]
pub struct HostSettings {
    /// Workspace controller settings; `platform_url` is filled in once the agent listener is bound.
    pub workspace: workspace::Settings,
    /// Port of the agent listener on the Docker network's gateway (0: any).
    pub agent_port: u16,
    /// Periodic resync of the orphan reaper.
    pub reap_every: std::time::Duration,
    /// Where the registry endpoints find the controller's state.
    pub registry: crate::shim::registry::Slot,
    /// Where controllers record audit rows (the store in embedded mode; Postgres from
    /// DATABASE_URL in cluster mode; the log alone otherwise).
    pub audit: crate::audit::Audit,
    /// Installation id labelled on every container and volume; the reaper only touches its own.
    pub instance: String,
    /// Image resolution settings (registry, template prefix and token, build cache, platform).
    pub images: crate::images::ImageSettings,
    /// Where the shim's refresh route finds the image service.
    pub images_slot: crate::shim::images::Slot,
}

/// Which controllers to run (`--controllers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection(pub Vec<String>);

impl Selection {
    /// Parses `all`, `none`, or a comma-separated list of known names.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" | "" => Ok(Selection(KNOWN.iter().map(|s| s.to_string()).collect())),
            "none" => Ok(Selection(vec![])),
            list => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect();
                if let Some(bad) = names.iter().find(|n| !KNOWN.contains(&n.as_str())) {
                    return Err(format!(
                        "unknown controller {bad:?}; known controllers: {}",
                        if KNOWN.is_empty() {
                            "(none in this build)".to_string()
                        } else {
                            KNOWN.join(", ")
                        }
                    ));
                }
                Ok(Selection(names))
            }
        }
    }
}

/// Checks that the molecule.ai kinds are served, with an install hint when they are not.
pub async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let resources = client.list_api_group_resources(crate::resources::API_VERSION).await.map_err(|e| {
        anyhow::anyhow!("the API server does not serve {} ({e}); install the CRDs first: kubectl apply -f crds/", crate::resources::API_VERSION)
    })?;
    for crd in crate::resources::all_crds() {
        if !resources
            .resources
            .iter()
            .any(|r| r.name == crd.spec.names.plural)
        {
            anyhow::bail!(
                "the API server does not serve {}; install the CRDs first: kubectl apply -f crds/",
                crd.spec.names.plural
            );
        }
    }
    Ok(())
}

/// The default installation id in cluster mode: the uid of the `default` Namespace, which is
/// stable for the life of a cluster and the same for every replica.
pub async fn cluster_instance_id(client: &Client) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    let ns = kube::Api::<Namespace>::all(client.clone())
        .get("default")
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "reading the default Namespace for the instance id ({e}); set --instance"
            )
        })?;
    let uid: String = ns
        .metadata
        .uid
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    if uid.len() < 12 {
        anyhow::bail!("the default Namespace has no usable uid; set --instance");
    }
    Ok(uid)
}

/// Runs the selected controllers until `shutdown` fires.
pub async fn run(
    client: Client,
    selection: Selection,
    host: HostSettings,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::controller::Controller;
    use kube::runtime::reflector::ObjectRef;
    use kube::runtime::{WatchStreamExt, watcher};

    check_crds(&client).await?;
    metrics.set(
        "molecule_controllers_running",
        &[],
        selection.0.len() as f64,
    );
    let wants = |n: &str| selection.0.iter().any(|s| s == n);
    if !wants("workspace") && !wants("reaper") && !wants("runtime") {
        tracing::info!("controller host started with no controllers");
        shutdown.wait().await;
        return Ok(());
    }
    let names: Vec<&str> = workspace::env::mutators().iter().map(|m| m.name).collect();
    tracing::info!(mutators = ?names, "env mutator chain");

    // The Docker engine may come up after us: retry until it answers.
    let backend = loop {
        match crate::backends::docker::DockerBackend::connect(NETWORK, &host.instance).await {
            Ok(b) => break b,
            Err(e) => {
                tracing::warn!(error = %e, "Docker is not reachable; workspaces cannot be provisioned until it is (retrying)");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    _ = shutdown.clone().wait() => return Ok(()),
                }
            }
        }
    };
    let network = backend.ensure_network().await?;
    let docker = backend.docker().clone();
    let images = Arc::new(crate::images::Images::new(
        docker.clone(),
        client.clone(),
        host.images.clone(),
        metrics.clone(),
    ));
    let _ = host.images_slot.set(images.clone());
    let backend: Arc<dyn crate::backends::WorkspaceBackend> = Arc::new(backend);
    let (reap_tx, reap_rx) = tokio::sync::mpsc::channel::<()>(64);
    let reap_deleted_tx = reap_tx.clone();
    let (ws_tx, ws_rx) = tokio::sync::mpsc::channel::<ObjectRef<crate::resources::Workspace>>(1024);
    let events = tokio::spawn({
        let docker = docker.clone();
        let instance = host.instance.clone();
        async move {
            let mut s = std::pin::pin!(crate::backends::events::managed_events(docker, instance,));
            while let Some(ev) = s.next().await {
                if ev.kind == crate::backends::ManagedKind::Container
                    && !ev.name.is_empty()
                    && matches!(
                        ev.action.as_str(),
                        "die" | "stop" | "kill" | "oom" | "destroy" | "start"
                    )
                {
                    let _ = ws_tx.try_send(ObjectRef::new(&ev.name).within(&ev.namespace));
                }
                if matches!(ev.action.as_str(), "create" | "start" | "destroy" | "die") {
                    let _ = reap_tx.try_send(());
                }
            }
        }
    });
    let mut tasks = vec![];
    if wants("workspace") {
        let gateway = network
            .gateway_ip
            .ok_or_else(|| anyhow::anyhow!("the Docker network {NETWORK} has no IPv4 gateway"))?;
        let listener = match tokio::net::TcpListener::bind((gateway, host.agent_port)).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind((gateway, 0)).await?,
        };
        let platform_url = format!("http://{}", listener.local_addr()?);
        tracing::info!(url = %platform_url, "agent listener ready (registry endpoints for containers)");
        let agent_app = crate::shim::registry::router(host.registry.clone());
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, agent_app)
                .with_graceful_shutdown(stop.wait())
                .await;
        }));
        let settings = workspace::Settings {
            platform_url,
            ..host.workspace.clone()
        };
        let reporter = kube::runtime::events::Reporter {
            controller: "molecule-workspace".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
        let ctx = Arc::new(workspace::Context::new(
            client.clone(),
            backend.clone(),
            images.clone(),
            recorder,
            settings,
            metrics.clone(),
            host.audit.clone(),
        ));
        // Status writes of the controller itself and routine heartbeats do not re-trigger
        // reconciles: only what `trigger_hash` covers does (plus requeues and Docker events).
        let api: kube::Api<crate::resources::Workspace> = kube::Api::all(client.clone());
        let (reader, writer) = kube::runtime::reflector::store();
        let trigger = kube::runtime::reflector(writer, watcher(api, watcher::Config::default()))
            .applied_objects()
            .predicate_filter(workspace::plan::trigger_hash, Default::default());
        // A Secret change wakes the workspaces whose env reads it.
        let by_secret = {
            let reader = reader.clone();
            move |secret: k8s_openapi::api::core::v1::Secret| {
                let ns = secret.metadata.namespace.clone().unwrap_or_default();
                let name = secret.metadata.name.clone().unwrap_or_default();
                reader
                    .state()
                    .into_iter()
                    .filter(|w| {
                        w.metadata.namespace.as_deref() == Some(ns.as_str())
                            && workspace::env::referenced_secrets(&w.name_any(), &w.spec)
                                .contains(&name)
                    })
                    .map(|w| ObjectRef::from_obj(&*w))
                    .collect::<Vec<_>>()
            }
        };
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::all(client.clone());
        let controller = Controller::for_stream(trigger, reader)
            .watches(secrets, watcher::Config::default(), by_secret)
            .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(ws_rx))
            .graceful_shutdown_on(shutdown.clone().wait());
        let _ = host
            .registry
            .set(Arc::new(crate::shim::registry::RegistryState {
                client: client.clone(),
                workspaces: controller.store(),
                metrics: metrics.clone(),
            }));
        tasks.push(tokio::spawn(
            controller
                .run(workspace::reconcile, workspace::error_policy, ctx)
                .for_each(|_| async {}),
        ));
    }
    if wants("runtime") {
        let reporter = kube::runtime::events::Reporter {
            controller: "molecule-runtime".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
        let ctx = Arc::new(runtime::Context::new(
            client.clone(),
            images.clone(),
            recorder,
            metrics.clone(),
        ));
        // Resolution changes found by workspace starts (a rebuilt template) wake the record.
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(256);
        images.set_notify(tx);
        let nudges = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|name| ObjectRef::<crate::resources::Runtime>::new(&name));
        // Status writes do not wake the controller; spec changes, requeues and nudges do.
        let api: kube::Api<crate::resources::Runtime> = kube::Api::all(client.clone());
        let (reader, writer) = kube::runtime::reflector::store();
        let trigger = kube::runtime::reflector(writer, watcher(api, watcher::Config::default()))
            .applied_objects()
            .predicate_filter(kube::runtime::predicates::generation, Default::default());
        let controller = Controller::for_stream(trigger, reader)
            .reconcile_on(nudges)
            .graceful_shutdown_on(shutdown.clone().wait());
        tasks.push(tokio::spawn(
            controller
                .run(runtime::reconcile, runtime::error_policy, ctx)
                .for_each(|_| async {}),
        ));
    }
    if wants("reaper") {
        // A record that disappears (deleted, finalizer stripped, store wiped and refilled) leaves
        // orphans at once: trigger a pass on every deletion the watch reports.
        let deletions = {
            let tx = reap_deleted_tx;
            let api: kube::Api<crate::resources::Workspace> = kube::Api::all(client.clone());
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                let mut stream = std::pin::pin!(stream);
                let stop = stop.wait();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        ev = stream.next() => match ev {
                            Some(Ok(watcher::Event::Delete(_))) => {
                                let _ = tx.try_send(());
                            }
                            Some(_) => {}
                            None => return,
                        },
                        _ = &mut stop => return,
                    }
                }
            })
        };
        tasks.push(deletions);
        tasks.push(tokio::spawn(reaper::run(
            client.clone(),
            backend.clone(),
            host.reap_every,
            reap_rx,
            metrics.clone(),
            shutdown.clone(),
        )));
    }
    tracing::info!(controllers = ?selection.0, "controller host started");
    for t in tasks {
        let _ = t.await;
    }
    events.abort();
    tracing::info!("controller host stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_parses_all_none_and_rejects_unknown() {
        assert_eq!(Selection::parse("none").expect("none").0.len(), 0);
        assert_eq!(Selection::parse("all").expect("all").0.len(), KNOWN.len());
        let e = Selection::parse("bogus").expect_err("unknown");
        assert!(e.contains("unknown controller \"bogus\""), "{e}");
    }
}
