//! What a workspace container looks like: its create body (tier, limits, mounts, ports,
//! labels), the normalised env, the limits, and the spec hash that says when it must be
//! replaced.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use sha2::{Digest, Sha256};

use super::{
    AGENT_PORT, BackendError, CONFIG_MOUNT, DOCKER_SOCKET, DockerBackend, LABEL_ATTEMPT,
    LABEL_ROLE, LABEL_SPEC_HASH, MIB, ROLE_WORKSPACE, SESSIONS_MOUNT, SPEC_HASH_VERSION, StartSpec,
    WORKSPACE_MOUNT,
};
use crate::backends::Tier;

/// The named volumes a workspace container mounts besides `/configs` (ADR 0048), as
/// (volume, target): a persistent `/workspace` when no host directory is bound, and a
/// claude-code workspace's session directory. Tier 1 mounts nothing but `/configs`.
pub(crate) fn data_volumes(spec: &StartSpec) -> Vec<(String, &'static str)> {
    let ws = &spec.workspace;
    let mut out = vec![];
    if spec.tier == Tier::Sandboxed {
        return out;
    }
    if spec.workspace_dir.is_none() {
        out.push((ws.workspace_volume_name(), WORKSPACE_MOUNT));
    }
    if spec.runtime == "claude-code" {
        out.push((ws.sessions_volume_name(), SESSIONS_MOUNT));
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) memory_bytes: Option<i64>,
    pub(super) nano_cpus: Option<i64>,
}

impl DockerBackend {
    pub(super) fn container_body(
        &self,
        spec: &StartSpec,
        env: &[(String, String)],
        limits: Limits,
        hash: &str,
    ) -> ContainerCreateBody {
        let ws = &spec.workspace;
        let mut labels = self.workspace_labels(ws);
        labels.insert(LABEL_SPEC_HASH.to_string(), hash.to_string());
        labels.insert(LABEL_ROLE.to_string(), ROLE_WORKSPACE.to_string());
        let attempt = crate::backends::attempt_of(&spec.files);
        if !attempt.is_empty() {
            labels.insert(LABEL_ATTEMPT.to_string(), attempt);
        }

        let mut mounts = vec![Mount {
            typ: Some(MountType::VOLUME),
            source: Some(ws.volume_name()),
            target: Some(CONFIG_MOUNT.to_string()),
            ..Default::default()
        }];
        let mut host = HostConfig {
            memory: limits.memory_bytes,
            nano_cpus: limits.nano_cpus,
            network_mode: Some(self.network.clone()),
            port_bindings: Some(HashMap::from([(
                AGENT_PORT.to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_string()),
                    host_port: Some(String::new()),
                }]),
            )])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
            ..Default::default()
        };
        match spec.tier {
            Tier::Sandboxed => {
                host.readonly_rootfs = Some(true);
                host.tmpfs = Some(HashMap::from([(
                    "/tmp".to_string(),
                    "size=64m,noexec".to_string(),
                )]));
                if spec.workspace_dir.is_some() {
                    tracing::warn!(workspace = %ws.container_name(), "tier 1 never mounts a workspace dir; ignoring it");
                }
            }
            Tier::Standard | Tier::PrivilegedLite | Tier::FullHost => {
                if let Some((dir, read_only)) = &spec.workspace_dir {
                    mounts.push(Mount {
                        typ: Some(MountType::BIND),
                        source: Some(dir.to_string_lossy().into_owned()),
                        target: Some(WORKSPACE_MOUNT.to_string()),
                        read_only: Some(*read_only),
                        ..Default::default()
                    });
                }
            }
        }
        for (volume, target) in data_volumes(spec) {
            mounts.push(Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume),
                target: Some(target.to_string()),
                ..Default::default()
            });
        }
        if spec.tier == Tier::FullHost {
            mounts.push(Mount {
                typ: Some(MountType::BIND),
                source: Some(DOCKER_SOCKET.to_string()),
                target: Some(DOCKER_SOCKET.to_string()),
                ..Default::default()
            });
        }
        host.mounts = Some(mounts);

        ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(vec![AGENT_PORT.to_string()]),
            host_config: Some(host),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings::default(),
                )])),
            }),
            ..Default::default()
        }
    }
}

