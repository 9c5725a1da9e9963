//! Flag groups flattened into `serve` and `operator`, and how each becomes the options of
//! the library.

use std::path::PathBuf;

use anyhow::Context;

/// Flags of the workspace controller and the orphan reaper.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkspaceFlags {
    /// Heartbeat interval agents are told to use, in seconds.
    #[arg(long, default_value_t = 30)]
    agent_heartbeat_seconds: u64,
    /// No heartbeat for this many seconds: the workspace goes Offline and is restarted.
    #[arg(long, default_value_t = 180)]
    heartbeat_timeout_seconds: u64,
    /// Not Online this many seconds after provisioning: Failed (ProvisionTimeout).
    #[arg(long, default_value_t = 600)]
    provision_timeout_seconds: u64,
    /// Seconds between orphan-reaper resyncs (Docker events trigger it sooner).
    #[arg(long, default_value_t = 30)]
    reap_interval_seconds: u64,
    /// Installation id labelled on every managed container and volume; the orphan reaper only
    /// touches objects carrying it. Default: `serve` keeps a random one in DATA_DIR/instance-id,
    /// `operator` uses the uid of the API server's `default` Namespace.
    #[arg(long, env = "MOLECULE_INSTANCE", value_parser = parse_instance)]
    instance: Option<String>,
    /// Workspace backend: `docker`, or `simulated` (no container work; for benchmarks).
    #[arg(long, hide = true, default_value = "docker", value_parser = molecule::backends::BackendChoice::parse)]
    backend: molecule::backends::BackendChoice,
    #[command(flatten)]
    control_plane: ControlPlaneFlags,
    #[command(flatten)]
    template_policy: TemplatePolicyFlags,
}

/// What org templates may ask of the host (ADR 0039): operator-wide defaults of an OrgImport's
/// `spec.policy`. System directories are refused whatever these say.
#[derive(clap::Args, Clone, Debug)]
struct TemplatePolicyFlags {
    /// Highest tier a template's workspace may ask for (1-4).
    #[arg(long, default_value_t = molecule::orgtemplate::policy::DEFAULT_MAX_TIER as i64, value_parser = clap::value_parser!(i64).range(1..=4))]
    template_max_tier: i64,
    /// Highest tier for workspaces defined in git (a git source or an `!external`; 1-4).
    #[arg(long, default_value_t = molecule::orgtemplate::policy::DEFAULT_GIT_MAX_TIER as i64, value_parser = clap::value_parser!(i64).range(1..=4))]
    template_git_max_tier: i64,
    /// Comma list of absolute host dirs a template's `workspace_dir` may be in (empty: none).
    #[arg(long, default_value = "", value_parser = parse_roots)]
    template_workspace_dir_roots: RootList,
    /// The same for workspaces defined in git (empty: none).
    #[arg(long, default_value = "", value_parser = parse_roots)]
    template_git_workspace_dir_roots: RootList,
}

/// A parsed `--template-*-workspace-dir-roots` list.
#[derive(Clone, Debug)]
struct RootList(Vec<PathBuf>);

fn parse_roots(s: &str) -> Result<RootList, String> {
    molecule::orgtemplate::policy::parse_roots(s)
        .map(RootList)
        .map_err(|e| e.to_string())
}

impl TemplatePolicyFlags {
    fn policy(&self) -> molecule::orgtemplate::policy::Policy {
        molecule::orgtemplate::policy::Policy {
            max_tier: self.template_max_tier as i32,
            git_max_tier: self.template_git_max_tier as i32,
            workspace_dir_roots: self.template_workspace_dir_roots.0.clone(),
            git_workspace_dir_roots: self.template_git_workspace_dir_roots.0.clone(),
            protected: vec![],
        }
    }
}

/// Where org templates may come from besides the template root (ADR 0043).
#[derive(clap::Args, Clone, Debug)]
pub struct TemplateSourceFlags {
    /// Comma list of repository prefixes `!external` org templates and git sources may name.
    #[arg(
        long,
        env = "MOLECULE_EXTERNAL_REPO_ALLOWLIST",
        value_name = "PREFIXES"
    )]
    external_repo_allowlist: Option<String>,
    /// Default git host of `!external` org templates.
    #[arg(long, env = "MOLECULE_EXTERNAL_GITEA_URL", value_name = "URL")]
    external_gitea_url: Option<String>,
    /// Directory of persona env files for org templates.
    #[arg(long, env = "MOLECULE_PERSONA_ROOT", value_name = "DIR",
          default_value = molecule::orgtemplate::DEFAULT_PERSONA_ROOT)]
    persona_root: PathBuf,
}

