//! The Docker backend against a real engine (ADR 0006, ADR 0034): container spec, tiers,
//! config files through the archive API and straight into the volume, listing and reaping,
//! exec. Each test works in its own network and image repository and removes them after.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, MountType, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptions, RemoveVolumeOptions,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use molecule::backends::docker::{
    AGENT_PORT, CONFIG_MOUNT, DOCKER_SOCKET, DockerBackend, LABEL_INSTANCE, LABEL_MANAGED,
    LABEL_NAME, LABEL_NAMESPACE, LABEL_SPEC_HASH, LABEL_UID, WORKSPACE_MOUNT, workspace_labels,
};
use molecule::backends::{
    BackendError, ConfigFile, Managed, ManagedKind, Presence, StartSpec, Tier, WorkspaceBackend,
    WorkspaceRef,
};
use molecule::images::ensure_image_for;

const MIB: i64 = 1024 * 1024;

/// Makes every [`TestEnv`] prefix of this process distinct.
static NEXT_ENV: AtomicU64 = AtomicU64::new(0);

/// One tar entry as read back: (path, typeflag, mode, content).
type Entry = (String, u8, u32, Vec<u8>);

/// Every entry of a tar archive (the engine's archive API output).
fn read_tar(bytes: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        let header = entry.header();
        out.push((
            String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            header.entry_type().as_byte(),
            header.mode().unwrap(),
            content,
        ));
    }
    out
}

fn file(path: &str, content: &[u8], mode: u32) -> ConfigFile {
    ConfigFile {
        path: path.to_string(),
        content: content.to_vec(),
        mode,
    }
}

/// One test's world: a unique 8-hex prefix for every uid (so names are `ws-<prefix>....`),
/// its own network and image repository, all removed by `cleanup`.
struct TestEnv {
    docker: Docker,
    prefix: String,
    network: String,
    repo: String,
    image: String,
}

impl TestEnv {
    async fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let prefix = hex::encode(
            &Sha256::digest(format!(
                "{}-{nanos}-{}",
                std::process::id(),
                NEXT_ENV.fetch_add(1, Ordering::Relaxed)
            ))[..4],
        );
        let docker = Docker::connect_with_local_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        let repo = format!("molecule-test-{prefix}/sleep");
        let image = ensure_image_for(
            &docker,
            Path::new("/bin/sleep"),
            &repo,
            &["/molecule", "300"],
        )
        .await
        .unwrap();
        Self {
            docker,
            network: format!("molecule-test-{prefix}"),
            prefix,
            repo,
            image,
        }
    }

    async fn backend(&self) -> DockerBackend {
        DockerBackend::connect(&self.network, &self.prefix)
            .await
            .unwrap()
            .with_stop_timeout(Duration::from_secs(1))
    }

    fn ws(&self, n: u16) -> WorkspaceRef {
        WorkspaceRef {
            uid: format!("{}-{n:04x}-4abc-8def-0123456789ab", self.prefix),
            namespace: "team-a".to_string(),
            name: format!("agent-{n}"),
            instance_id: None,
        }
    }

    fn spec(&self, n: u16, tier: Tier) -> StartSpec {
        StartSpec {
            workspace: self.ws(n),
            runtime: "echo".to_string(),
            image: self.image.clone(),
            env: vec![
                ("WORKSPACE_ID".into(), self.ws(n).uid),
                ("SECRET".into(), "s3cr3t-value".into()),
            ],
            tier,
            memory_mib: None,
            cpus: None,
            files: vec![
                file(".auth_token", b"token-123", 0o600),
                file("a/b.txt", b"nested", 0o644),
                file("run.sh", b"echo hi\r\n", 0o755),
            ],
            workspace_dir: None,
            extra_hosts: vec!["host.docker.internal:host-gateway".into()],
            platform: None,
        }
    }

    async fn cleanup(&self) {
        let name_filter = HashMap::from([("name", vec![format!("ws-{}", self.prefix)])]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&name_filter)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        for c in containers {
            if let Some(id) = c.id {
                let _ = self
                    .docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
            }
        }
        let volumes = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&name_filter)
                    .build(),
            ))
            .await
            .map(|v| v.volumes.unwrap_or_default())
            .unwrap_or_default();
        for v in volumes {
            let _ = self
                .docker
                .remove_volume(&v.name, None::<RemoveVolumeOptions>)
                .await;
        }
        let _ = self.docker.remove_network(&self.network).await;
        let ref_filter = HashMap::from([("reference", vec![self.repo.clone()])]);
        let images = self
            .docker
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&ref_filter)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        // By tag, never by id: identical content gives other tests' images the same id.
        let own = format!("{}:", self.repo);
        for tag in images
            .iter()
            .flat_map(|i| i.repo_tags.iter())
            .filter(|t| t.starts_with(&own))
        {
            let _ = self
                .docker
                .remove_image(tag, None::<RemoveImageOptions>, None)
                .await;
        }
    }

    /// CPUs of the engine's host (the backend caps CPU limits to it).
    async fn host_cpus(&self) -> i64 {
        let info = self.docker.info().await.unwrap();
        info.ncpu.filter(|n| *n > 0).unwrap_or(1)
    }

    /// Ids of every container labelled for `ws` by this test's installation.
    async fn labelled_containers(&self, ws: &WorkspaceRef) -> Vec<String> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_INSTANCE}={}", self.prefix),
                format!("{LABEL_UID}={}", ws.uid),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self.docker.list_containers(Some(options)).await.unwrap();
        list.into_iter().filter_map(|c| c.id).collect()
    }

    /// Files under /configs of a container, read through the archive API.
    async fn configs_of(&self, container: &str) -> Vec<Entry> {
        let chunks: Vec<_> = self
            .docker
            .download_from_container(
                container,
                Some(
                    DownloadFromContainerOptionsBuilder::default()
                        .path(CONFIG_MOUNT)
                        .build(),
                ),
            )
            .collect()
            .await;
        let mut bytes = Vec::new();
        for c in chunks {
            bytes.extend_from_slice(&c.unwrap());
        }
        read_tar(&bytes)
    }

    async fn volume_exists(&self, name: &str) -> bool {
        self.docker.inspect_volume(name).await.is_ok()
    }

    async fn container(&self, name: &str) -> Option<ContainerInspectResponse> {
        self.docker.inspect_container(name, None).await.ok()
    }
}

