//! The in-process harness (ADR 0045): the embedded API server on 127.0.0.1:0 with a SQLite
//! store in a temporary directory, a `kube::Client` for it, and the controllers run against
//! it with the simulated backend — no Docker, no child process.
//!
//! The registry endpoints (`/registry/*`) are served on the same port, so a simulated agent
//! registers and its workspace goes Online through the real handlers. The Docker client the
//! image service holds points at a fake engine on a Unix socket in the temporary directory
//! that answers 404 to everything: no image is ever present, and nothing reaches a real
//! engine.
//!
//! ```ignore
//! let mut h = Harness::start().await;
//! h.run_workspace();
//! let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;

use crate::apiserver::{ApiConfig, ApiServer};
use crate::audit::Audit;
use crate::backends::simulated::SimulatedBackend;
use crate::backends::{Backends, WorkspaceBackend};
use crate::controllers::{cache, org_import, plugin, reaper, runtime, schedule, workspace};
use crate::images::{ImageSettings, Images};
use crate::resources::{Runtime, Workspace};
use crate::shutdown::{Shutdown, Trigger};
use crate::telemetry::Metrics;

/// One in-process API server and the controllers started on it; everything stops on drop.
pub struct Harness {
    /// A client of the API server (admin token).
    pub client: Client,
    /// `http://127.0.0.1:PORT`: the API server and the registry endpoints.
    pub url: String,
    pub token: String,
    pub metrics: Arc<Metrics>,
    /// The backend every controller of this harness drives.
    pub backend: Arc<SimulatedBackend>,
    pub images: Arc<Images>,
    pub audit: Audit,
    /// The temporary directory (store, template root, fake engine socket).
    pub dir: PathBuf,
    trigger: Trigger,
    shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    workspaces: Option<cache::SharedCache<Workspace>>,
    /// The PluginInstall cache, started with the first plugin controller.
    installs: Option<cache::SharedCache<crate::resources::PluginInstall>>,
    /// The Runtime cache of the Workspace controller, started with it (ADR 0025).
    runtimes: Option<cache::SharedCache<Runtime>>,
    /// The kubernetes backend on this harness's API server, once [`Harness::use_kubernetes`]
    /// made it the default (ADR 0057).
    kubernetes: Option<Arc<dyn WorkspaceBackend>>,
}

/// A fresh directory under the system temp dir, private to one harness.
fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "molecule-harness-{}",
        crate::util::random_suffix(10)
    ));
    std::fs::create_dir_all(&dir).expect("create the harness directory");
    dir
}

/// A Docker engine that has nothing: every request is answered 404 (ADR 0045).
async fn fake_engine(socket: &Path, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the fake engine socket");
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"message": "no such object (harness engine)"})),
        )
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.wait())
            .await;
    })
}

/// A client of `url` with `token`, plain HTTP.
fn client_of(url: &str, token: &str) -> Client {
    let mut config = kube::Config::new(url.parse().expect("harness URL"));
    config.auth_info.token = Some(token.to_string().into());
    config.default_namespace = "default".into();
    Client::try_from(config).expect("harness client")
}

/// Live-stream events published by a controller under test.
#[derive(Clone, Default)]
pub struct LiveEvents(pub Arc<std::sync::Mutex<Vec<(String, String, serde_json::Value)>>>);

impl LiveEvents {
    /// The events named `event`, as (workspace uid, payload).
    pub fn named(&self, event: &str) -> Vec<(String, serde_json::Value)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(e, _, _)| e == event)
            .map(|(_, w, p)| (w.clone(), p.clone()))
            .collect()
    }
}