impl TemplateSourceFlags {
    pub fn settings(&self, images: &ImageFlags) -> molecule::orgtemplate::SourceSettings {
        molecule::orgtemplate::SourceSettings {
            external_repo_allowlist: self.external_repo_allowlist.clone(),
            external_gitea_url: self.external_gitea_url.clone(),
            gitea_token: images.gitea_token.clone(),
            persona_root: Some(self.persona_root.clone()),
        }
    }
}

/// Audit retention (ADR 0042), shared by `serve` and `operator`.
#[derive(clap::Args, Clone, Debug)]
pub struct AuditFlags {
    /// Days audit rows are kept: older ones are deleted at start and every hour. 0 keeps them
    /// forever.
    #[arg(long, env = "MOLECULE_AUDIT_RETENTION_DAYS", default_value_t = 30)]
    audit_retention_days: u64,
    /// Days activity rows (A2A calls, agent reports) are kept: older ones are deleted at start
    /// and every hour (ADR 0050). 0 keeps them forever.
    #[arg(long, env = "MOLECULE_ACTIVITY_RETENTION_DAYS", default_value_t = 7)]
    activity_retention_days: u64,
}

impl AuditFlags {
    pub fn activity_retention(&self) -> Option<std::time::Duration> {
        (self.activity_retention_days > 0).then(|| {
            std::time::Duration::from_secs(self.activity_retention_days.saturating_mul(86_400))
        })
    }

    pub fn retention(&self) -> Option<std::time::Duration> {
        (self.audit_retention_days > 0).then(|| {
            std::time::Duration::from_secs(self.audit_retention_days.saturating_mul(86_400))
        })
    }
}

/// Flags of the EC2 control-plane backend (workspaces with `backend: controlPlane`).
#[derive(clap::Args, Clone, Debug)]
struct ControlPlaneFlags {
    /// Base URL of the EC2 control plane (https://…). Unset: controlPlane workspaces fail with
    /// ControlPlaneNotConfigured.
    #[arg(long, env = "MOLECULE_CONTROL_PLANE_URL")]
    control_plane_url: Option<String>,
    /// The org id instances are provisioned for (required with --control-plane-url).
    #[arg(long, env = "MOLECULE_ORG_ID")]
    control_plane_org: Option<String>,
    /// `[namespace/]name` of the Secret holding the credentials: key `sharedSecret` (provision
    /// routes), optionally `adminToken` (admin routes; defaults to the shared secret) and
    /// `tenantToken` (X-Molecule-Admin-Token on every call). Read again every 30 s and after a
    /// 401. Without it the credentials come from the environment variables
    /// MOLECULE_CP_SHARED_SECRET, MOLECULE_CP_ADMIN_TOKEN and MOLECULE_CP_TENANT_TOKEN.
    #[arg(long, env = "MOLECULE_CONTROL_PLANE_SECRET")]
    control_plane_secret: Option<String>,
    /// Shared secret of the control plane's provision routes when --control-plane-secret is
    /// not given (prefer the environment variable: flags show in `ps`).
    #[arg(
        long,
        env = "MOLECULE_CP_SHARED_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    control_plane_shared_secret: Option<String>,
    /// Token of the control plane's admin routes (default: the shared secret).
    #[arg(
        long,
        env = "MOLECULE_CP_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    control_plane_admin_token: Option<String>,
    /// The tenant token the control plane issued to this installation, sent as
    /// X-Molecule-Admin-Token on every control-plane call (Secret key `tenantToken`).
    #[arg(
        long,
        env = "MOLECULE_CP_TENANT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    control_plane_tenant_token: Option<String>,
    /// URL agents on instances use to reach this platform's /registry/* (default for `serve`:
    /// its own plain-http URL, right only when the control plane runs on this host).
    #[arg(long, env = "MOLECULE_CONTROL_PLANE_PLATFORM_URL")]
    control_plane_platform_url: Option<String>,
    /// Port of the agent on an instance: the workspace URL is http://<private_ip>:<port>.
    #[arg(long, default_value_t = 8000)]
    control_plane_agent_port: u16,
    /// Seconds the control plane gets to send its response headers (dial and TLS handshake
    /// are bounded at 10 s each).
    #[arg(long, default_value_t = 30)]
    control_plane_timeout_seconds: u64,
    /// PEM file of extra CA certificates trusted for the control plane (besides the system's).
    #[arg(long)]
    control_plane_ca: Option<PathBuf>,
}

