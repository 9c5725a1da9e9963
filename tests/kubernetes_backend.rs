//! The kubernetes backend end to end (issue 21; ADR 0057), envtest style: `molecule serve
//! --controllers none` is the cluster's API server (it stores Pods and runs nothing), the real
//! `molecule operator --default-backend kubernetes` reconciles against it through its
//! kubeconfig, and this test plays the kubelet: for every new Pod it unpacks the config files
//! from the Pod's Secret, as the init container would, starts a real echo agent on a loopback
//! "pod IP" and writes the Pod's status. The shared lifecycle scenario of the other backends
//! (`tests/controlplane.rs`) then runs here: Online, A2A through the operator's proxy, the
//! agent dies, restart, pause, resume, delete, nothing left. kubectl shows the Pods.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Server, apply, get, ok, phase, text};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const IMAGE: &str = "registry.example.com/agents/echo:1";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// `molecule operator --default-backend kubernetes` against the server's kubeconfig.
struct Operator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn start(s: &Server) -> Operator {
        let port = free_port();
        let agent_port = free_port();
        let log = s.dir.path().join("operator.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_molecule"))
            .args(["operator", "--default-backend", "kubernetes"])
            // No Docker work at all: the docker slot is the simulated backend.
            .args([
                "--backend",
                "simulated",
                "--controllers",
                "workspace,reaper",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--agent-address", "127.0.0.1"])
            .args(["--agent-port", &agent_port.to_string()])
            .args([
                "--kubernetes-platform-url",
                &format!("http://127.0.0.1:{agent_port}"),
            ])
            .args(["--agent-heartbeat-seconds", "1"])
            .args(["--heartbeat-timeout-seconds", "8"])
            .args(["--reap-interval-seconds", "2"])
            .args(["--org-templates"])
            .arg(s.dir.path())
            .env("KUBECONFIG", s.kubeconfig())
            .env("RUST_LOG", "info")
            .env_remove("MOLECULE_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn the operator");
        let op = Operator { child, port, log };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if http(op.port, "GET", "/readyz", None, "").0 == 200 {
                return op;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the operator did not become ready:\n{}", op.log());
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 request to 127.0.0.1:port: (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::Write;
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let _ = c.write_all(req.as_bytes());
    let mut buf = vec![];
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

fn untar(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut a = tar::Archive::new(bytes);
    for e in a.entries().expect("tar") {
        let mut e = e.expect("entry");
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e.path().expect("path").to_string_lossy().into_owned();
        let mut content = vec![];
        e.read_to_end(&mut content).expect("read");
        out.push((path, content));
    }
    out
}

/// One Pod this kubelet runs.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// The test's kubelet: starts an echo agent for each new Pod of the namespace and reports it
/// Running with its loopback IP; stops the agent when the Pod goes.
#[derive(Clone)]
struct Kubelet {
    client: kube::Client,
    ns: String,
    running: Arc<Mutex<HashMap<String, Running>>>,
    next_ip: Arc<Mutex<u8>>,
}

impl Kubelet {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn run(self) {
        loop {
            if let Ok(list) = self.pods().list(&ListParams::default()).await {
                let live: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                self.running
                    .lock()
                    .expect("lock")
                    .retain(|uid, _| live.contains(uid));
                for pod in list.items {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let pending =
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
                    let known = self.running.lock().expect("lock").contains_key(&uid);
                    if pending && !known && pod.metadata.deletion_timestamp.is_none() {
                        self.start(&pod).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the init container and the container runtime do, then the status write.
    async fn start(&self, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let Ok(secret) = secrets.get(&name).await else {
            return;
        };
        let data = secret.data.unwrap_or_default();
        let ip = {
            let mut n = self.next_ip.lock().expect("lock");
            *n += 1;
            Ipv4Addr::new(127, 61, 0, *n)
        };
        let dir = tempfile::tempdir().expect("pod dir");
        for (path, mut content) in untar(&data["configs.tar"].0) {
            let p = dir.path().join(&path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("dirs");
            }
            if path == "config.yaml" {
                let mut doc: Value = molecule::yaml::from_slice(&content).expect("config.yaml");
                doc["agent_url"] = json!(format!("http://{ip}:8000"));
                content = molecule::yaml::to_string(&doc).expect("yaml").into_bytes();
            }
            std::fs::write(&p, content).expect("write");
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let opts = molecule::agent::AgentOptions {
            config_path: dir.path().join("config.yaml"),
            token_path: dir.path().join(".auth_token"),
            listen: SocketAddr::new(IpAddr::V4(ip), 8000),
            shutdown: Some(rx),
        };
        tokio::spawn(async move {
            if let Err(e) = molecule::agent::run(opts).await {
                eprintln!("echo agent failed: {e:#}");
            }
        });
        self.running.lock().expect("lock").insert(
            uid,
            Running {
                stop: Some(tx),
                _dir: dir,
            },
        );
        let status = json!({"status": {"phase": "Running", "podIP": ip.to_string(),
            "startTime": "2026-12-04T00:00:00Z",
            "containerStatuses": [{"name": "agent", "image": IMAGE, "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-12-04T00:00:01Z"}}}]}});
        let _ = self
            .pods()
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await;
    }

    /// The agent process dies; the kubelet reports the Pod Failed.
    async fn kill(&self, name: &str) {
        let pod = self.pods().get(name).await.expect("pod");
        let uid = pod.metadata.uid.unwrap_or_default();
        if let Some(r) = self.running.lock().expect("lock").get_mut(&uid)
            && let Some(stop) = r.stop.take()
        {
            let _ = stop.send(());
        }
        let status = json!({"status": {"phase": "Failed", "containerStatuses": [{"name": "agent",
            "image": IMAGE, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}});
        self.pods()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("status");
    }
}

fn pod_name(uid: &str) -> String {
    let id: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("ws-{id}")
}

fn status_str(s: &Server, ns: &str, name: &str, field: &str) -> String {
    get(s, ns, name)["status"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_for(
    s: &Server,
    op: &Operator,
    ns: &str,
    name: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if f(&get(s, ns, name)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what}: timed out; last state {:#}\noperator log:\n{}",
        get(s, ns, name),
        op.log()
    );
}

/// The workspace's current token, from its Pod's Secret.
async fn token(client: &kube::Client, ns: &str, uid: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data = secrets
        .get(&pod_name(uid))
        .await
        .expect("secret")
        .data
        .expect("data");
    let files = untar(&data["configs.tar"].0);
    let (_, t) = files
        .iter()
        .find(|(p, _)| p == ".auth_token")
        .expect("token file");
    String::from_utf8_lossy(t).trim().to_string()
}

fn a2a_body(text: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "message/send", "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": text}], "messageId": "m1"}}}).to_string()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_parity_on_kubernetes() {
    let s = Arc::new(Server::start(Backend::Sqlite));
    let op = Arc::new(Operator::start(&s));
    let client = s.client().await;
    let ns = format!("k{}", molecule::util::random_suffix(8));
    let kubelet = Kubelet {
        client: client.clone(),
        ns: ns.clone(),
        running: Arc::default(),
        next_ip: Arc::default(),
    };
    tokio::spawn(kubelet.clone().run());
    let name = "alpha";
    let yaml = format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  runtime: echo\n  role: tester\n  image: {IMAGE}\n"
    );
    let (s2, op2, ns2) = (s.clone(), op.clone(), ns.clone());
    blocking(move || {
        apply(&s2, &ns2, &yaml);
        wait_for(&s2, &op2, &ns2, name, "Online", |w| {
            w["status"]["phase"] == "Online"
        });
    })
    .await;
    let uid = get(&s, &ns, name)["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    assert_eq!(
        status_str(&s, &ns, name, "containerName"),
        format!("pod/{}", pod_name(&uid))
    );

    // kubectl shows the Pod, Running and ready, and the workspace's objects by label.
    let pods = ok(&s, &["get", "pods", "-n", &ns]);
    assert!(pods.contains("READY") && pods.contains("STATUS"), "{pods}");
    let line = pods
        .lines()
        .find(|l| l.starts_with(&pod_name(&uid)))
        .unwrap_or_else(|| panic!("{pods}"));
    assert!(line.contains("1/1") && line.contains("Running"), "{line}");
    let selector = format!("molecule.ai/uid={uid}");
    let objects = ok(
        &s,
        &[
            "get",
            "svc,pvc,secrets",
            "-n",
            &ns,
            "-l",
            &selector,
            "-o",
            "name",
        ],
    );
    for want in [
        format!("service/{}", pod_name(&uid)),
        format!("persistentvolumeclaim/{}-configs", pod_name(&uid)),
        format!("persistentvolumeclaim/{}-workspace", pod_name(&uid)),
        format!("secret/{}", pod_name(&uid)),
    ] {
        assert!(objects.contains(&want), "{want} in {objects}");
    }

    // A2A through the operator's proxy reaches the agent at its Pod's IP.
    let t = token(&client, &ns, &uid).await;
    let path = format!("/workspaces/{uid}/a2a");
    let (p, body) = (op.port, a2a_body("hello parity"));
    let (path2, t2) = (path.clone(), t.clone());
    let (code, reply) = blocking(move || http(p, "POST", &path2, Some(&t2), &body)).await;
    assert_eq!(code, 200, "{reply}\n{}", op.log());
    let reply: Value = serde_json::from_str(&reply).expect("json-rpc");
    assert_eq!(
        reply["result"]["parts"][0]["text"], "hello parity",
        "{reply}"
    );

    // The agent dies: A2A gets 503 {restarting: true}, and a new Pod brings it back.
    let dead = status_str(&s, &ns, name, "containerId");
    kubelet.kill(&pod_name(&uid)).await;
    let (path2, t2) = (path.clone(), t.clone());
    let (code, body) =
        blocking(move || http(p, "POST", &path2, Some(&t2), &a2a_body("anyone?"))).await;
    assert_eq!(code, 503, "{body}\n{}", op.log());
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["restarting"],
        true
    );
    let (s2, op2, ns2, dead2) = (s.clone(), op.clone(), ns.clone(), dead.clone());
    blocking(move || {
        wait_for(&s2, &op2, &ns2, name, "recovery from a dead agent", |w| {
            w["status"]["containerId"]
                .as_str()
                .is_some_and(|i| !i.is_empty() && i != dead2)
                && w["status"]["phase"] == "Online"
        })
    })
    .await;

    // Restart: a new Pod, Online again.
    let first = status_str(&s, &ns, name, "containerId");
    let (s2, op2, ns2) = (s.clone(), op.clone(), ns.clone());
    blocking(move || {
        ok(
            &s2,
            &[
                "annotate",
                "ws",
                name,
                "-n",
                &ns2,
                "--overwrite",
                "molecule.ai/restartedAt=2026-01-01T00:00:00Z",
            ],
        );
        wait_for(&s2, &op2, &ns2, name, "restart", |w| {
            w["status"]["containerId"]
                .as_str()
                .is_some_and(|i| !i.is_empty() && i != first)
                && w["status"]["phase"] == "Online"
        });
        // Pause: no Pod; the claims stay.
        ok(
            &s2,
            &[
                "patch",
                "ws",
                name,
                "-n",
                &ns2,
                "--type=merge",
                "-p",
                r#"{"spec":{"paused":true}}"#,
            ],
        );
        wait_for(&s2, &op2, &ns2, name, "paused", |w| {
            w["status"]["phase"] == "Paused"
        });
    })
    .await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let no_pod = async {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if pods_api
                .get_opt(&pod_name(&uid))
                .await
                .expect("get")
                .is_none()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(no_pod.await, "paused but a Pod is there");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    assert!(
        claims
            .get_opt(&format!("{}-configs", pod_name(&uid)))
            .await
            .expect("get")
            .is_some()
    );

    // Resume: Online again. Delete: nothing is left.
    let (s2, op2, ns2) = (s.clone(), op.clone(), ns.clone());
    blocking(move || {
        ok(
            &s2,
            &[
                "patch",
                "ws",
                name,
                "-n",
                &ns2,
                "--type=merge",
                "-p",
                r#"{"spec":{"paused":false}}"#,
            ],
        );
        wait_for(&s2, &op2, &ns2, name, "resumed", |w| {
            w["status"]["phase"] == "Online"
        });
        ok(
            &s2,
            &[
                "delete",
                "ws",
                name,
                "-n",
                &ns2,
                "--wait=true",
                "--timeout=60s",
            ],
        );
        assert!(get(&s2, &ns2, name).is_null());
        assert_eq!(phase(&s2, &ns2, name), "");
    })
    .await;
    let lp = ListParams::default().labels(&selector);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(pods_api.list(&lp).await.expect("list").items.is_empty());
    assert!(services.list(&lp).await.expect("list").items.is_empty());
    assert!(secrets.list(&lp).await.expect("list").items.is_empty());
    assert!(claims.list(&lp).await.expect("list").items.is_empty());

    // Every call the operator made is granted by deploy/ plus deploy-kubernetes/, and every
    // rule of the kubernetes backend was needed (but the console's pods/log, which the test
    // cluster cannot answer).
    let calls = calls_of(&s, "molecule-operator");
    assert!(
        calls.contains(&(String::new(), "pods".into(), "create".into())),
        "{calls:?}"
    );
    use molecule::controllers::rbac::{KUBERNETES_BACKEND_RULES, allows, grants_of};
    let backend_grants = grants_of(KUBERNETES_BACKEND_RULES, None);
    let undeclared: Vec<_> = calls
        .iter()
        .filter(|(g, r, v)| {
            !allows(g, r, v)
                && !backend_grants
                    .iter()
                    .any(|(_, bg, br, bv)| (bg, br, bv) == (g, r, v))
        })
        .collect();
    assert!(
        undeclared.is_empty(),
        "calls no RBAC grants: {undeclared:?}"
    );
    let unused: Vec<_> = backend_grants
        .into_iter()
        .filter(|(_, _, r, _)| r != "pods/log")
        .filter(|(_, g, r, v)| !calls.contains(&(g.clone(), r.clone(), v.clone())))
        .collect();
    assert!(
        unused.is_empty(),
        "declared but never needed: {unused:?}\ncalls: {calls:?}"
    );
}

/// The (group, resource, verb) calls the API server counted for one client.
fn calls_of(s: &Server, client: &str) -> std::collections::BTreeSet<(String, String, String)> {
    let (_, metrics) = s.http("GET", "/metrics", None, b"");
    let prefix = "molecule_apiserver_resource_requests_total{";
    let mut out = std::collections::BTreeSet::new();
    for line in metrics.lines() {
        let Some((labels, _)) = line.strip_prefix(prefix).and_then(|r| r.split_once('}')) else {
            continue;
        };
        let l: HashMap<&str, &str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if l.get("client") != Some(&client) {
            continue;
        }
        let resource = match l.get("subresource").copied().unwrap_or_default() {
            "" => l["resource"].to_string(),
            sub => format!("{}/{sub}", l["resource"]),
        };
        out.insert((l["group"].to_string(), resource, l["verb"].to_string()));
    }
    out
}

#[test]
fn the_embedded_server_serves_pods_services_claims_and_configmaps_to_kubectl() {
    let s = Server::start(Backend::Sqlite);
    let ns = "core";
    ok(&s, &["create", "namespace", ns]);
    let manifests = r#"
apiVersion: v1
kind: Pod
metadata: {name: p1, labels: {app: demo}}
spec:
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: s1}
spec:
  selector: {app: demo}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: c1}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: m1}
data: {greeting: hello}
"#;
    apply(&s, ns, manifests);
    let pods = ok(&s, &["get", "pods", "-n", ns]);
    assert!(
        pods.contains("p1") && pods.contains("0/1") && pods.contains("Pending"),
        "{pods}"
    );
    let svc = ok(&s, &["get", "svc", "s1", "-n", ns]);
    assert!(svc.contains("ClusterIP") && svc.contains("80/TCP"), "{svc}");
    let pvc = ok(&s, &["get", "pvc", "c1", "-n", ns]);
    assert!(pvc.contains("Pending"), "{pvc}");
    let cm = ok(
        &s,
        &[
            "get",
            "cm",
            "m1",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.greeting}",
        ],
    );
    assert_eq!(cm, "hello");
    // A kubelet's status write goes through the status subresource.
    ok(
        &s,
        &[
            "patch",
            "pod",
            "p1",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","containerStatuses":[{"name":"main","image":"busybox","imageID":"","ready":true,"restartCount":2,"state":{"running":{}}}]}}"#,
        ],
    );
    let pods = ok(&s, &["get", "pods", "-n", ns]);
    assert!(pods.contains("1/1") && pods.contains("Running"), "{pods}");
    // Types are checked as the real server checks built-in kinds: the field is named.
    let refused = |containers: &str, says: &str| {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: bad}}\nspec:\n  containers: {containers}\n"
        );
        let out = s.kubectl_stdin("1.33", &["apply", "-n", ns, "-f", "-"], Some(&pod));
        assert!(
            !out.status.success() && text(&out).contains(says),
            "{}",
            text(&out)
        );
    };
    refused(
        "[{name: main, image: busybox, ports: [{containerPort: eighty}]}]",
        "spec.containers[0].ports[0].containerPort",
    );
    refused("[{name: main}]", "spec.containers[0].image: Required value");
}