/// Runs `body` against a fresh [`TestEnv`] and always cleans up, even when it panics.
async fn with_env<F, Fut>(body: F)
where
    F: FnOnce(Arc<TestEnv>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let env = Arc::new(TestEnv::new().await);
    let outcome = tokio::spawn(body(env.clone())).await;
    env.cleanup().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn find<'a>(entries: &'a [Entry], path: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.0 == path)
}

#[tokio::test]
async fn workspace_lifecycle_on_real_docker() {
    with_env(|env| async move {
        let backend = env.backend().await;
        let ws = env.ws(1);
        let spec = env.spec(1, Tier::Standard);
        assert_eq!(backend.inspect(&ws).await.unwrap(), Presence::Absent);

        let started = backend.ensure_started(&spec).await.unwrap();
        let c = env.container(&ws.container_name()).await.unwrap();
        assert_eq!(c.id.as_deref(), Some(started.container_id.as_str()));
        assert_eq!(c.image.as_deref(), Some(started.image_id.as_str()));
        assert_eq!(c.state.as_ref().and_then(|s| s.running), Some(true));
        let labels = c.config.as_ref().and_then(|c| c.labels.clone()).unwrap();
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_UID], ws.uid);
        assert_eq!(labels[LABEL_NAMESPACE], "team-a");
        assert_eq!(labels[LABEL_NAME], "agent-1");
        assert_eq!(labels[LABEL_SPEC_HASH].len(), 64);
        let env_list = c.config.as_ref().and_then(|c| c.env.clone()).unwrap();
        assert!(env_list.contains(&"SECRET=s3cr3t-value".to_string()));
        let host = c.host_config.clone().unwrap();
        assert_eq!(host.memory, Some(512 * MIB));
        assert_eq!(host.nano_cpus, Some(1_000_000_000));
        assert_eq!(
            host.restart_policy.and_then(|r| r.name),
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        assert_eq!(host.readonly_rootfs, Some(false));
        assert_eq!(
            host.extra_hosts,
            Some(vec!["host.docker.internal:host-gateway".to_string()])
        );
        let mounts = host.mounts.unwrap_or_default();
        assert_eq!(
            mounts.len(),
            2,
            "/configs and a persistent /workspace (ADR 0048)"
        );
        assert_eq!(mounts[0].source.as_deref(), Some(ws.volume_name().as_str()));
        assert_eq!(mounts[0].target.as_deref(), Some("/configs"));
        assert_eq!(
            mounts[1].source.as_deref(),
            Some(ws.workspace_volume_name().as_str())
        );
        assert_eq!(mounts[1].target.as_deref(), Some("/workspace"));
        let networks = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .unwrap();
        assert!(networks.contains_key(&env.network), "{networks:?}");
        let binding = c
            .network_settings
            .as_ref()
            .and_then(|n| n.ports.as_ref())
            .and_then(|p| p.get(AGENT_PORT).cloned().flatten())
            .and_then(|b| b.first().cloned())
            .unwrap();
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        let port = binding.host_port.unwrap();
        assert!(port.parse::<u16>().unwrap() > 0);
        assert_eq!(started.host_url, format!("http://127.0.0.1:{port}"));

        // The files are in the volume, with their modes; scripts got LF endings.
        let files = env.configs_of(&started.container_id).await;
        let token = find(&files, "configs/.auth_token").unwrap();
        assert_eq!(
            (token.2 & 0o7777, token.3.as_slice()),
            (0o600, &b"token-123"[..])
        );
        assert_eq!(find(&files, "configs/a/b.txt").unwrap().3, b"nested");
        assert_eq!(find(&files, "configs/run.sh").unwrap().3, b"echo hi\n");

        match backend.inspect(&ws).await.unwrap() {
            Presence::Running {
                container_id,
                host_url,
                started_at,
                attempt,
                waiting: _,
            } => {
                assert_eq!(
                    attempt,
                    Some(molecule::backends::attempt_of(&spec.files)),
                    "the container carries its provision attempt"
                );
                assert_eq!(container_id, started.container_id);
                assert_eq!(host_url.as_deref(), Some(started.host_url.as_str()));
                assert!(started_at.is_some());
            }
            other => panic!("expected Running, got {other:?}"),
        }

        // Idempotent.
        let again = backend.ensure_started(&spec).await.unwrap();
        assert_eq!(again, started);

        // write_files on a running container; the file survives a recreate (same volume).
        backend
            .write_files(&ws, &[file("extra/notes.md", b"# hi\r\n", 0o640)])
            .await
            .unwrap();
        assert!(
            backend
                .write_files(&ws, &[file("/abs", b"", 0o644)])
                .await
                .is_err()
        );

        // exec without a shell: /molecule is sleep.
        let ok = backend
            .exec(&ws, &["/molecule".into(), "0".into()])
            .await
            .unwrap();
        assert_eq!(ok.exit_code, 0);
        let bad = backend.exec(&ws, &["/molecule".into()]).await.unwrap();
        assert_eq!(bad.exit_code, 1);
        assert!(String::from_utf8_lossy(&bad.stderr).contains("missing operand"));

        // Changed env → new container, same volume.
        let mut changed = spec.clone();
        changed.env.push(("NEW".into(), "1".into()));
        let recreated = backend.ensure_started(&changed).await.unwrap();
        assert_ne!(recreated.container_id, started.container_id);
        assert!(env.container(&started.container_id).await.is_none());
        let files = env.configs_of(&recreated.container_id).await;
        let notes = find(&files, "configs/extra/notes.md").unwrap();
        assert_eq!(
            (notes.2 & 0o7777, notes.3.as_slice()),
            (0o640, &b"# hi\n"[..])
        );

        // Stop keeps container and volume.
        backend.stop(&ws).await.unwrap();
        match backend.inspect(&ws).await.unwrap() {
            Presence::Stopped { container_id, .. } => {
                assert_eq!(container_id, recreated.container_id)
            }
            other => panic!("expected Stopped, got {other:?}"),
        }
        assert!(env.volume_exists(&ws.volume_name()).await);
        assert!(env.volume_exists(&ws.workspace_volume_name()).await);
        backend.stop(&ws).await.unwrap();
        // write_files into a stopped container.
        backend
            .write_files(&ws, &[file(".auth_token", b"token-456", 0o600)])
            .await
            .unwrap();
        let restarted = backend.ensure_started(&changed).await.unwrap();
        assert_eq!(restarted.container_id, recreated.container_id);
        assert!(matches!(
            backend.inspect(&ws).await.unwrap(),
            Presence::Running { .. }
        ));
        let files = env.configs_of(&restarted.container_id).await;
        assert_eq!(find(&files, "configs/.auth_token").unwrap().3, b"token-123");

        // Remove with the volume; twice is fine.
        backend.remove(&ws, true).await.unwrap();
        assert!(env.container(&ws.container_name()).await.is_none());
        assert!(!env.volume_exists(&ws.volume_name()).await);
        assert!(!env.volume_exists(&ws.workspace_volume_name()).await);
        backend.remove(&ws, true).await.unwrap();
        backend.stop(&ws).await.unwrap();
        assert_eq!(backend.inspect(&ws).await.unwrap(), Presence::Absent);
    })
    .await;
}