/// Env as the engine will see it: names checked, later duplicates win, sorted by name.
pub(super) fn normalized_env(
    env: &[(String, String)],
) -> Result<Vec<(String, String)>, BackendError> {
    let mut map = BTreeMap::new();
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(BackendError::Permanent(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(BackendError::Permanent(format!(
                "environment variable {k} contains a NUL byte"
            )));
        }
        map.insert(k.clone(), v.clone());
    }
    Ok(map.into_iter().collect())
}

pub(super) fn limits(spec: &StartSpec) -> Result<Limits, BackendError> {
    let memory_bytes = match spec.effective_memory_mib() {
        None => None,
        Some(mib) if mib > 0 && mib <= i64::MAX / MIB => Some(mib * MIB),
        Some(mib) => {
            return Err(BackendError::Permanent(format!(
                "invalid memory limit {mib} MiB"
            )));
        }
    };
    let nano_cpus = match spec.effective_cpus() {
        None => None,
        Some(cpus) if cpus.is_finite() && cpus > 0.0 && cpus <= 4096.0 => {
            // Bounded above, so the cast cannot saturate.
            Some((cpus * 1e9).round() as i64)
        }
        Some(cpus) => {
            return Err(BackendError::Permanent(format!("invalid CPU limit {cpus}")));
        }
    };
    Ok(Limits {
        memory_bytes,
        nano_cpus,
    })
}