impl Harness {
    /// Starts the API server (nothing else runs until a `run_*` call).
    pub async fn start() -> Harness {
        let dir = temp_dir();
        let (trigger, shutdown) = crate::shutdown::channel();
        let store = crate::store::open_writer(None, &dir.join("molecule.db"))
            .await
            .expect("open the harness store");
        let key = crate::store::SecretKey::load(None, &dir.join("secret.key"))
            .expect("harness secret key");
        let token = crate::util::random_token();
        let metrics = Arc::new(Metrics::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("harness address");
        let api = ApiServer::start(
            store.clone(),
            key,
            token.clone(),
            addr.to_string(),
            ApiConfig::default(),
            metrics.clone(),
        )
        .await
        .expect("start the API server");
        let url = format!("http://{addr}");
        let client = client_of(&url, &token);
        // The Workspace cache and the registry endpoints, as the host starts them (ADR 0044).
        let workspaces = cache::SharedCache::<Workspace>::start(
            Api::all(client.clone()),
            watcher::Config::default(),
        );
        let registry = Arc::new(crate::shim::registry::RegistryState {
            client: client.clone(),
            workspaces: workspaces.reader().into(),
            metrics: metrics.clone(),
        });
        let app = crate::shim::registry::router(Some(registry)).merge(api.router());
        let mut tasks = vec![tokio::spawn(crate::apiserver::listener::serve(
            listener,
            app,
            crate::apiserver::listener::Protocols::Plain,
            Default::default(),
            shutdown.clone(),
        ))];
        let socket = dir.join("docker.sock");
        tasks.push(fake_engine(&socket, shutdown.clone()).await);
        let docker = bollard::Docker::connect_with_unix(
            &socket.to_string_lossy(),
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("fake engine client");
        let images = Arc::new(Images::new(
            docker,
            client.clone(),
            ImageSettings {
                simulated: true,
                build_cache: dir.join("build-cache"),
                lookup_timeout: Duration::from_secs(2),
                ..ImageSettings::new(dir.join("no-agent-binary"), "harness0000".into())
            },
            metrics.clone(),
        ));
        Harness {
            client,
            url,
            token,
            metrics,
            backend: Arc::new(SimulatedBackend::new()),
            images,
            audit: Audit::new(store),
            dir,
            trigger,
            shutdown,
            tasks,
            workspaces: Some(workspaces),
            installs: None,
            runtimes: None,
            kubernetes: None,
        }
    }

    /// Makes Workspaces without `spec.backend` Pods on this harness's own API server (which,
    /// like envtest, stores them and runs nothing; a test plays the kubelet). Controllers
    /// started afterwards drive it; returns it.
    pub fn use_kubernetes(
        &mut self,
        settings: crate::backends::kubernetes::KubernetesSettings,
    ) -> Arc<dyn WorkspaceBackend> {
        let b: Arc<dyn WorkspaceBackend> =
            Arc::new(crate::backends::kubernetes::KubernetesBackend::new(
                self.client.clone(),
                "harness0000",
                settings,
            ));
        self.kubernetes = Some(b.clone());
        b
    }

    /// The backends the controllers drive (the simulated one, no control plane).
    pub fn backends(&self) -> Backends {
        let mut b = Backends::docker(self.backend.clone() as Arc<dyn WorkspaceBackend>);
        if let Some(k) = &self.kubernetes {
            b.kubernetes = Some(k.clone());
            b.default_kind = crate::resources::Backend::Kubernetes;
        }
        b
    }

    /// The changes of the harness's shared Workspace cache for the subscriber `name`, and the
    /// cache itself (ADR 0025).
    pub fn workspace_feed(
        &self,
        name: &str,
    ) -> (
        crate::feed::Feed<Workspace>,
        kube::runtime::reflector::Store<Workspace>,
    ) {
        let cache = self.workspace_cache();
        (cache.feed(name), cache.reader())
    }

    /// The harness's Runtime cache (ADR 0025), started on first use.
    pub fn runtime_cache(&mut self) -> &cache::SharedCache<Runtime> {
        let client = self.client.clone();
        self.runtimes.get_or_insert_with(|| {
            cache::SharedCache::start(Api::<Runtime>::all(client), watcher::Config::default())
        })
    }

    /// The harness's shared Workspace cache (ADR 0025).
    pub fn workspace_cache(&self) -> &cache::SharedCache<Workspace> {
        self.workspaces
            .as_ref()
            .expect("the harness keeps its Workspace cache until dropped")
    }

    /// Workspace controller settings for this harness: agents report to its URL, short
    /// timeouts, the template root inside the temporary directory.
    pub fn workspace_settings(&self) -> workspace::Settings {
        let template_root = self.dir.join("org-templates");
        let _ = std::fs::create_dir_all(&template_root);
        workspace::Settings {
            platform_url: self.url.clone(),
            heartbeat_seconds: 30,
            heartbeat_timeout: Duration::from_secs(180),
            provision_timeout: Duration::from_secs(600),
            template_root,
            agent_binary: self.dir.join("no-agent-binary"),
            control_plane_platform_url: None,
            kubernetes_platform_url: None,
            kubernetes_allow_privileged: false,
        }
    }

    /// A Workspace controller context with `settings`.
    pub fn workspace_context(&self, settings: workspace::Settings) -> Arc<workspace::Context> {
        Arc::new(self.new_workspace_context(settings))
    }

    fn new_workspace_context(&self, settings: workspace::Settings) -> workspace::Context {
        let reporter = kube::runtime::events::Reporter {
            controller: "molecule-workspace".into(),
            instance: None,
        };
        workspace::Context::new(
            self.client.clone(),
            self.backends(),
            self.images.clone(),
            kube::runtime::events::Recorder::new(self.client.clone(), reporter),
            settings,
            self.metrics.clone(),
            self.audit.clone(),
        )
    }

    /// Runs the Workspace controller (and the registry endpoints agents report to) with
    /// [`Harness::workspace_settings`]; returns its context.
    pub fn run_workspace(&mut self) -> Arc<workspace::Context> {
        self.run_workspace_with(self.workspace_settings())
    }

    /// Runs the Workspace controller with `settings`, as the host does: on the shared cache,
    /// woken by what `plan::trigger_hash` covers.
    pub fn run_workspace_with(&mut self, settings: workspace::Settings) -> Arc<workspace::Context> {
        // As the host runs it: Runtime records from the cache, whose changes wake the
        // Workspaces that name them.
        let runtimes = self.runtime_cache();
        let (reader, changed) = (
            runtimes.reader(),
            runtimes.touched_filtered("workspace", kube::runtime::predicates::generation),
        );
        let ctx = Arc::new(self.new_workspace_context(settings).with_runtimes(reader));
        let queue = cache::WorkQueue::new("workspace", self.metrics.clone());
        let workspaces = self
            .workspaces
            .as_ref()
            .expect("the harness keeps its Workspace cache until dropped");
        let reader = workspaces.reader();
        let mut controller = workspaces
            .controller_filtered(&queue, workspace::plan::trigger_hash)
            .watches_shared_stream(changed, move |rt: Arc<Runtime>| {
                use kube::ResourceExt;
                workspace::naming_runtime(&reader, &rt.name_any())
            })
            .graceful_shutdown_on(self.shutdown.clone().wait());
        if self.kubernetes.is_some() {
            // As the host relays them: a kubelet's Pod status write wakes the Workspace.
            let pods = crate::backends::kubernetes::pod_changes(self.client.clone(), "harness0000")
                .filter_map(|c| async move {
                    c.workspace
                        .map(|n| kube::runtime::reflector::ObjectRef::new(&n).within(&c.namespace))
                });
            controller = controller.reconcile_on(pods);
        }
        self.tasks.push(tokio::spawn(
            controller
                .run(workspace::reconcile, workspace::error_policy, ctx.clone())
                .for_each(|_| async {}),
        ));
        ctx
    }

    /// OrgImport controller settings for this harness: the template root of
    /// [`Harness::workspace_settings`], no `!external` host.
    pub fn org_import_settings(&self) -> org_import::Settings {
        let template_root = self.dir.join("org-templates");
        let _ = std::fs::create_dir_all(&template_root);
        org_import::Settings::new(template_root, &Default::default())
    }

    /// Runs the OrgImport controller with [`Harness::org_import_settings`]; returns its context.
    pub fn run_org_import(&mut self) -> Arc<org_import::Context> {
        self.run_org_import_with(self.org_import_settings())
    }

    /// Runs the OrgImport controller with `settings`, as the host does (its record, the global
    /// secret and its child Workspaces trigger it).
    pub fn run_org_import_with(
        &mut self,
        settings: org_import::Settings,
    ) -> Arc<org_import::Context> {
        let ctx = Arc::new(org_import::Context::new(
            self.client.clone(),
            settings,
            self.metrics.clone(),
            self.audit.clone(),
        ));
        self.tasks.push(tokio::spawn(org_import::run_with(
            ctx.clone(),
            self.shutdown.clone(),
        )));
        ctx
    }

    /// PluginInstall controller settings for this harness: the `local://` registry and the
    /// git scratch space inside the temporary directory.
    pub fn plugin_settings(&self) -> plugin::Settings {
        let registry = self.dir.join("plugins");
        let _ = std::fs::create_dir_all(&registry);
        plugin::Settings {
            scratch: self.dir.clone(),
            ..plugin::Settings::new(registry)
        }
    }

    /// Runs the PluginInstall controller (and its drift loop) with
    /// [`Harness::plugin_settings`] on the simulated backend, whose exec answers nothing.
    pub fn run_plugin(&mut self) {
        self.run_plugin_with(self.plugin_settings());
    }

    /// Runs the PluginInstall controller with `settings`, as the host does.
    pub fn run_plugin_with(&mut self, settings: plugin::Settings) {
        let settings = plugin::Settings {
            default_backend: self.backends().default_kind,
            ..settings
        };
        let client = self.client.clone();
        let installs = self
            .installs
            .get_or_insert_with(|| cache::SharedCache::start(Api::all(client), Default::default()));
        let cache = self
            .workspaces
            .as_ref()
            .expect("the harness keeps its Workspace cache until dropped");
        let run = plugin::run(
            self.client.clone(),
            self.backend.clone() as Arc<dyn WorkspaceBackend>,
            self.kubernetes.clone(),
            settings,
            self.metrics.clone(),
            self.audit.clone(),
            (cache, installs),
            self.shutdown.clone(),
        );
        self.tasks.push(tokio::spawn(run));
    }

    /// Runs the Runtime controller; returns its context.
    pub fn run_runtime(&mut self) -> Arc<runtime::Context> {
        let reporter = kube::runtime::events::Reporter {
            controller: "molecule-runtime".into(),
            instance: None,
        };
        let ctx = Arc::new(runtime::Context::new(
            self.client.clone(),
            self.images.clone(),
            kube::runtime::events::Recorder::new(self.client.clone(), reporter),
            self.metrics.clone(),
        ));
        let queue = cache::WorkQueue::new("runtime", self.metrics.clone());
        let controller = self
            .runtime_cache()
            .controller_filtered(&queue, kube::runtime::predicates::generation)
            .graceful_shutdown_on(self.shutdown.clone().wait());
        self.tasks.push(tokio::spawn(
            controller
                .run(runtime::reconcile, runtime::error_policy, ctx.clone())
                .for_each(|_| async {}),
        ));
        ctx
    }

    /// Runs the schedule controller with `settings` (ADR 0053), sending through a
    /// [`crate::teams::Teams`] on the harness store; returns the live events it published, as
    /// (event, workspace uid, payload).
    pub fn run_schedule(&mut self, settings: schedule::Settings) -> LiveEvents {
        let events = LiveEvents::default();
        let sink = events.clone();
        let publish: crate::teams::service::Publish = Arc::new(move |event, uid, payload| {
            sink.0.lock().unwrap_or_else(|p| p.into_inner()).push((
                event.to_string(),
                uid.to_string(),
                payload,
            ));
        });
        let store = self.audit.store().expect("the harness audit has a store");
        let cache = self
            .workspaces
            .as_ref()
            .expect("the harness keeps its Workspace cache until dropped");
        // As the host runs them: both on the shared Workspace cache.
        let queue = cache::WorkQueue::new("schedule", self.metrics.clone());
        let controller = cache.controller_filtered(&queue, schedule::trigger_hash);
        let teams = crate::teams::Teams::start(
            cache.feed("teams"),
            store,
            &self.token,
            Some(publish),
            self.metrics.clone(),
            Default::default(),
            self.shutdown.clone(),
        );
        self.tasks.push(tokio::spawn(schedule::run(
            controller,
            queue,
            self.client.clone(),
            teams,
            self.metrics.clone(),
            settings,
            self.shutdown.clone(),
        )));
        events
    }

    /// Runs the orphan reaper with resync `every`; a send on the returned channel triggers a
    /// pass at once.
    pub fn run_reaper(&mut self, every: Duration) -> tokio::sync::mpsc::Sender<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        self.tasks.push(tokio::spawn(reaper::run(
            self.client.clone(),
            self.backends().all(),
            every,
            rx,
            self.metrics.clone(),
            self.shutdown.clone(),
        )));
        tx
    }

    /// Runs any other task until the harness stops (`Shutdown` fires on drop).
    pub fn spawn<F>(&mut self, task: impl FnOnce(Shutdown) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(tokio::spawn(task(self.shutdown.clone())));
    }

    /// The shutdown every task of this harness waits on.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The Events about the object `name` in `namespace` (`None`: cluster-scoped), as
    /// (type, reason, note).
    pub async fn events(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Vec<(String, String, String)> {
        use k8s_openapi::api::events::v1::Event;
        let api: Api<Event> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Polls `probe` every 50 ms until it returns `Some` or `timeout` passes.
    pub async fn eventually<T, F>(timeout: Duration, mut probe: impl FnMut() -> F) -> Option<T>
    where
        F: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = probe().await {
                return Some(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.trigger.trigger();
        for t in &self.tasks {
            t.abort();
        }
        self.workspaces = None;
        self.installs = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
