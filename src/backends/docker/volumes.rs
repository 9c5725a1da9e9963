//! The config volume: created labelled, written before the first start (straight into its
//! directory when reachable, ADR 0034, else through the archive API), written through a
//! short-lived helper container when no workspace container exists, removed by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveVolumeOptions, UploadToContainerOptionsBuilder,
};
use sha2::{Digest, Sha256};

use crate::archive::TarBuilder;
use crate::backends::{normalize_line_endings, validate_file_path, volume_dir};

use super::errors::{is_not_found, map_create_error, map_error, status_of};
use super::{
    BackendError, CONFIG_MOUNT, ConfigFile, DockerBackend, HELPER_ENTRYPOINT, LABEL_ROLE, Lookup,
    ROLE_FILE_WRITER, WorkspaceRef,
};

impl DockerBackend {
    /// Creates the config volume if missing (one call: the engine returns an existing volume
    /// as it is); an existing volume must be ours. The volume's directory when it is a plain
    /// `local` volume, for direct writes ([`DockerBackend::write_before_start`]).
    pub(super) async fn ensure_volume(
        &self,
        ws: &WorkspaceRef,
    ) -> Result<Option<PathBuf>, BackendError> {
        let name = ws.volume_name();
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(self.workspace_labels(ws)),
            ..Default::default()
        };
        let v = self
            .timed(self.docker.create_volume(request))
            .await
            .map_err(|e| map_error("create volume", e))?;
        if !self.owned_by(&v.labels, ws) {
            return Err(BackendError::Permanent(format!(
                "volume {name} exists but is not managed by molecule for this workspace"
            )));
        }
        let plain_local = v.driver == "local" && v.options.values().all(|o| o.is_empty());
        let dir = PathBuf::from(&v.mountpoint);
        let usable =
            plain_local && dir.is_absolute() && dir.ends_with(Path::new(&name).join("_data"));
        Ok(usable.then_some(dir))
    }

    /// Creates a data volume (`/workspace`, sessions; ADR 0048) if missing; an existing one
    /// must be ours. Its content is never touched: it outlives every container of the
    /// workspace and goes with the workspace.
    pub(super) async fn ensure_data_volume(
        &self,
        ws: &WorkspaceRef,
        name: String,
    ) -> Result<(), BackendError> {
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(self.workspace_labels(ws)),
            ..Default::default()
        };
        let v = self
            .timed(self.docker.create_volume(request))
            .await
            .map_err(|e| map_error("create volume", e))?;
        if !self.owned_by(&v.labels, ws) {
            return Err(BackendError::Permanent(format!(
                "volume {name} exists but is not managed by molecule for this workspace"
            )));
        }
        Ok(())
    }

    /// Removes one of the workspace's volumes if it is ours; gone is success, a volume that
    /// is not ours is left alone.
    pub(super) async fn remove_owned_volume(
        &self,
        ws: &WorkspaceRef,
        name: &str,
    ) -> Result<(), BackendError> {
        match self.timed(self.docker.inspect_volume(name)).await {
            Ok(v) if self.owned_by(&v.labels, ws) => remove_volume_by_name(self, name).await,
            Ok(_) => {
                tracing::warn!(volume = %name, "volume is not managed for this workspace; leaving it alone");
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_error("inspect volume", e)),
        }
    }

    /// Writes the config files while no container of the workspace runs: straight into the
    /// volume's directory when it is reachable (ADR 0034), else through the archive API into
    /// `container`, which has the volume mounted.
    pub(super) async fn write_before_start(
        &self,
        container: &str,
        volume_dir: Option<PathBuf>,
        payload: ConfigPayload,
    ) -> Result<(), BackendError> {
        let ConfigPayload { tar, entries } = payload;
        if let Some(dir) = volume_dir.filter(|_| self.direct_writes.load(Ordering::Relaxed)) {
            let written = tokio::task::spawn_blocking(move || volume_dir::write(&dir, &entries))
                .await
                .map_err(|e| BackendError::Transient(format!("write config files: {e}")))?;
            match written {
                Ok(()) => {
                    self.writes.direct.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(r) if r.unreachable => {
                    if self.direct_writes.swap(false, Ordering::Relaxed) {
                        tracing::info!(reason = %r.reason, "volume directories are not reachable from this process; config files go through the archive API");
                    }
                }
                Err(r) => {
                    tracing::info!(container, reason = %r.reason, "config volume holds something unexpected; writing through the archive API instead");
                }
            }
        }
        self.upload(container, tar).await
    }

    pub(super) async fn upload(&self, container: &str, tar: Vec<u8>) -> Result<(), BackendError> {
        self.writes.archive.fetch_add(1, Ordering::Relaxed);
        let options = UploadToContainerOptionsBuilder::default()
            .path(CONFIG_MOUNT)
            .build();
        self.timed(self.docker.upload_to_container(
            container,
            Some(options),
            bollard::body_full(tar.into()),
        ))
        .await
        .map_err(|e| map_error("write config files", e))
    }

    async fn write_with_helper(&self, ws: &WorkspaceRef, tar: Vec<u8>) -> Result<(), BackendError> {
        let Some(image) = self.helper_image.clone() else {
            return Err(BackendError::Permanent(format!(
                "workspace {} has no container and no helper image is configured to write its config volume",
                ws.container_name()
            )));
        };
        self.ensure_volume(ws).await?;
        let name = format!("{}-files-{}", ws.container_name(), unique_suffix());
        let mut labels = self.workspace_labels(ws);
        labels.insert(LABEL_ROLE.to_string(), ROLE_FILE_WRITER.to_string());
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec![HELPER_ENTRYPOINT.to_string()]),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                mounts: Some(vec![Mount {
                    typ: Some(MountType::VOLUME),
                    source: Some(ws.volume_name()),
                    target: Some(CONFIG_MOUNT.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .timed(self.docker.create_container(Some(options), body))
            .await
            .map_err(|e| map_create_error(e, &image, &[]))?;
        let uploaded = self.upload(&created.id, tar).await;
        let removed = self.force_remove(&created.id).await;
        uploaded?;
        if let Err(e) = removed {
            tracing::warn!(container = %name, error = %e, "could not remove the file-writer helper; it will be reaped");
        }
        Ok(())
    }

    /// Writes `files` into the config volume: into the running or stopped workspace container,
    /// else through a helper container.
    pub(super) async fn write_config_files(
        &self,
        ws: &WorkspaceRef,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        let Some(tar) = config_tar(files)? else {
            return Ok(());
        };
        match self.lookup_container(ws).await? {
            Lookup::Owned(c) => {
                let id = c.id.clone().unwrap_or_else(|| ws.container_name());
                self.upload(&id, tar).await
            }
            Lookup::Foreign => Err(BackendError::Permanent(format!(
                "container name {} is taken by a container molecule does not manage",
                ws.container_name()
            ))),
            Lookup::Absent => self.write_with_helper(ws, tar).await,
        }
    }
}

pub(super) async fn remove_volume_by_name(
    backend: &DockerBackend,
    name: &str,
) -> Result<(), BackendError> {
    match backend
        .timed(
            backend
                .docker
                .remove_volume(name, None::<RemoveVolumeOptions>),
        )
        .await
    {
        Ok(()) => {
            tracing::info!(volume = %name, "removed volume");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        // In use: a container is still going away (or a stray holds it); retry later.
        Err(e) if status_of(&e) == Some(409) => Err(BackendError::Transient(format!(
            "volume {name} is still in use"
        ))),
        Err(e) => Err(map_error("remove volume", e)),
    }
}

/// Tar of the config files (parents created as needed, modes from the files, CRLF→LF for scripts),
/// or None when there are no files. Later duplicates of a path win.
pub(crate) fn config_tar(files: &[ConfigFile]) -> Result<Option<Vec<u8>>, BackendError> {
    Ok(config_payload(files)?.map(|p| p.tar))
}

/// The config files both as a tar for the archive API and as entries for a direct write into the
/// volume's directory ([`volume_dir`]); the same validation and normalisation for both.
pub(super) struct ConfigPayload {
    pub(super) tar: Vec<u8>,
    entries: Vec<volume_dir::Entry>,
}

pub(super) fn config_payload(files: &[ConfigFile]) -> Result<Option<ConfigPayload>, BackendError> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut last: BTreeMap<&str, &ConfigFile> = BTreeMap::new();
    for f in files {
        validate_file_path(&f.path)
            .map_err(|e| BackendError::Permanent(format!("invalid config file path: {e}")))?;
        last.insert(f.path.as_str(), f);
    }
    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut tar = TarBuilder::new(mtime);
    let mut entries = Vec::with_capacity(last.len());
    for f in files {
        // Keep the caller's order but write each path once, with its last content.
        if last
            .get(f.path.as_str())
            .is_some_and(|l| std::ptr::eq(*l, f))
        {
            let content = normalize_line_endings(&f.path, &f.content);
            tar.file(&f.path, f.mode, &content)?;
            entries.push(volume_dir::Entry {
                path: f.path.clone(),
                mode: f.mode,
                content,
            });
        }
    }
    Ok(Some(ConfigPayload {
        tar: tar.finish(),
        entries,
    }))
}

/// A process-unique suffix for helper container names.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(std::process::id().to_be_bytes());
    h.update(nanos.to_be_bytes());
    h.update(n.to_be_bytes());
    hex::encode(&h.finalize()[..5])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::read_entries;

    fn file(path: &str, content: &[u8], mode: u32) -> ConfigFile {
        ConfigFile {
            path: path.to_string(),
            content: content.to_vec(),
            mode,
        }
    }

    #[test]
    fn config_tar_has_parents_modes_and_normalised_scripts() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let longer = vec!["x".repeat(200); 5].join("/");
        let tar = config_tar(&[
            file(".auth_token", b"tok", 0o600),
            file("a/b/c.txt", b"hello", 0o644),
            file("run.sh", b"echo 1\r\n", 0o755),
            file("a/b/c.txt", b"second", 0o640),
            file(&long, b"split", 0o644),
            file(&longer, b"gnu", 0o644),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(tar.len() % 512, 0);
        let entries = read_entries(&tar);
        let find = |p: &str| entries.iter().find(|e| e.0 == p).cloned();
        assert_eq!(
            find(".auth_token"),
            Some((".auth_token".into(), b'0', 0o600, b"tok".to_vec()))
        );
        assert_eq!(find("a/"), Some(("a/".into(), b'5', 0o755, vec![])));
        assert_eq!(find("a/b/"), Some(("a/b/".into(), b'5', 0o755, vec![])));
        assert_eq!(
            find("a/b/c.txt").map(|e| (e.2, e.3)),
            Some((0o640, b"second".to_vec()))
        );
        assert_eq!(entries.iter().filter(|e| e.0 == "a/b/c.txt").count(), 1);
        assert_eq!(find("run.sh").map(|e| e.3), Some(b"echo 1\n".to_vec()));
        assert_eq!(find(&long).map(|e| e.3), Some(b"split".to_vec()));
        assert_eq!(find(&longer).map(|e| e.3), Some(b"gnu".to_vec()));
        // Parents come before children.
        let pos = |p: &str| entries.iter().position(|e| e.0 == p).unwrap();
        assert!(pos("a/") < pos("a/b/") && pos("a/b/") < pos("a/b/c.txt"));

        assert_eq!(config_tar(&[]).unwrap(), None);
        assert!(config_tar(&[file("../x", b"", 0o644)]).is_err());
        assert!(config_tar(&[file("a", b"", 0o644), file("a/b", b"", 0o644)]).is_err());
        assert!(config_tar(&[file("a/b", b"", 0o644), file("a", b"", 0o644)]).is_err());
    }
}
