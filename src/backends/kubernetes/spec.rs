//! What a workspace looks like on Kubernetes (ADR 0057): its Pod (an init container that places
//! the config files, the agent container with its tier's limits and security context), its
//! PVCs, its Service and its Secrets. Pure functions of the start spec, so they are tested
//! without a server.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource,
    KeyToPath, LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, ResourceRequirements, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::KubernetesSettings;
use crate::backends::docker::{
    CONFIG_MOUNT, DOCKER_SOCKET, LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_MANAGED, LABEL_NAME,
    LABEL_NAMESPACE, LABEL_SPEC_HASH, LABEL_UID, SESSIONS_MOUNT, WORKSPACE_MOUNT,
};
use crate::backends::{BackendError, StartSpec, Tier, WorkspaceRef};

/// The agent's A2A port in the Pod and on the Service.
pub const AGENT_PORT: i32 = 8000;
/// The key of the config files' tar in the workspace Secret.
pub const CONFIGS_KEY: &str = "configs.tar";
/// The key of the files written after the start (plugins) in the files Secret.
pub const FILES_KEY: &str = "files.tar";
/// Paths under `/configs` the init container removes before it places the files Secret's tar
/// (a directory a later write replaced with a file, as a plugin's tombstone does), one a line.
pub const REMOVE_KEY: &str = "remove.list";
/// Env values live in the workspace Secret under this prefix plus the variable's name.
pub const ENV_PREFIX: &str = "env.";
/// The largest Secret the API accepts (1 MiB); the config files and env must fit in one.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;
const SPEC_HASH_VERSION: &str = "molecule-pod-v1";
const SEED_MOUNT: &str = "/molecule/seed";
const FILES_MOUNT: &str = "/molecule/files";

/// "ws-<id12>": the Pod, the Service and the workspace Secret.
pub fn object_name(ws: &WorkspaceRef) -> String {
    ws.container_name()
}

/// "ws-<id12>-files": the Secret of files written after the start.
pub fn files_secret_name(ws: &WorkspaceRef) -> String {
    format!("{}-files", object_name(ws))
}

/// "ws-<id12>-configs", "ws-<id12>-workspace", "ws-<id12>-sessions".
pub fn claim_name(ws: &WorkspaceRef, what: &str) -> String {
    format!("{}-{what}", object_name(ws))
}

/// The labels every object of a workspace carries: managed, instance, uid, and the Workspace's
/// namespace and name (the name only when it fits a label value).
pub fn labels(ws: &WorkspaceRef, instance: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_UID.to_string(), ws.uid.clone()),
        (LABEL_NAMESPACE.to_string(), ws.namespace.clone()),
    ]);
    if ws.name.len() <= 63 {
        l.insert(LABEL_NAME.to_string(), ws.name.clone());
    }
    l
}

/// The Workspace as the controller owner of an object (so the GC removes it too, though the
/// finalizer already does).
pub fn owner(ws: &WorkspaceRef) -> OwnerReference {
    OwnerReference {
        api_version: "molecule.ai/v1alpha1".into(),
        kind: "Workspace".into(),
        name: ws.name.clone(),
        uid: ws.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(ws: &WorkspaceRef, name: String, instance: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ws.namespace.clone()),
        labels: Some(labels(ws, instance)),
        owner_references: Some(vec![owner(ws)]),
        ..Default::default()
    }
}

/// The workspace Secret: the config files as one tar (the init container unpacks it into the
/// configs PVC) and each env value under `env.<NAME>`, so the Pod spec holds no secret value.
pub fn workspace_secret(
    spec: &StartSpec,
    env: &[(String, String)],
    configs_tar: Vec<u8>,
    instance: &str,
) -> Result<Secret, BackendError> {
    let mut data = BTreeMap::new();
    data.insert(CONFIGS_KEY.to_string(), ByteString(configs_tar));
    for (k, v) in env {
        let key = format!("{ENV_PREFIX}{k}");
        if !crate::apiserver::validation::is_config_key(&key) {
            return Err(BackendError::Permanent(format!(
                "environment variable name {k:?} cannot be a Secret key on the kubernetes backend (letters, digits, '-', '_' and '.' only)"
            )));
        }
        data.insert(key, ByteString(v.clone().into_bytes()));
    }
    let size: usize = data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
    if size > MAX_SECRET_BYTES {
        return Err(BackendError::Permanent(format!(
            "the config files and env take {size} bytes; a Secret holds at most {MAX_SECRET_BYTES}"
        )));
    }
    Ok(Secret {
        metadata: meta(&spec.workspace, object_name(&spec.workspace), instance),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    })
}

