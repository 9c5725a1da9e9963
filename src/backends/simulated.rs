//! A backend that does no container work, for measuring the controllers themselves (the
//! reconcile-throughput benchmark selects it with the hidden `--backend simulated` flag). Each
//! "container" is an entry in memory, and starting one plays its agent: it registers once with
//! the platform (`POST {PLATFORM_URL}/registry/register` with the workspace token from the config
//! files), exactly as the echo agent does on its first start, so the workspace goes Online
//! through the real registry endpoints. It never heartbeats afterwards.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    BackendError, ConfigFile, ExecOutput, Managed, ManagedKind, Presence, StartSpec, Started,
    WorkspaceBackend, WorkspaceRef,
};

struct Sim {
    id: String,
    running: bool,
    namespace: String,
    name: String,
    /// Image and env the "container" was created with; a change replaces it.
    fingerprint: String,
}

/// In-memory containers; see the module docs.
#[derive(Default)]
pub struct SimulatedBackend {
    by_uid: Mutex<HashMap<String, Sim>>,
    created: AtomicU64,
    /// The last start asked of each uid: what a container would be given (env, files).
    last_start: Mutex<HashMap<String, StartSpec>>,
    execs: AtomicU64,
}

fn check(ws: &WorkspaceRef) -> Result<(), BackendError> {
    if ws.id12().len() < 12 {
        return Err(BackendError::Permanent(format!(
            "workspace {}/{} has no usable uid",
            ws.namespace, ws.name
        )));
    }
    Ok(())
}

impl SimulatedBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many "containers" were ever created.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// How many commands were ever run in a "container".
    pub fn execs(&self) -> u64 {
        self.execs.load(Ordering::Relaxed)
    }

    /// The last [`StartSpec`] a workspace was started with (tests look at its env and files).
    pub fn last_start(&self, uid: &str) -> Option<StartSpec> {
        self.last_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sim>> {
        self.by_uid.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn fingerprint(spec: &StartSpec) -> String {
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    format!("{}\n{}", spec.image, env.join("\n"))
}

/// Registers like the echo agent's first start; failures are logged, never fatal (a real agent
/// that cannot register leaves its workspace Provisioning too).
async fn register(platform_url: String, uid: String, token: String) {
    let Some(authority) = platform_url
        .strip_prefix("http://")
        .map(|r| r.split('/').next().unwrap_or("").to_string())
    else {
        tracing::warn!("simulated agent: only http platform URLs are supported");
        return;
    };
    let body = serde_json::json!({
        "id": uid,
        "url": format!("http://127.0.0.1:9/sim/{uid}"),
        "agent_card": {"name": "simulated"},
    })
    .to_string();
    let request = format!(
        "POST /registry/register HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for attempt in 0..20u64 {
        let call = async {
            let mut s = tokio::net::TcpStream::connect(&authority).await?;
            s.write_all(request.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(resp)) if resp.starts_with("HTTP/1.1 200") => return,
            Ok(Ok(resp)) => {
                let status = resp.lines().next().unwrap_or("").to_string();
                tracing::debug!(%uid, %status, attempt, "simulated agent: register refused; retrying");
            }
            Ok(Err(e)) => {
                tracing::debug!(%uid, error = %e, attempt, "simulated agent: register failed")
            }
            Err(_) => tracing::debug!(%uid, attempt, "simulated agent: register timed out"),
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1).min(10))).await;
    }
    tracing::warn!(%uid, "simulated agent: gave up registering");
}