/// sha256 over everything that requires a new container when it changes.
pub(super) fn spec_hash(
    spec: &StartSpec,
    env: &[(String, String)],
    limits: Limits,
    network: &str,
) -> String {
    fn field(h: &mut Sha256, tag: &str, value: &[u8]) {
        h.update(tag.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
    }
    let mut h = Sha256::new();
    field(&mut h, "version", SPEC_HASH_VERSION.as_bytes());
    field(&mut h, "image", spec.image.as_bytes());
    for (k, v) in env {
        field(&mut h, "env.name", k.as_bytes());
        field(&mut h, "env.value", v.as_bytes());
    }
    field(&mut h, "tier", &spec.tier.number().to_be_bytes());
    field(
        &mut h,
        "memory",
        &limits.memory_bytes.unwrap_or(0).to_be_bytes(),
    );
    field(&mut h, "cpus", &limits.nano_cpus.unwrap_or(0).to_be_bytes());
    if spec.tier != Tier::Sandboxed
        && let Some((dir, read_only)) = &spec.workspace_dir
    {
        field(&mut h, "workspace_dir", dir.to_string_lossy().as_bytes());
        field(&mut h, "workspace_ro", &[u8::from(*read_only)]);
    }
    for (volume, target) in data_volumes(spec) {
        field(&mut h, "volume", volume.as_bytes());
        field(&mut h, "volume_target", target.as_bytes());
    }
    for host in &spec.extra_hosts {
        field(&mut h, "extra_host", host.as_bytes());
    }
    field(&mut h, "network", network.as_bytes());
    hex::encode(h.finalize())
}

/// Replaces every env value of 4+ bytes in `message` (engine errors may echo the request).
pub(super) fn redact(message: &str, env: &[(String, String)]) -> String {
    let mut values: Vec<&str> = env
        .iter()
        .map(|(_, v)| v.as_str())
        .filter(|v| v.len() >= 4)
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = message.to_string();
    for v in values {
        out = out.replace(v, "<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{ConfigFile, WorkspaceRef};
    use std::path::PathBuf;

    fn file(path: &str, content: &[u8], mode: u32) -> ConfigFile {
        ConfigFile {
            path: path.to_string(),
            content: content.to_vec(),
            mode,
        }
    }

    fn base_spec(uid: &str) -> StartSpec {
        StartSpec {
            workspace: WorkspaceRef {
                uid: uid.to_string(),
                namespace: "default".to_string(),
                name: "alpha".to_string(),
                instance_id: None,
            },
            runtime: "echo".to_string(),
            image: "img:1".to_string(),
            env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            tier: Tier::Standard,
            memory_mib: None,
            cpus: None,
            files: vec![],
            workspace_dir: None,
            extra_hosts: vec![],
            platform: None,
        }
    }

    #[test]
    fn spec_hash_tracks_what_needs_a_new_container() {
        let hash = |s: &StartSpec| {
            let env = normalized_env(&s.env).unwrap();
            spec_hash(s, &env, limits(s).unwrap(), "net")
        };
        let a = base_spec("3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab");
        let base = hash(&a);
        // Env order does not matter; files do not matter.
        let mut b = a.clone();
        b.env.reverse();
        b.files.push(file("x", b"y", 0o644));
        assert_eq!(hash(&b), base);
        for change in [
            |s: &mut StartSpec| s.image = "img:2".into(),
            |s: &mut StartSpec| s.env[0].1 = "3".into(),
            |s: &mut StartSpec| s.tier = Tier::PrivilegedLite,
            |s: &mut StartSpec| s.memory_mib = Some(1024),
            |s: &mut StartSpec| s.cpus = Some(0.5),
            |s: &mut StartSpec| s.workspace_dir = Some((PathBuf::from("/w"), true)),
            |s: &mut StartSpec| s.extra_hosts.push("h:1.2.3.4".into()),
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert_ne!(hash(&c), base);
        }
    }

    #[test]
    fn a_workspace_without_a_host_dir_gets_a_persistent_workspace_volume() {
        let uid = "3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab";
        let mut s = base_spec(uid);
        assert_eq!(
            data_volumes(&s),
            vec![(format!("ws-{uid}-workspace"), "/workspace")]
        );
        s.runtime = "claude-code".into();
        assert_eq!(
            data_volumes(&s),
            vec![
                (format!("ws-{uid}-workspace"), "/workspace"),
                (
                    format!("ws-{uid}-claude-sessions"),
                    "/root/.claude/sessions"
                )
            ]
        );
        s.workspace_dir = Some((PathBuf::from("/srv/repo"), false));
        assert_eq!(
            data_volumes(&s),
            vec![(
                format!("ws-{uid}-claude-sessions"),
                "/root/.claude/sessions"
            )]
        );
        s.tier = Tier::Sandboxed;
        assert!(data_volumes(&s).is_empty(), "tier 1 mounts only /configs");
        // The volume is part of the spec hash: a container without it is replaced.
        let hash = |s: &StartSpec| {
            let env = normalized_env(&s.env).unwrap();
            spec_hash(s, &env, limits(s).unwrap(), "net")
        };
        let a = base_spec(uid);
        let mut b = a.clone();
        b.runtime = "claude-code".into();
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn env_and_limits_are_checked() {
        let env = normalized_env(&[
            ("B".into(), "1".into()),
            ("A".into(), "x".into()),
            ("B".into(), "2".into()),
        ])
        .unwrap();
        assert_eq!(
            env,
            vec![("A".into(), "x".into()), ("B".into(), "2".into())]
        );
        assert!(normalized_env(&[("".into(), "1".into())]).is_err());
        assert!(normalized_env(&[("A=B".into(), "1".into())]).is_err());
        let mut s = base_spec("3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab");
        assert_eq!(
            limits(&s).unwrap(),
            Limits {
                memory_bytes: Some(512 * MIB),
                nano_cpus: Some(1_000_000_000)
            }
        );
        s.cpus = Some(1.5);
        assert_eq!(limits(&s).unwrap().nano_cpus, Some(1_500_000_000));
        s.cpus = Some(f64::NAN);
        assert!(limits(&s).is_err());
        s.cpus = None;
        s.memory_mib = Some(0);
        assert!(limits(&s).is_err());
        s.memory_mib = None;
        s.tier = Tier::Sandboxed;
        assert_eq!(
            limits(&s).unwrap(),
            Limits {
                memory_bytes: None,
                nano_cpus: None
            }
        );
    }
}