/// The files Secret: files written after the start, one tar placed over the configs at the
/// next start, after the paths of `removals` are removed.
pub fn files_secret(
    ws: &WorkspaceRef,
    tar: Vec<u8>,
    removals: &[String],
    instance: &str,
) -> Secret {
    let mut data = BTreeMap::from([(FILES_KEY.to_string(), ByteString(tar))]);
    if !removals.is_empty() {
        let list = removals
            .iter()
            .map(|p| format!("{p}\n"))
            .collect::<String>();
        data.insert(REMOVE_KEY.to_string(), ByteString(list.into_bytes()));
    }
    Secret {
        metadata: meta(ws, files_secret_name(ws), instance),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// A ReadWriteOnce claim of `size`.
pub fn claim(
    ws: &WorkspaceRef,
    name: String,
    size: &str,
    settings: &KubernetesSettings,
    instance: &str,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(ws, name, instance),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: settings.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The claims a workspace uses, as (claim name, size, mount path): `/configs` always; the
/// persistent `/workspace` and a claude-code workspace's sessions except on tier 1 (as on
/// Docker, ADR 0048).
pub fn claims(spec: &StartSpec, settings: &KubernetesSettings) -> Vec<(String, String, String)> {
    let ws = &spec.workspace;
    let mut out = vec![(
        claim_name(ws, "configs"),
        settings.configs_size.clone(),
        CONFIG_MOUNT.to_string(),
    )];
    if spec.tier != Tier::Sandboxed {
        out.push((
            claim_name(ws, "workspace"),
            settings.workspace_size.clone(),
            WORKSPACE_MOUNT.to_string(),
        ));
        if spec.runtime == "claude-code" {
            out.push((
                claim_name(ws, "sessions"),
                settings.configs_size.clone(),
                SESSIONS_MOUNT.to_string(),
            ));
        }
    }
    out
}

/// The Service `ws-<id12>` in front of the agent's port.
pub fn service(ws: &WorkspaceRef, instance: &str) -> Service {
    Service {
        metadata: meta(ws, object_name(ws), instance),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(LABEL_UID.to_string(), ws.uid.clone())])),
            ports: Some(vec![ServicePort {
                name: Some("a2a".into()),
                port: AGENT_PORT,
                target_port: Some(IntOrString::Int(AGENT_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where the agent is reached: its Service's cluster DNS name.
pub fn agent_url(ws: &WorkspaceRef) -> String {
    format!(
        "http://{}.{}.svc:{AGENT_PORT}",
        object_name(ws),
        ws.namespace
    )
}

/// Refuses what a Pod may not be given: tiers 3 and 4 unless the operator allows privileged
/// Pods, and a host directory at `/workspace` (a Pod's node is not the operator's host).
pub fn check(spec: &StartSpec, settings: &KubernetesSettings) -> Result<(), BackendError> {
    if matches!(spec.tier, Tier::PrivilegedLite | Tier::FullHost) && !settings.allow_privileged {
        return Err(BackendError::Permanent(format!(
            "tier {} is refused on the kubernetes backend: start the operator with --kubernetes-allow-privileged to allow privileged Pods",
            spec.tier.number()
        )));
    }
    if spec.workspace_dir.is_some() {
        return Err(BackendError::Permanent(
            "spec.workspaceDir is a host directory, which the kubernetes backend cannot mount; \
             /workspace is a PersistentVolumeClaim there"
                .into(),
        ));
    }
    if spec.image.is_empty() {
        return Err(BackendError::Permanent(
            "no image for the workspace's runtime".into(),
        ));
    }
    Ok(())
}

/// sha256 over everything whose change needs a new Pod: the Pod spec as built, and the config
/// files and env (they reach the Pod only when it starts).
pub fn pod_hash(pod_spec: &PodSpec, spec: &StartSpec, env: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(SPEC_HASH_VERSION.as_bytes());
    h.update(serde_json::to_vec(pod_spec).unwrap_or_default());
    for f in &spec.files {
        h.update((f.path.len() as u64).to_be_bytes());
        h.update(f.path.as_bytes());
        h.update(f.mode.to_be_bytes());
        h.update(Sha256::digest(&f.content));
    }
    for (k, v) in env {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update(Sha256::digest(v.as_bytes()));
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The Pod `ws-<id12>`: an init container unpacks the workspace Secret's config tar (and then
/// the files Secret's, if any) into the configs PVC, then the agent starts with `/configs`
/// already in place.
pub fn pod(
    spec: &StartSpec,
    env: &[(String, String)],
    settings: &KubernetesSettings,
    instance: &str,
) -> Pod {
    let ws = &spec.workspace;
    let name = object_name(ws);
    let mut volumes = vec![
        Volume {
            name: "seed".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                items: Some(vec![KeyToPath {
                    key: CONFIGS_KEY.into(),
                    path: CONFIGS_KEY.into(),
                    mode: None,
                }]),
                default_mode: Some(0o400),
                optional: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "files".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(files_secret_name(ws)),
                default_mode: Some(0o400),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![];
    for (i, (claim, _, path)) in claims(spec, settings).into_iter().enumerate() {
        let vname = if i == 0 {
            "configs".to_string()
        } else {
            format!("data-{i}")
        };
        volumes.push(Volume {
            name: vname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: None,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: vname,
            mount_path: path,
            ..Default::default()
        });
    }
    let mut security = SecurityContext::default();
    match spec.tier {
        Tier::Sandboxed => {
            security.read_only_root_filesystem = Some(true);
            security.allow_privilege_escalation = Some(false);
            volumes.push(Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity("64Mi".into())),
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            });
        }
        Tier::Standard => security.allow_privilege_escalation = Some(false),
        Tier::PrivilegedLite => {}
        Tier::FullHost => {
            security.privileged = Some(true);
            volumes.push(Volume {
                name: "docker-sock".into(),
                host_path: Some(HostPathVolumeSource {
                    path: DOCKER_SOCKET.into(),
                    type_: Some("Socket".into()),
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "docker-sock".into(),
                mount_path: DOCKER_SOCKET.into(),
                ..Default::default()
            });
        }
    }
    let env_vars = env
        .iter()
        .map(|(k, _)| EnvVar {
            name: k.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: name.clone(),
                    key: format!("{ENV_PREFIX}{k}"),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let init = Container {
        name: "configs".into(),
        image: Some(spec.image.clone()),
        command: Some(vec!["sh".into(), "-c".into(), unpack_script()]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "configs".into(),
                mount_path: CONFIG_MOUNT.into(),
                ..Default::default()
            },
            VolumeMount {
                name: "seed".into(),
                mount_path: SEED_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "files".into(),
                mount_path: FILES_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let agent = Container {
        name: "agent".into(),
        image: Some(spec.image.clone()),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("a2a".into()),
            container_port: AGENT_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: resources(spec),
        security_context: Some(security),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let pull_secrets = (!settings.image_pull_secrets.is_empty()).then(|| {
        settings
            .image_pull_secrets
            .iter()
            .map(|n| LocalObjectReference { name: n.clone() })
            .collect()
    });
    let pod_spec = PodSpec {
        init_containers: Some(vec![init]),
        containers: vec![agent],
        volumes: Some(volumes),
        restart_policy: Some("Always".into()),
        image_pull_secrets: pull_secrets,
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        ..Default::default()
    };
    let hash = pod_hash(&pod_spec, spec, env);
    let mut metadata = meta(ws, name, instance);
    let mut annotations = BTreeMap::from([(LABEL_SPEC_HASH.to_string(), hash)]);
    let attempt = crate::backends::attempt_of(&spec.files);
    if !attempt.is_empty() {
        annotations.insert(LABEL_ATTEMPT.to_string(), attempt);
    }
    metadata.annotations = Some(annotations);
    Pod {
        metadata,
        spec: Some(pod_spec),
        status: None,
    }
}

/// The init container's script: unpack the config tar, remove what later writes replaced, then
/// unpack the files written since. Removal paths are checked config paths (relative, no `..`,
/// no control characters), read one a line and quoted.
fn unpack_script() -> String {
    format!(
        "set -e; tar -xf {SEED_MOUNT}/{CONFIGS_KEY} -C {CONFIG_MOUNT}; \
         if [ -f {FILES_MOUNT}/{REMOVE_KEY} ]; then while IFS= read -r p; do \
         [ -n \"$p\" ] && rm -rf \"{CONFIG_MOUNT}/$p\"; done < {FILES_MOUNT}/{REMOVE_KEY}; fi; \
         if [ -f {FILES_MOUNT}/{FILES_KEY} ]; then tar -xf {FILES_MOUNT}/{FILES_KEY} -C {CONFIG_MOUNT}; fi"
    )
}

/// The tier's (or the overridden) limits, with requests at a quarter of them so a node is not
/// reserved whole for agents that mostly wait.
fn resources(spec: &StartSpec) -> Option<ResourceRequirements> {
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    if let Some(mib) = spec.effective_memory_mib().filter(|m| *m > 0) {
        limits.insert("memory".to_string(), Quantity(format!("{mib}Mi")));
        requests.insert(
            "memory".to_string(),
            Quantity(format!("{}Mi", (mib / 4).max(1))),
        );
    }
    if let Some(cpus) = spec.effective_cpus().filter(|c| c.is_finite() && *c > 0.0) {
        let milli = (cpus * 1000.0).round() as i64;
        limits.insert("cpu".to_string(), Quantity(format!("{milli}m")));
        requests.insert(
            "cpu".to_string(),
            Quantity(format!("{}m", (milli / 4).max(1))),
        );
    }
    (!limits.is_empty()).then(|| ResourceRequirements {
        limits: Some(limits),
        requests: Some(requests),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::ConfigFile;

    fn settings() -> KubernetesSettings {
        KubernetesSettings::default()
    }

    fn start(tier: Tier) -> StartSpec {
        StartSpec {
            workspace: WorkspaceRef {
                uid: "3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab".into(),
                namespace: "team".into(),
                name: "alpha".into(),
                instance_id: None,
            },
            runtime: "echo".into(),
            image: "molecule/echo:1".into(),
            env: vec![("API_KEY".into(), "sk-secret".into())],
            tier,
            memory_mib: None,
            cpus: None,
            files: vec![ConfigFile {
                path: ".auth_token".into(),
                content: b"tok".to_vec(),
                mode: 0o600,
            }],
            workspace_dir: None,
            extra_hosts: vec![],
            platform: None,
        }
    }

    #[test]
    fn the_pod_carries_labels_owner_mounts_and_env_by_reference() {
        let s = start(Tier::Standard);
        let env = s.env.clone();
        let p = pod(&s, &env, &settings(), "inst");
        let m = &p.metadata;
        assert_eq!(m.name.as_deref(), Some("ws-3f2a9c1e7b4d"));
        let l = m.labels.as_ref().expect("labels");
        assert_eq!(l[LABEL_UID], s.workspace.uid);
        assert_eq!(l[LABEL_MANAGED], "true");
        assert_eq!(l[LABEL_INSTANCE], "inst");
        let o = &m.owner_references.as_ref().expect("owner")[0];
        assert_eq!((o.kind.as_str(), o.controller), ("Workspace", Some(true)));
        let spec = p.spec.expect("spec");
        let agent = &spec.containers[0];
        let mounts: Vec<&str> = agent
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, vec!["/configs", "/workspace"]);
        let e = &agent.env.as_ref().expect("env")[0];
        assert_eq!(e.name, "API_KEY");
        assert!(e.value.is_none(), "no env value in the Pod spec");
        let printed = serde_json::to_string(&spec.containers).unwrap_or_default();
        assert!(!printed.contains("sk-secret"));
        let limits = agent.resources.as_ref().and_then(|r| r.limits.clone());
        assert_eq!(
            limits.map(|l| (l["memory"].0.clone(), l["cpu"].0.clone())),
            Some(("512Mi".to_string(), "1000m".to_string()))
        );
        let init = &spec.init_containers.expect("init")[0];
        assert_eq!(init.image.as_deref(), Some("molecule/echo:1"));
        assert!(
            init.command.as_ref().expect("cmd")[2]
                .contains("tar -xf /molecule/seed/configs.tar -C /configs")
        );
    }

    #[test]
    fn pull_secrets_and_the_storage_class_come_from_the_settings() {
        let s = start(Tier::Standard);
        let settings = KubernetesSettings {
            image_pull_secrets: vec!["regcred".into()],
            storage_class: Some("fast".into()),
            ..settings()
        };
        let p = pod(&s, &[], &settings, "i");
        let secrets = p
            .spec
            .expect("spec")
            .image_pull_secrets
            .expect("pull secrets");
        assert_eq!(secrets[0].name, "regcred");
        let c = claim(&s.workspace, "x".into(), "1Gi", &settings, "i");
        assert_eq!(
            c.spec.expect("spec").storage_class_name.as_deref(),
            Some("fast")
        );
    }

    #[test]
    fn tier_one_is_read_only_with_a_memory_tmp_and_no_workspace_claim() {
        let s = start(Tier::Sandboxed);
        let p = pod(&s, &[], &settings(), "i");
        let agent = &p.spec.as_ref().expect("spec").containers[0];
        let sc = agent.security_context.as_ref().expect("sc");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let mounts: Vec<&str> = agent
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, vec!["/configs", "/tmp"]);
        assert!(agent.resources.is_none());
    }

    #[test]
    fn privileged_tiers_and_host_dirs_are_refused_unless_allowed() {
        for t in [Tier::PrivilegedLite, Tier::FullHost] {
            let e = check(&start(t), &settings()).expect_err("refused");
            assert!(
                e.to_string().contains("--kubernetes-allow-privileged"),
                "{e}"
            );
            let allowed = KubernetesSettings {
                allow_privileged: true,
                ..settings()
            };
            assert!(check(&start(t), &allowed).is_ok());
        }
        let p = pod(&start(Tier::FullHost), &[], &settings(), "i");
        let agent = &p.spec.as_ref().expect("spec").containers[0];
        assert_eq!(
            agent.security_context.as_ref().and_then(|s| s.privileged),
            Some(true)
        );
        let mut s = start(Tier::Standard);
        s.workspace_dir = Some(("/srv".into(), false));
        assert!(check(&s, &settings()).is_err());
    }

    #[test]
    fn the_hash_follows_files_and_env_but_not_their_order_of_secrets() {
        let s = start(Tier::Standard);
        let a = pod(&s, &s.env, &settings(), "i");
        let mut s2 = s.clone();
        s2.files[0].content = b"other".to_vec();
        let b = pod(&s2, &s2.env, &settings(), "i");
        let mut s3 = s.clone();
        s3.env[0].1 = "rotated".into();
        let c = pod(&s3, &s3.env, &settings(), "i");
        let hash = |p: &Pod| {
            p.metadata
                .annotations
                .as_ref()
                .map(|a| a[LABEL_SPEC_HASH].clone())
        };
        assert_ne!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
        assert_eq!(hash(&a), hash(&pod(&s, &s.env, &settings(), "i")));
    }

    #[test]
    fn the_secret_holds_configs_and_env_and_refuses_what_cannot_be_a_key() {
        let s = start(Tier::Standard);
        let secret = workspace_secret(&s, &s.env, b"tar".to_vec(), "i").expect("secret");
        let data = secret.data.expect("data");
        assert_eq!(data[CONFIGS_KEY].0, b"tar");
        assert_eq!(data["env.API_KEY"].0, b"sk-secret");
        let bad = vec![("A B".to_string(), "x".to_string())];
        assert!(workspace_secret(&s, &bad, vec![], "i").is_err());
        let big = vec![0u8; MAX_SECRET_BYTES + 1];
        assert!(workspace_secret(&s, &[], big, "i").is_err());
    }

    #[test]
    fn the_service_selects_the_workspace_pod_on_the_agent_port() {
        let s = start(Tier::Standard);
        let svc = service(&s.workspace, "i");
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.selector.expect("selector")[LABEL_UID], s.workspace.uid);
        assert_eq!(spec.ports.expect("ports")[0].port, 8000);
        assert_eq!(
            agent_url(&s.workspace),
            "http://ws-3f2a9c1e7b4d.team.svc:8000"
        );
    }
}
