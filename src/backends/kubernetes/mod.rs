//! [`WorkspaceBackend`] on Kubernetes itself (ADR 0057): each workspace is a Pod `ws-<id12>`,
//! PersistentVolumeClaims for `/configs` and `/workspace`, a Service on the agent's port and a
//! Secret holding its config files (with the agent token) and env, all in the Workspace's
//! namespace and owned by it. The config files are placed by an init container before the
//! agent starts; files written later (plugins) wait in a second Secret for the next start.
//! The controller reads the Pod's status through [`status::presence`].

pub mod spec;
pub mod status;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::docker::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_NAME, LABEL_SPEC_HASH, LABEL_UID};
use super::{
    BackendError, ConfigFile, ExecOutput, MAX_CONSOLE_BYTES, Managed, ManagedKind, Presence,
    StartSpec, Started, WorkspaceBackend, WorkspaceRef,
};

/// The field manager of everything this backend applies.
const MANAGER: &str = "molecule-kubernetes-backend";

/// How the kubernetes backend shapes Pods (`molecule operator --kubernetes-*`).
#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    /// Tiers 3 and 4 (privileged Pods, the node's Docker socket) are refused unless set.
    pub allow_privileged: bool,
    /// imagePullSecrets of every workspace Pod.
    pub image_pull_secrets: Vec<String>,
    /// The StorageClass of the claims; `None`: the cluster's default.
    pub storage_class: Option<String>,
    /// Size of the `/configs` (and sessions) claim.
    pub configs_size: String,
    /// Size of the `/workspace` claim.
    pub workspace_size: String,
    /// How long a replaced Pod may take to go before the start is retried later.
    pub replace_wait: Duration,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            allow_privileged: false,
            image_pull_secrets: vec![],
            storage_class: None,
            configs_size: "256Mi".into(),
            workspace_size: "5Gi".into(),
            replace_wait: Duration::from_secs(20),
        }
    }
}