impl ControlPlaneFlags {
    fn config(
        &self,
    ) -> anyhow::Result<Option<molecule::backends::controlplane::ControlPlaneConfig>> {
        use molecule::backends::controlplane::{ControlPlaneConfig, CredentialSource, Credentials};
        let Some(url) = self.control_plane_url.clone().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let org = self
            .control_plane_org
            .clone()
            .filter(|o| !o.is_empty())
            .context(
                "--control-plane-org (MOLECULE_ORG_ID) is required with --control-plane-url",
            )?;
        let credentials = match self
            .control_plane_secret
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            Some(r) => {
                let (namespace, name) = r.split_once('/').unwrap_or(("default", r));
                CredentialSource::Secret {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                }
            }
            None => {
                let shared = self.control_plane_shared_secret.clone().unwrap_or_default();
                if shared.trim().is_empty() {
                    anyhow::bail!(
                        "the control plane needs credentials: --control-plane-secret NAME, or MOLECULE_CP_SHARED_SECRET"
                    );
                }
                CredentialSource::Static(Credentials {
                    shared_secret: shared.trim().to_string(),
                    admin_token: self
                        .control_plane_admin_token
                        .as_deref()
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty()),
                    tenant_token: self
                        .control_plane_tenant_token
                        .as_deref()
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty()),
                })
            }
        };
        let ca_pem = match &self.control_plane_ca {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        };
        let timeouts = molecule::net::http::Timeouts {
            response_header: std::time::Duration::from_secs(
                self.control_plane_timeout_seconds.max(1),
            ),
            ..Default::default()
        };
        let cfg = ControlPlaneConfig {
            base_url: url,
            org_id: org,
            credentials,
            agent_port: self.control_plane_agent_port,
            timeouts,
            ca_pem,
        }
        .validated()
        .map_err(anyhow::Error::msg)?;
        Ok(Some(cfg))
    }
}

fn parse_instance(s: &str) -> Result<String, String> {
    if molecule::util::valid_instance_id(s) {
        Ok(s.to_string())
    } else {
        Err(
            "an instance id is 1-63 characters of [a-z0-9-], starting and ending alphanumeric"
                .into(),
        )
    }
}

impl WorkspaceFlags {
    pub fn options(
        &self,
        template_root: Option<PathBuf>,
    ) -> anyhow::Result<molecule::serve::WorkspaceOptions> {
        Ok(molecule::serve::WorkspaceOptions {
            heartbeat_seconds: self.agent_heartbeat_seconds.max(1),
            heartbeat_timeout: std::time::Duration::from_secs(
                self.heartbeat_timeout_seconds.max(2),
            ),
            provision_timeout: std::time::Duration::from_secs(
                self.provision_timeout_seconds.max(1),
            ),
            template_root,
            reap_every: std::time::Duration::from_secs(self.reap_interval_seconds.max(1)),
            instance: self.instance.clone(),
            backend: self.backend,
            control_plane: self.control_plane.config()?,
            control_plane_platform_url: self.control_plane.control_plane_platform_url.clone(),
            template_policy: self.template_policy.policy(),
        })
    }
}

/// Flags bounding the HTTP listeners and refusing plain HTTP (ADR 0041).
#[derive(clap::Args, Clone, Debug)]
pub struct ListenFlags {
    /// Seconds a client gets to send a whole request head (and TLS handshake) once it began.
    #[arg(long, default_value_t = 30)]
    header_timeout_seconds: u64,
    /// Seconds a connection with no request in flight may stay silent before it is closed.
    #[arg(long, default_value_t = 120)]
    idle_timeout_seconds: u64,
    /// Open connections per listener; beyond it new connections are closed at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Refuse to serve plain HTTP: `serve` speaks TLS only on --listen, and a listener that
    /// can only speak plain HTTP stops the process at start.
    #[arg(long, env = "MOLECULE_REQUIRE_TLS")]
    pub require_tls: bool,
}

impl ListenFlags {
    pub fn limits(&self) -> molecule::apiserver::listener::Limits {
        molecule::apiserver::listener::Limits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout_seconds.max(1)),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_seconds.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }
}