#[tokio::test]
async fn tiers_shape_the_host_config() {
    with_env(|env| async move {
        let backend = env.backend().await;
        let dir = tempfile::tempdir().unwrap();

        // Tier 1: read-only rootfs, tmpfs /tmp, no limits, no workspace dir, files still land.
        let mut t1 = env.spec(1, Tier::Sandboxed);
        t1.workspace_dir = Some((dir.path().to_path_buf(), false));
        let s1 = backend.ensure_started(&t1).await.unwrap();
        let host = env
            .container(&s1.container_id)
            .await
            .unwrap()
            .host_config
            .unwrap();
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(
            host.tmpfs
                .unwrap_or_default()
                .get("/tmp")
                .map(String::as_str),
            Some("size=64m,noexec")
        );
        assert!(host.memory.unwrap_or(0) == 0 && host.nano_cpus.unwrap_or(0) == 0);
        let mounts = host.mounts.unwrap_or_default();
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        let files = env.configs_of(&s1.container_id).await;
        assert_eq!(find(&files, "configs/.auth_token").unwrap().3, b"token-123");

        // Tier 3 with a memory override and a read-only workspace dir.
        let mut t3 = env.spec(3, Tier::PrivilegedLite);
        t3.memory_mib = Some(1024);
        t3.workspace_dir = Some((dir.path().to_path_buf(), true));
        let s3 = backend.ensure_started(&t3).await.unwrap();
        let host = env
            .container(&s3.container_id)
            .await
            .unwrap()
            .host_config
            .unwrap();
        assert_eq!(host.memory, Some(1024 * MIB));
        let cpus = env.host_cpus().await;
        assert_eq!(host.nano_cpus, Some(cpus.min(2) * 1_000_000_000));
        let ws_mount = host
            .mounts
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.target.as_deref() == Some(WORKSPACE_MOUNT))
            .unwrap();
        assert_eq!(ws_mount.typ, Some(MountType::BIND));
        assert_eq!(ws_mount.read_only, Some(true));
        assert_eq!(
            ws_mount.source.as_deref(),
            Some(dir.path().to_string_lossy().as_ref())
        );

        // Tier 4: docker socket, 4 GiB, 4 CPUs.
        let s4 = backend
            .ensure_started(&env.spec(4, Tier::FullHost))
            .await
            .unwrap();
        let host = env
            .container(&s4.container_id)
            .await
            .unwrap()
            .host_config
            .unwrap();
        assert_eq!(host.memory, Some(4096 * MIB));
        // Capped to the host's CPUs (this machine may have fewer than 4).
        assert_eq!(host.nano_cpus, Some(cpus.min(4) * 1_000_000_000));
        assert!(host.mounts.unwrap_or_default().iter().any(|m| {
            m.source.as_deref() == Some(DOCKER_SOCKET) && m.target.as_deref() == Some(DOCKER_SOCKET)
        }));

        // Changing the tier recreates the container.
        let mut t4b = env.spec(4, Tier::Standard);
        t4b.files.clear();
        let s4b = backend.ensure_started(&t4b).await.unwrap();
        assert_ne!(s4b.container_id, s4.container_id);

        for n in [1, 3, 4] {
            backend.remove(&env.ws(n), true).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn managed_objects_are_listed_and_reaped_but_strangers_are_not() {
    with_env(|env| async move {
        let backend = env.backend().await;
        let ours = env.ws(1);
        backend
            .ensure_started(&env.spec(1, Tier::Standard))
            .await
            .unwrap();

        // A labelled stray volume (its workspace is gone).
        let stray = env.ws(2);
        env.docker
            .create_volume(VolumeCreateRequest {
                name: Some(stray.volume_name()),
                labels: Some(workspace_labels(&stray, &env.prefix)),
                ..Default::default()
            })
            .await
            .unwrap();
        // An unlabelled container that happens to carry a ws- name.
        let stranger = env.ws(3);
        env.docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::default()
                        .name(&stranger.container_name())
                        .build(),
                ),
                ContainerCreateBody {
                    image: Some(env.image.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();

        let prefix = format!("ws-{}", env.prefix);
        let listed: Vec<Managed> = backend
            .list_managed()
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.name.starts_with(&prefix))
            .collect();
        let expected = vec![
            Managed {
                kind: ManagedKind::Container,
                name: ours.container_name(),
                uid: ours.uid.clone(),
                namespace: "team-a".into(),
                workspace: "agent-1".into(),
                attempt: String::new(),
            },
            // The persistent /workspace (ADR 0048); listed before `ws-<id12>-configs`.
            Managed {
                kind: ManagedKind::Volume,
                name: ours.workspace_volume_name(),
                uid: ours.uid.clone(),
                namespace: "team-a".into(),
                workspace: "agent-1".into(),
                attempt: String::new(),
            },
            Managed {
                kind: ManagedKind::Volume,
                name: ours.volume_name(),
                uid: ours.uid.clone(),
                namespace: "team-a".into(),
                workspace: "agent-1".into(),
                attempt: String::new(),
            },
            Managed {
                kind: ManagedKind::Volume,
                name: stray.volume_name(),
                uid: stray.uid.clone(),
                namespace: "team-a".into(),
                workspace: "agent-2".into(),
                attempt: String::new(),
            },
        ];
        assert_eq!(listed, expected);

        backend.remove_managed(&expected[3]).await.unwrap();
        assert!(!env.volume_exists(&stray.volume_name()).await);
        backend.remove_managed(&expected[3]).await.unwrap();

        // The stranger is never touched.
        let fake = Managed {
            kind: ManagedKind::Container,
            name: stranger.container_name(),
            uid: stranger.uid.clone(),
            namespace: "team-a".into(),
            workspace: "agent-3".into(),
            attempt: String::new(),
        };
        assert_eq!(
            backend.remove_managed(&fake).await.unwrap_err().category(),
            "Permanent"
        );
        assert_eq!(backend.inspect(&stranger).await.unwrap(), Presence::Absent);
        backend.stop(&stranger).await.unwrap();
        backend.remove(&stranger, true).await.unwrap();
        assert!(
            backend
                .write_files(&stranger, &[file("x", b"y", 0o644)])
                .await
                .is_err()
        );
        let err = backend
            .ensure_started(&env.spec(3, Tier::Standard))
            .await
            .unwrap_err();
        assert_eq!(err.category(), "Permanent", "{err}");
        assert!(env.container(&stranger.container_name()).await.is_some());

        // Reaping our own container and volume through the same path.
        backend.remove_managed(&expected[0]).await.unwrap();
        backend.remove_managed(&expected[1]).await.unwrap();
        backend.remove_managed(&expected[2]).await.unwrap();
        assert!(env.container(&ours.container_name()).await.is_none());
        assert!(!env.volume_exists(&ours.volume_name()).await);
        assert!(!env.volume_exists(&ours.workspace_volume_name()).await);
    })
    .await;
}

#[tokio::test]
async fn direct_volume_writes_match_the_archive_api_and_never_follow_symlinks() {
    use std::os::unix::fs::MetadataExt;
    with_env(|env| async move {
        let sorted = |mut v: Vec<Entry>| {
            v.sort();
            v
        };
        // The same spec through both paths: the container sees the same tree.
        let direct = env.backend().await;
        let archive = env.backend().await.with_direct_volume_writes(false);
        let a = direct
            .ensure_started(&env.spec(1, Tier::Standard))
            .await
            .unwrap();
        let b = archive
            .ensure_started(&env.spec(2, Tier::Standard))
            .await
            .unwrap();
        assert_eq!(direct.config_writes().direct.load(Ordering::Relaxed), 1);
        assert_eq!(direct.config_writes().archive.load(Ordering::Relaxed), 0);
        assert_eq!(archive.config_writes().direct.load(Ordering::Relaxed), 0);
        assert_eq!(archive.config_writes().archive.load(Ordering::Relaxed), 1);
        let seen_a = sorted(env.configs_of(&a.container_id).await);
        assert_eq!(seen_a, sorted(env.configs_of(&b.container_id).await));
        let token = find(&seen_a, "configs/.auth_token").unwrap();
        assert_eq!(
            (token.2 & 0o7777, token.3.as_slice()),
            (0o600, &b"token-123"[..])
        );
        assert_eq!(find(&seen_a, "configs/run.sh").unwrap().3, b"echo hi\n");
        // Owned by the container's root, like the archive API's 0:0.
        let dir = env
            .docker
            .inspect_volume(&env.ws(1).volume_name())
            .await
            .unwrap()
            .mountpoint;
        let root = std::fs::metadata(&dir).unwrap();
        let nested = std::fs::metadata(Path::new(&dir).join("a/b.txt")).unwrap();
        assert_eq!((nested.uid(), nested.gid()), (root.uid(), root.gid()));

        // An earlier container left a symlink to a host file where the token goes: the
        // direct path refuses it, the archive API writes inside the container's view, and
        // the host file is untouched.
        let victim = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(victim.path(), "host file").unwrap();
        direct.stop(&env.ws(1)).await.unwrap();
        std::fs::remove_file(Path::new(&dir).join(".auth_token")).unwrap();
        std::os::unix::fs::symlink(victim.path(), Path::new(&dir).join(".auth_token")).unwrap();
        let mut changed = env.spec(1, Tier::Standard);
        changed.files[0].content = b"token-456".to_vec();
        direct.ensure_started(&changed).await.unwrap();
        assert_eq!(std::fs::read(victim.path()).unwrap(), b"host file");
        let token_path = Path::new(&dir).join(".auth_token");
        let meta = std::fs::symlink_metadata(&token_path).unwrap();
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(std::fs::read(&token_path).unwrap(), b"token-456");
        assert_eq!(direct.config_writes().archive.load(Ordering::Relaxed), 1);
        // Direct writes stay on for the next workspace.
        direct
            .ensure_started(&env.spec(3, Tier::Standard))
            .await
            .unwrap();
        assert_eq!(direct.config_writes().direct.load(Ordering::Relaxed), 2);
    })
    .await;
}

#[tokio::test]
async fn files_before_first_start_and_missing_images() {
    with_env(|env| async move {
        // No container yet: write_files needs the helper image.
        let ws = env.ws(1);
        let plain = env.backend().await;
        let err = plain
            .write_files(&ws, &[file("x", b"y", 0o644)])
            .await
            .unwrap_err();
        assert_eq!(err.category(), "Permanent");

        let backend = env.backend().await.with_helper_image(env.image.clone());
        backend
            .write_files(&ws, &[file("pre/seed.txt", b"seeded", 0o600)])
            .await
            .unwrap();
        // The helper is gone; the volume is labelled and holds the file.
        let helpers = env.labelled_containers(&ws).await;
        assert!(helpers.is_empty(), "{helpers:?}");
        let vol = env.docker.inspect_volume(&ws.volume_name()).await.unwrap();
        assert_eq!(vol.labels.get(LABEL_UID), Some(&ws.uid));

        let started = backend
            .ensure_started(&env.spec(1, Tier::Standard))
            .await
            .unwrap();
        let files = env.configs_of(&started.container_id).await;
        let seed = find(&files, "configs/pre/seed.txt").unwrap();
        assert_eq!(
            (seed.2 & 0o7777, seed.3.as_slice()),
            (0o600, &b"seeded"[..])
        );

        // A missing image is ImageMissing and creates no container.
        let mut missing = env.spec(2, Tier::Standard);
        missing.image = format!("molecule-test-{}/absent:nope", env.prefix);
        let err = backend.ensure_started(&missing).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::ImageMissing(i) if *i == missing.image),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cr3t"));
        assert_eq!(backend.inspect(&env.ws(2)).await.unwrap(), Presence::Absent);

        // A bad workspace dir is Permanent and its message carries no env value.
        let mut bad = env.spec(5, Tier::Standard);
        bad.workspace_dir = Some((PathBuf::from("/nonexistent/molecule-test"), false));
        let err = backend.ensure_started(&bad).await.unwrap_err();
        assert_eq!(err.category(), "Permanent", "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");

        let net = backend.ensure_network().await.unwrap();
        assert_eq!(net.name, env.network);
        assert!(matches!(net.gateway_ip, Some(IpAddr::V4(_))), "{net:?}");
    })
    .await;
}