#[async_trait::async_trait]
impl WorkspaceBackend for SimulatedBackend {
    async fn ensure_started(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        let ws = &spec.workspace;
        check(ws)?;
        let fp = fingerprint(spec);
        let id = {
            let mut all = self.lock();
            match all.get_mut(&ws.uid) {
                Some(s) if s.fingerprint == fp => {
                    s.running = true;
                    s.id.clone()
                }
                _ => {
                    let n = self.created.fetch_add(1, Ordering::Relaxed) + 1;
                    let id = format!("sim-{}-{n}", ws.id12());
                    all.insert(
                        ws.uid.clone(),
                        Sim {
                            id: id.clone(),
                            running: true,
                            namespace: ws.namespace.clone(),
                            name: ws.name.clone(),
                            fingerprint: fp,
                        },
                    );
                    id
                }
            }
        };
        self.last_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ws.uid.clone(), spec.clone());
        let token = spec
            .files
            .iter()
            .find(|f| f.path == ".auth_token")
            .map(|f| String::from_utf8_lossy(&f.content).trim().to_string());
        let platform = spec
            .env
            .iter()
            .find(|(k, _)| k == "PLATFORM_URL")
            .map(|(_, v)| v.clone());
        if let (Some(token), Some(platform)) = (token, platform) {
            tokio::spawn(register(platform, ws.uid.clone(), token));
        }
        Ok(Started {
            container_id: id,
            host_url: format!("http://127.0.0.1:9/sim/{}", ws.id12()),
            image_id: format!("sha256:simulated-{}", spec.image.len()),
        })
    }

    async fn stop(&self, ws: &WorkspaceRef) -> Result<(), BackendError> {
        check(ws)?;
        if let Some(s) = self.lock().get_mut(&ws.uid) {
            s.running = false;
        }
        Ok(())
    }

    async fn remove(&self, ws: &WorkspaceRef, _remove_volume: bool) -> Result<(), BackendError> {
        check(ws)?;
        self.lock().remove(&ws.uid);
        Ok(())
    }

    async fn inspect(&self, ws: &WorkspaceRef) -> Result<Presence, BackendError> {
        check(ws)?;
        Ok(match self.lock().get(&ws.uid) {
            None => Presence::Absent,
            Some(s) if s.running => Presence::Running {
                container_id: s.id.clone(),
                host_url: Some(format!("http://127.0.0.1:9/sim/{}", ws.id12())),
                started_at: None,
                attempt: None,
                waiting: None,
            },
            Some(s) => Presence::Stopped {
                container_id: s.id.clone(),
                exit_code: Some(0),
                oom_killed: false,
                reason: None,
            },
        })
    }

    async fn write_files(
        &self,
        ws: &WorkspaceRef,
        _files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        check(ws)
    }

    async fn exec(&self, ws: &WorkspaceRef, _cmd: &[String]) -> Result<ExecOutput, BackendError> {
        check(ws)?;
        self.execs.fetch_add(1, Ordering::Relaxed);
        Ok(ExecOutput {
            exit_code: 0,
            stdout: vec![],
            stderr: vec![],
        })
    }

    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError> {
        Ok(self
            .lock()
            .iter()
            .map(|(uid, s)| Managed {
                kind: ManagedKind::Container,
                name: s.id.clone(),
                uid: uid.clone(),
                namespace: s.namespace.clone(),
                workspace: s.name.clone(),
                attempt: String::new(),
            })
            .collect())
    }

    async fn remove_managed(&self, m: &Managed) -> Result<(), BackendError> {
        self.lock().remove(&m.uid);
        Ok(())
    }

    async fn console(&self, ws: &WorkspaceRef) -> Result<String, BackendError> {
        Ok(format!("simulated workspace {} has no console\n", ws.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Tier;

    fn spec(uid: &str, image: &str) -> StartSpec {
        StartSpec {
            workspace: WorkspaceRef {
                uid: uid.into(),
                namespace: "ns".into(),
                name: "w".into(),
                instance_id: None,
            },
            runtime: "echo".into(),
            image: image.into(),
            env: vec![],
            tier: Tier::Standard,
            memory_mib: None,
            cpus: None,
            files: vec![],
            workspace_dir: None,
            extra_hosts: vec![],
            platform: None,
        }
    }

    #[tokio::test]
    async fn containers_are_created_once_replaced_on_change_and_reaped() {
        let b = SimulatedBackend::new();
        let uid = "3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab";
        let a = b.ensure_started(&spec(uid, "img:1")).await.expect("start");
        let again = b.ensure_started(&spec(uid, "img:1")).await.expect("start");
        assert_eq!(a.container_id, again.container_id, "idempotent");
        assert_eq!(b.created(), 1);
        let w = spec(uid, "img:1").workspace;
        b.stop(&w).await.expect("stop");
        assert!(matches!(
            b.inspect(&w).await.expect("inspect"),
            Presence::Stopped { .. }
        ));
        let changed = b.ensure_started(&spec(uid, "img:2")).await.expect("start");
        assert_ne!(
            changed.container_id, a.container_id,
            "a new spec replaces it"
        );
        let managed = b.list_managed().await.expect("list");
        assert_eq!(managed.len(), 1);
        b.remove_managed(&managed[0]).await.expect("reap");
        assert_eq!(b.inspect(&w).await.expect("inspect"), Presence::Absent);
    }
}