/// Flags of the PluginInstall controller.
#[derive(clap::Args, Clone, Debug)]
pub struct PluginFlags {
    /// The local plugin registry: `local://<name>` installs DIR/<name>/ (default: DATA_DIR/plugins
    /// for `serve`, ./plugins for `operator`).
    #[arg(long = "plugins", value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Bound on one git resolve or fetch of a plugin, in seconds.
    #[arg(long, default_value_t = 300)]
    plugin_fetch_timeout_seconds: u64,
    /// Seconds between scans for PluginInstalls whose drift check interval elapsed.
    #[arg(long, default_value_t = 5)]
    plugin_drift_tick_seconds: u64,
    /// Tests only: honour /configs/plugins/.failpoint in the in-container install steps.
    #[arg(long, hide = true)]
    plugin_failpoints: bool,
    /// Hosts a workspace's own token may install git plugins from (comma list of host or
    /// host:port, https only; ADR 0038). Empty (the default): the local registry only. The
    /// admin token is not limited.
    #[arg(long = "plugin-git-hosts", env = "MOLECULE_PLUGIN_GIT_HOSTS", value_name = "HOSTS",
          value_parser = |s: &str| molecule::plugins::git_hosts::GitHosts::parse(s).map_err(|e| e.to_string()))]
    plugin_git_hosts: Option<molecule::plugins::git_hosts::GitHosts>,
}

impl PluginFlags {
    pub fn options(&self) -> molecule::serve::PluginOptions {
        molecule::serve::PluginOptions {
            dir: self.plugins.clone(),
            fetch_timeout: Some(std::time::Duration::from_secs(
                self.plugin_fetch_timeout_seconds.max(1),
            )),
            drift_tick: Some(std::time::Duration::from_secs(
                self.plugin_drift_tick_seconds.max(1),
            )),
            failpoints: self.plugin_failpoints,
            git_hosts: self.plugin_git_hosts.clone().unwrap_or_default(),
        }
    }
}

/// Flags of runtime image resolution (ADR 0030).
#[derive(clap::Args, Clone, Debug)]
pub struct ImageFlags {
    /// Registry mode: images are `<registry>/workspace-template-<runtime>:<tag>`. Unset (the
    /// default): images are built locally from the template repositories.
    #[arg(long, env = "MOLECULE_IMAGE_REGISTRY")]
    image_registry: Option<String>,
    /// Platform of pulls, template builds and creates, e.g. linux/amd64 (empty: the engine's).
    #[arg(long, env = "MOLECULE_IMAGE_PLATFORM")]
    image_platform: Option<String>,
    /// Allowlisted prefix of template repositories (`<prefix><runtime>`); point it at a fork.
    #[arg(long, env = "MOLECULE_LOCAL_TEMPLATE_REPO_PREFIX", default_value = molecule::images::DEFAULT_TEMPLATE_PREFIX)]
    template_repo_prefix: String,
    /// Where template clones are kept (default ~/.cache/molecule/workspace-template-build).
    #[arg(long, env = "MOLECULE_LOCAL_BUILD_CACHE")]
    build_cache: Option<PathBuf>,
    /// Bound of each registry or template lookup, in seconds.
    #[arg(long, default_value_t = 10)]
    image_lookup_timeout_seconds: u64,
    /// Bound of each template clone + build and each pull, in seconds.
    #[arg(long, default_value_t = 1200)]
    image_build_timeout_seconds: u64,
    /// Seed the known runtimes with auto-refresh enabled.
    #[arg(long, env = "MOLECULE_IMAGE_AUTO_REFRESH", default_value_t = false)]
    pub image_auto_refresh: bool,
    /// Token realm hosts (`host[:port]`, comma-separated) trusted with registry pull
    /// credentials besides each registry's own host (ADR 0040); always over https.
    #[arg(long, env = "MOLECULE_REGISTRY_REALM_HOSTS", value_delimiter = ',')]
    registry_realm_hosts: Vec<String>,
    /// Token for cloning template repositories and `!external` org templates (prefer the
    /// environment variable: flags show in `ps`).
    #[arg(
        long,
        env = "MOLECULE_GITEA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    gitea_token: Option<String>,
}