/// The kubernetes backend: a client of the cluster the operator runs against.
pub struct KubernetesBackend {
    client: Client,
    instance: String,
    settings: KubernetesSettings,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("instance", &self.instance)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A kube error as a backend error: unreachable, 5xx, 408 and 429 are transient; 403 is
/// configuration (RBAC, retried: the fix is not in the Workspace); the rest is the request's.
fn map_error(call: &'static str, e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(s) if s.code == 403 => BackendError::Config(format!(
            "{call}: forbidden: the operator's RBAC does not allow it ({})",
            s.message
        )),
        kube::Error::Api(s) if s.code >= 500 || s.code == 408 || s.code == 429 => {
            BackendError::Transient(format!("{call}: {}", s.message))
        }
        kube::Error::Api(s) => BackendError::Permanent(format!("{call}: {}", s.message)),
        other => BackendError::Transient(format!("{call}: {other}")),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl KubernetesBackend {
    pub fn new(client: Client, instance: &str, settings: KubernetesSettings) -> Self {
        Self {
            client,
            instance: instance.to_string(),
            settings,
        }
    }

    pub fn settings(&self) -> &KubernetesSettings {
        &self.settings
    }

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Server-side apply of an object this backend owns.
    async fn apply<K>(&self, call: &'static str, obj: &K) -> Result<(), BackendError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let meta = obj.meta();
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
            return Err(BackendError::Permanent(format!("{call}: no name")));
        };
        self.api::<K>(ns)
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await
            .map(|_| ())
            .map_err(|e| map_error(call, e))
    }

    /// Creates a claim unless it exists (a claim's spec is mostly immutable: an existing one
    /// is kept, with its data).
    async fn ensure_claim(&self, claim: PersistentVolumeClaim) -> Result<(), BackendError> {
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let api = self.api::<PersistentVolumeClaim>(&ns);
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(map_error("create claim", e)),
        }
    }

    /// Deletes one object; gone already is success.
    async fn delete<K>(&self, call: &'static str, ns: &str, name: &str) -> Result<(), BackendError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        match self
            .api::<K>(ns)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_error(call, e)),
        }
    }

    /// The workspace's Pod, if it exists and is ours.
    async fn pod(&self, ws: &WorkspaceRef) -> Result<Option<Pod>, BackendError> {
        let pod = self
            .api::<Pod>(&ws.namespace)
            .get_opt(&spec::object_name(ws))
            .await
            .map_err(|e| map_error("get pod", e))?;
        Ok(pod.filter(|p| self.owns(p.metadata.labels.as_ref(), ws)))
    }

    fn owns(&self, labels: Option<&BTreeMap<String, String>>, ws: &WorkspaceRef) -> bool {
        labels.is_some_and(|l| {
            l.get(LABEL_MANAGED).map(String::as_str) == Some("true")
                && l.get(LABEL_INSTANCE) == Some(&self.instance)
                && l.get(LABEL_UID) == Some(&ws.uid)
        })
    }

    /// Replaces a Pod that does not match: deletes it and waits (bounded) until it is gone.
    async fn replace(&self, ws: &WorkspaceRef, old: &Pod) -> Result<(), BackendError> {
        let name = spec::object_name(ws);
        let api = self.api::<Pod>(&ws.namespace);
        if old.metadata.deletion_timestamp.is_none() {
            tracing::info!(workspace = %ws.name, pod = %name, "replacing the workspace's Pod");
            self.delete::<Pod>("delete pod", &ws.namespace, &name)
                .await?;
        }
        let deadline = tokio::time::Instant::now() + self.settings.replace_wait;
        loop {
            match api.get_opt(&name).await {
                Ok(None) => return Ok(()),
                Ok(Some(p)) if p.metadata.uid != old.metadata.uid => return Ok(()),
                Ok(Some(_)) => {}
                Err(e) => return Err(map_error("get pod", e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::Transient(format!(
                    "Pod {name} is still terminating; the new one starts once it is gone"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The objects of one kind that `lp` selects, in every namespace, as managed objects.
    async fn managed_of<K>(
        &self,
        call: &'static str,
        kind: ManagedKind,
        lp: &ListParams,
    ) -> Result<Vec<Managed>, BackendError>
    where
        K: Resource + DeserializeOwned + Clone + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let list = Api::<K>::all(self.client.clone())
            .list(lp)
            .await
            .map_err(|e| map_error(call, e))?;
        Ok(list
            .items
            .iter()
            .map(|o| managed(kind.clone(), o.meta()))
            .collect())
    }

    /// The files written since the start merged with `files`, and the paths to remove first.
    async fn merged_files(
        &self,
        ws: &WorkspaceRef,
        files: &[ConfigFile],
    ) -> Result<(Vec<ConfigFile>, Vec<String>), BackendError> {
        let existing = self
            .api::<Secret>(&ws.namespace)
            .get_opt(&spec::files_secret_name(ws))
            .await
            .map_err(|e| map_error("get files secret", e))?;
        let mut data = existing.and_then(|s| s.data).unwrap_or_default();
        let before = match data.remove(spec::FILES_KEY) {
            Some(tar) => untar(&tar.0)?,
            None => vec![],
        };
        // The Secret is editable by anyone who may edit the namespace's Secrets: only paths
        // this backend could have written are kept.
        let removals = data
            .remove(spec::REMOVE_KEY)
            .map(|l| {
                String::from_utf8_lossy(&l.0)
                    .lines()
                    .filter(|p| placeable(p).is_ok())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        merge(before, removals, files)
    }
}

/// Later writes win by path. A file written where a directory was (a plugin's tombstone)
/// replaces everything under it, here and, through the removal list, in the claim; a file
/// written under a path that was a file replaces that file.
fn merge(
    before: Vec<ConfigFile>,
    mut removals: Vec<String>,
    files: &[ConfigFile],
) -> Result<(Vec<ConfigFile>, Vec<String>), BackendError> {
    let mut by_path: BTreeMap<String, ConfigFile> =
        before.into_iter().map(|f| (f.path.clone(), f)).collect();
    for f in files {
        placeable(&f.path)?;
        let dir = format!("{}/", f.path);
        by_path.retain(|p, _| !p.starts_with(&dir));
        // A parent of this file that was written as a file goes.
        let mut parent = f.path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            by_path.remove(p);
            parent = p;
        }
        if !removals.contains(&f.path) {
            removals.push(f.path.clone());
        }
        by_path.insert(f.path.clone(), f.clone());
    }
    Ok((by_path.into_values().collect(), removals))
}

/// A path the init container may remove and place: a config file path without control
/// characters (the removal list is read one line at a time).
fn placeable(path: &str) -> Result<(), BackendError> {
    super::validate_file_path(path)
        .map_err(|e| BackendError::Permanent(format!("invalid config file path: {e}")))?;
    if path.chars().any(char::is_control) {
        return Err(BackendError::Permanent(format!(
            "config file path {path:?} has a control character"
        )));
    }
    Ok(())
}

/// The regular files of a tar this backend wrote.
fn untar(bytes: &[u8]) -> Result<Vec<ConfigFile>, BackendError> {
    let bad = |e: std::io::Error| BackendError::Permanent(format!("files secret: {e}"));
    let mut out = vec![];
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let mode = entry.header().mode().map_err(bad)?;
        let mut content = vec![];
        entry.read_to_end(&mut content).map_err(bad)?;
        out.push(ConfigFile {
            path,
            content,
            mode,
        });
    }
    Ok(out)
}

/// Env as the Pod will see it: names checked, later duplicates win, sorted by name.
fn normalized_env(env: &[(String, String)]) -> Result<Vec<(String, String)>, BackendError> {
    let mut map = BTreeMap::new();
    for (k, v) in env {
        if k.is_empty() || k.contains('=') {
            return Err(BackendError::Permanent(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        map.insert(k.clone(), v.clone());
    }
    Ok(map.into_iter().collect())
}

#[async_trait::async_trait]
impl WorkspaceBackend for KubernetesBackend {
    /// Applies the Secret, the claims and the Service, then creates the Pod unless one with the
    /// same hash runs; a Pod with another hash, or one that failed, is replaced.
    async fn ensure_started(&self, start: &StartSpec) -> Result<Started, BackendError> {
        spec::check(start, &self.settings)?;
        let ws = &start.workspace;
        let env = normalized_env(&start.env)?;
        let tar = super::docker::config_tar(&start.files)?
            .unwrap_or_else(|| crate::archive::TarBuilder::new(0).finish());
        let secret = spec::workspace_secret(start, &env, tar, &self.instance)?;
        let want = spec::pod(start, &env, &self.settings, &self.instance);
        // The Secret, the claims, the Service and the look at the current Pod do not depend
        // on each other: one round trip's latency instead of five.
        let claims = spec::claims(start, &self.settings)
            .into_iter()
            .map(|(name, size, _)| {
                self.ensure_claim(spec::claim(ws, name, &size, &self.settings, &self.instance))
            });
        let service = spec::service(ws, &self.instance);
        let (_, _, _, current) = futures::try_join!(
            self.apply("apply secret", &secret),
            futures::future::try_join_all(claims),
            self.apply("apply service", &service),
            self.pod(ws),
        )?;
        let hash = |p: &Pod| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LABEL_SPEC_HASH))
                .cloned()
        };
        if let Some(old) = current {
            let failed = matches!(status::presence(ws, Some(&old)), Presence::Stopped { .. });
            if hash(&old) == hash(&want) && !failed {
                return Ok(Started {
                    container_id: old.metadata.uid.clone().unwrap_or_default(),
                    host_url: spec::agent_url(ws),
                    image_id: String::new(),
                });
            }
            self.replace(ws, &old).await?;
        }
        let created = self
            .api::<Pod>(&ws.namespace)
            .create(&PostParams::default(), &want)
            .await
            .map_err(|e| map_error("create pod", e))?;
        Ok(Started {
            container_id: created.metadata.uid.unwrap_or_default(),
            host_url: spec::agent_url(ws),
            image_id: String::new(),
        })
    }

    /// Pause: the Pod goes; the claims, the Service and the Secrets stay.
    async fn stop(&self, ws: &WorkspaceRef) -> Result<(), BackendError> {
        if self.pod(ws).await?.is_none() {
            return Ok(());
        }
        self.delete::<Pod>("delete pod", &ws.namespace, &spec::object_name(ws))
            .await
    }

    async fn remove(&self, ws: &WorkspaceRef, remove_volume: bool) -> Result<(), BackendError> {
        let ns = &ws.namespace;
        let name = spec::object_name(ws);
        if self.pod(ws).await?.is_some() {
            self.delete::<Pod>("delete pod", ns, &name).await?;
        }
        self.delete::<Service>("delete service", ns, &name).await?;
        self.delete::<Secret>("delete secret", ns, &name).await?;
        // The files written since the start are the claims' content to come: they stay with
        // them (a restart keeps its plugins).
        if remove_volume {
            self.delete::<Secret>("delete secret", ns, &spec::files_secret_name(ws))
                .await?;
            for what in ["configs", "workspace", "sessions"] {
                self.delete::<PersistentVolumeClaim>(
                    "delete claim",
                    ns,
                    &spec::claim_name(ws, what),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn inspect(&self, ws: &WorkspaceRef) -> Result<Presence, BackendError> {
        Ok(status::presence(ws, self.pod(ws).await?.as_ref()))
    }

    /// Files written after the start wait in the files Secret; the init container places them
    /// at the next start (the plugin flow restarts the workspace after writing).
    async fn write_files(
        &self,
        ws: &WorkspaceRef,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        let (merged, removals) = self.merged_files(ws, files).await?;
        let tar = super::docker::config_tar(&merged)?.unwrap_or_default();
        if tar.len() > spec::MAX_SECRET_BYTES {
            return Err(BackendError::Permanent(format!(
                "the files written to the workspace take {} bytes; a Secret holds at most {}",
                tar.len(),
                spec::MAX_SECRET_BYTES
            )));
        }
        self.apply(
            "apply files secret",
            &spec::files_secret(ws, tar, &removals, &self.instance),
        )
        .await
    }

    async fn exec(&self, ws: &WorkspaceRef, _cmd: &[String]) -> Result<ExecOutput, BackendError> {
        Err(BackendError::Permanent(format!(
            "workspace {}: running commands in a Pod is not supported by the kubernetes backend",
            ws.name
        )))
    }

    /// Pods, claims, Services and Secrets of this installation (`molecule.ai/instance`).
    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError> {
        let lp = ListParams::default().labels(&format!(
            "{LABEL_MANAGED}=true,{LABEL_INSTANCE}={}",
            self.instance
        ));
        let (pods, claims, services, secrets) = futures::try_join!(
            self.managed_of::<Pod>("list pods", ManagedKind::Container, &lp),
            self.managed_of::<PersistentVolumeClaim>("list claims", ManagedKind::Volume, &lp),
            self.managed_of::<Service>("list services", ManagedKind::Service, &lp),
            self.managed_of::<Secret>("list secrets", ManagedKind::Secret, &lp),
        )?;
        Ok([pods, claims, services, secrets].concat())
    }

    async fn remove_managed(&self, m: &Managed) -> Result<(), BackendError> {
        let ns = &m.namespace;
        match m.kind {
            ManagedKind::Container => self.delete::<Pod>("delete pod", ns, &m.name).await,
            ManagedKind::Volume => {
                self.delete::<PersistentVolumeClaim>("delete claim", ns, &m.name)
                    .await
            }
            ManagedKind::Service => self.delete::<Service>("delete service", ns, &m.name).await,
            ManagedKind::Secret => self.delete::<Secret>("delete secret", ns, &m.name).await,
            ManagedKind::Instance => Ok(()),
        }
    }

    async fn console(&self, ws: &WorkspaceRef) -> Result<String, BackendError> {
        let lp = LogParams {
            container: Some("agent".into()),
            limit_bytes: Some(MAX_CONSOLE_BYTES as i64),
            tail_lines: Some(2000),
            ..Default::default()
        };
        self.api::<Pod>(&ws.namespace)
            .logs(&spec::object_name(ws), &lp)
            .await
            .map_err(|e| map_error("pod logs", e))
    }
}

/// One change to a workspace Pod of this installation, as its labels name the Workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodChange {
    pub namespace: String,
    /// The Workspace's name (absent when it did not fit a label value).
    pub workspace: Option<String>,
    pub uid: Option<String>,
}

/// Every change to this installation's workspace Pods (a kubelet's status write, a deletion),
/// from a label-selected watch that backs off and resumes on its own.
pub fn pod_changes(
    client: Client,
    instance: &str,
) -> impl futures::Stream<Item = PodChange> + Send + 'static {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let pods: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default()
        .labels(&format!("{LABEL_MANAGED}=true,{LABEL_INSTANCE}={instance}"));
    watcher(pods, cfg)
        .default_backoff()
        .touched_objects()
        .filter_map(|ev| async move {
            let pod = ev.ok()?;
            let labels = pod.metadata.labels.unwrap_or_default();
            Some(PodChange {
                namespace: pod.metadata.namespace.unwrap_or_default(),
                workspace: labels.get(LABEL_NAME).cloned(),
                uid: labels.get(LABEL_UID).cloned(),
            })
        })
}

/// A managed object found by label; its namespace is the Workspace's.
fn managed(kind: ManagedKind, m: &kube::api::ObjectMeta) -> Managed {
    let label = |k: &str| {
        m.labels
            .as_ref()
            .and_then(|l| l.get(k))
            .cloned()
            .unwrap_or_default()
    };
    Managed {
        kind,
        name: m.name.clone().unwrap_or_default(),
        uid: label(LABEL_UID),
        namespace: m.namespace.clone().unwrap_or_default(),
        workspace: label(LABEL_NAME),
        attempt: m
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::docker::LABEL_ATTEMPT))
            .cloned()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> ConfigFile {
        ConfigFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            mode: 0o644,
        }
    }

    fn paths(files: &[ConfigFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn a_tombstone_replaces_a_directory_and_a_reinstall_replaces_the_tombstone() {
        let installed = vec![
            file("plugins/a/x.md", "1"),
            file("plugins/a/.complete", "s\n"),
        ];
        let (merged, removals) = merge(vec![], vec![], &installed).expect("merge");
        assert_eq!(
            paths(&merged),
            vec!["plugins/a/.complete", "plugins/a/x.md"]
        );
        let (merged, removals) =
            merge(merged, removals, &[file("plugins/a", "")]).expect("tombstone");
        assert_eq!(paths(&merged), vec!["plugins/a"]);
        assert!(removals.contains(&"plugins/a".to_string()), "{removals:?}");
        let (merged, removals) =
            merge(merged, removals, &[file("plugins/a/y.md", "2")]).expect("reinstall");
        assert_eq!(paths(&merged), vec!["plugins/a/y.md"]);
        // At the next start the directory (or the tombstone file) goes before the tar lands.
        assert!(removals.contains(&"plugins/a".to_string()));
        assert!(merge(vec![], vec![], &[file("../x", "")]).is_err());
        assert!(placeable("../../etc").is_err() && placeable("plugins/a").is_ok());
        assert!(merge(vec![], vec![], &[file("a\nb", "")]).is_err());
    }
}