impl ImageFlags {
    /// The settings of the image service.
    pub fn settings(&self) -> anyhow::Result<molecule::images::ImageSettings> {
        let registry = self
            .image_registry
            .clone()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if let Some(r) = &registry {
            molecule::images::reference::validate_registry(r).map_err(anyhow::Error::msg)?;
        }
        let mut s = molecule::images::ImageSettings::new(PathBuf::new(), String::new());
        s.registry = registry;
        s.platform = self
            .image_platform
            .clone()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty());
        s.template_prefix = self.template_repo_prefix.trim().to_string();
        s.template_token = self.gitea_token.clone().filter(|t| !t.trim().is_empty());
        if let Some(c) = &self.build_cache {
            s.build_cache = c.clone();
        }
        s.lookup_timeout = std::time::Duration::from_secs(self.image_lookup_timeout_seconds.max(1));
        s.build_timeout = std::time::Duration::from_secs(self.image_build_timeout_seconds.max(1));
        s.realm_hosts = self
            .registry_realm_hosts
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(s)
    }
}

/// Where workspaces run in cluster mode, and how Pods are shaped (ADR 0057).
#[derive(clap::Args, Clone, Debug)]
pub struct KubernetesFlags {
    /// Backend of Workspaces without spec.backend: `docker` (the node's Docker engine) or
    /// `kubernetes` (a Pod, PVCs and a Service per workspace in its namespace).
    #[arg(long, env = "MOLECULE_DEFAULT_BACKEND", default_value = "docker", value_parser = parse_backend)]
    default_backend: molecule::resources::Backend,
    /// Run the kubernetes backend beside Docker, for Workspaces with `spec.backend:
    /// kubernetes` (implied by --default-backend kubernetes; needs the RBAC of
    /// deploy-kubernetes/).
    #[arg(long, env = "MOLECULE_KUBERNETES_BACKEND")]
    kubernetes_backend: bool,
    /// URL agents in workspace Pods use to reach /registry/* (e.g. the operator's Service,
    /// http://molecule-agents.molecule-system.svc:8081); default: --platform-url.
    #[arg(long, env = "MOLECULE_KUBERNETES_PLATFORM_URL")]
    kubernetes_platform_url: Option<String>,
    /// Allow tiers 3 and 4 as privileged Pods (tier 4 also mounts the node's Docker socket).
    /// Off: such Workspaces are refused with TierNotAllowed.
    #[arg(long, env = "MOLECULE_KUBERNETES_ALLOW_PRIVILEGED")]
    kubernetes_allow_privileged: bool,
    /// imagePullSecrets of every workspace Pod (repeatable; the env var takes a comma list).
    #[arg(
        long = "kubernetes-image-pull-secret",
        env = "MOLECULE_KUBERNETES_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        value_name = "SECRET"
    )]
    kubernetes_image_pull_secrets: Vec<String>,
    /// StorageClass of the workspace PVCs (default: the cluster's default class).
    #[arg(long, env = "MOLECULE_KUBERNETES_STORAGE_CLASS")]
    kubernetes_storage_class: Option<String>,
    /// Size of each workspace's /workspace PVC.
    #[arg(
        long,
        env = "MOLECULE_KUBERNETES_WORKSPACE_SIZE",
        default_value = "5Gi"
    )]
    kubernetes_workspace_size: String,
}

fn parse_backend(s: &str) -> Result<molecule::resources::Backend, String> {
    match s {
        "docker" => Ok(molecule::resources::Backend::Docker),
        "kubernetes" => Ok(molecule::resources::Backend::Kubernetes),
        "controlPlane" => Ok(molecule::resources::Backend::ControlPlane),
        other => Err(format!(
            "unknown backend {other:?}; known backends: docker, kubernetes, controlPlane"
        )),
    }
}

impl KubernetesFlags {
    pub fn options(&self) -> molecule::operator::KubernetesOptions {
        let defaults = molecule::backends::kubernetes::KubernetesSettings::default();
        molecule::operator::KubernetesOptions {
            default_backend: self.default_backend,
            enabled: self.kubernetes_backend
                || self.default_backend == molecule::resources::Backend::Kubernetes,
            platform_url: self
                .kubernetes_platform_url
                .clone()
                .filter(|u| !u.is_empty()),
            settings: molecule::backends::kubernetes::KubernetesSettings {
                allow_privileged: self.kubernetes_allow_privileged,
                image_pull_secrets: self
                    .kubernetes_image_pull_secrets
                    .iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                storage_class: self
                    .kubernetes_storage_class
                    .clone()
                    .filter(|s| !s.is_empty()),
                workspace_size: self.kubernetes_workspace_size.clone(),
                ..defaults
            },
        }
    }
}
