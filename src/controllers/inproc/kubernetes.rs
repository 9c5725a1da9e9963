//! The kubernetes backend on the harness (ADR 0057), envtest style: the embedded API server
//! stores Pods, Services, claims and Secrets and runs nothing; the test plays the kubelet
//! (it writes Pod status) and the agent (it registers with the token the init container would
//! have placed).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{CONVERGE, condition, create, object, wait_for, wait_gone};
use crate::backends::kubernetes::{KubernetesBackend, KubernetesSettings};
use crate::backends::{ConfigFile, Presence, StartSpec, Tier, WorkspaceBackend, WorkspaceRef};
use crate::net::http::{Client, Timeouts};
use crate::resources::{Workspace, WorkspacePhase};
use crate::testing::harness::Harness;
use hyper::http::Method;

const IMAGE: &str = "registry.example.com/agents/echo:1";

fn ws_object(name: &str, spec: Value) -> Workspace {
    object(json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
}

fn phase(w: &Workspace) -> Option<WorkspacePhase> {
    w.status.as_ref().and_then(|s| s.phase)
}

fn ready_reason(w: &Workspace) -> Option<String> {
    w.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.reason.clone())
}

fn pod_name(uid: &str) -> String {
    let id: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("ws-{id}")
}

/// The files of a tar, by path, with their modes.
fn untar(bytes: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(bytes);
    for e in a.entries().expect("tar") {
        let mut e = e.expect("entry");
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e.path().expect("path").to_string_lossy().into_owned();
        let mode = e.header().mode().expect("mode");
        let mut content = vec![];
        e.read_to_end(&mut content).expect("read");
        out.insert(path, (mode, content));
    }
    out
}

/// The kubelet's part: a Pod's status.
async fn kubelet(h: &Harness, name: &str, status: Value) {
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "default");
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .expect("kubelet status write");
}

fn running() -> Value {
    json!({"phase": "Running", "podIP": "10.0.0.7", "startTime": "2026-12-04T00:00:00Z",
        "containerStatuses": [{"name": "agent", "image": IMAGE, "imageID": "", "ready": true,
        "restartCount": 0, "state": {"running": {"startedAt": "2026-12-04T00:00:01Z"}}}]})
}

fn evicted() -> Value {
    json!({"phase": "Failed", "reason": "Evicted",
        "message": "The node was low on resource: memory.", "containerStatuses": null})
}

/// The agent's part: registers with the token in the Pod's workspace Secret.
async fn register(h: &Harness, uid: &str) -> u16 {
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    let secret = secrets.get(&pod_name(uid)).await.expect("workspace secret");
    let data = secret.data.expect("data");
    let files = untar(&data["configs.tar"].0);
    let token = String::from_utf8_lossy(&files[".auth_token"].1)
        .trim()
        .to_string();
    let body =
        json!({"id": uid, "url": "http://10.0.0.7:8000", "agent_card": {"name": "kubelet-test"}});
    let auth = format!("Bearer {token}");
    Client::new(Timeouts::uniform(Duration::from_secs(10)))
        .send(
            Method::POST,
            &format!("{}/registry/register", h.url),
            &[("authorization", auth.as_str())],
            Some((body.to_string().into(), "application/json")),
            64 * 1024,
        )
        .await
        .expect("register")
        .status
}

async fn live_workspace(h: &Harness, name: &str) -> WorkspaceRef {
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let w = create(&api, &ws_object(name, json!({"image": IMAGE}))).await;
    WorkspaceRef {
        uid: w.uid().expect("uid"),
        namespace: "default".into(),
        name: name.into(),
        instance_id: None,
    }
}

fn start_spec(w: &WorkspaceRef) -> StartSpec {
    StartSpec {
        workspace: w.clone(),
        runtime: "echo".into(),
        image: IMAGE.into(),
        env: vec![
            ("API_KEY".into(), "sk-very-secret".into()),
            ("PLATFORM_URL".into(), "http://molecule-agents:8081".into()),
        ],
        tier: Tier::Standard,
        memory_mib: None,
        cpus: None,
        files: vec![
            ConfigFile {
                path: ".auth_token".into(),
                content: b"tok-1".to_vec(),
                mode: 0o600,
            },
            ConfigFile {
                path: "config.yaml".into(),
                content: b"name: alpha\n".to_vec(),
                mode: 0o644,
            },
        ],
        workspace_dir: None,
        extra_hosts: vec![],
        platform: None,
    }
}

#[tokio::test]
async fn the_backend_makes_a_pod_with_its_objects_and_follows_what_the_kubelet_writes() {
    let h = Harness::start().await;
    let k = KubernetesBackend::new(h.client.clone(), "inst0", KubernetesSettings::default());
    let w = live_workspace(&h, "alpha").await;
    let spec = start_spec(&w);
    let started = k.ensure_started(&spec).await.expect("start");
    assert_eq!(
        started.host_url,
        format!("http://{}.default.svc:8000", pod_name(&w.uid))
    );

    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "default");
    let pod = pods.get(&pod_name(&w.uid)).await.expect("the Pod");
    assert_eq!(
        pod.metadata.uid.as_deref(),
        Some(started.container_id.as_str())
    );
    let labels = pod.labels();
    assert_eq!(labels["molecule.ai/uid"], w.uid);
    assert_eq!(labels["molecule.platform.managed"], "true");
    assert_eq!(labels["molecule.ai/instance"], "inst0");
    let owner = &pod.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Workspace", w.uid.as_str())
    );
    assert_eq!(owner.controller, Some(true));
    let pod_spec = pod.spec.clone().expect("spec");
    let agent = &pod_spec.containers[0];
    let mounts: Vec<&str> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(mounts, vec!["/configs", "/workspace"]);
    let env: Vec<(String, String)> = agent
        .env
        .iter()
        .flatten()
        .map(|e| {
            let r = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .expect("from the Secret");
            (e.name.clone(), r.key.clone())
        })
        .collect();
    assert_eq!(
        env,
        vec![
            ("API_KEY".into(), "env.API_KEY".into()),
            ("PLATFORM_URL".into(), "env.PLATFORM_URL".into())
        ]
    );
    let stored = serde_json::to_string(&pod).expect("json");
    assert!(!stored.contains("sk-very-secret") && !stored.contains("tok-1"));
    assert_eq!(
        pod_spec.init_containers.as_ref().map(|c| c[0].name.clone()),
        Some("configs".into())
    );

    // The Secret the init container unpacks, the claims and the Service.
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    let data = secrets
        .get(&pod_name(&w.uid))
        .await
        .expect("secret")
        .data
        .expect("data");
    let files = untar(&data["configs.tar"].0);
    assert_eq!(files[".auth_token"], (0o600, b"tok-1".to_vec()));
    assert_eq!(files["config.yaml"].1, b"name: alpha\n");
    assert_eq!(data["env.API_KEY"].0, b"sk-very-secret");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(h.client.clone(), "default");
    for c in ["configs", "workspace"] {
        let claim = claims
            .get(&format!("{}-{c}", pod_name(&w.uid)))
            .await
            .expect("claim");
        assert_eq!(claim.owner_references()[0].uid, w.uid);
    }
    let services: Api<Service> = Api::namespaced(h.client.clone(), "default");
    let svc = services.get(&pod_name(&w.uid)).await.expect("service");
    assert_eq!(svc.spec.expect("spec").ports.expect("ports")[0].port, 8000);

    // Pending, then what the kubelet says.
    let waiting = |p: Presence| match p {
        Presence::Running { waiting, .. } => waiting.map(|w| w.reason),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        waiting(k.inspect(&w).await.expect("inspect")),
        Some("ContainerCreating")
    );
    kubelet(&h, &pod_name(&w.uid), running()).await;
    assert_eq!(waiting(k.inspect(&w).await.expect("inspect")), None);

    // The same spec again changes nothing; an evicted Pod is replaced by the next start.
    let again = k.ensure_started(&spec).await.expect("again");
    assert_eq!(again.container_id, started.container_id);
    kubelet(&h, &pod_name(&w.uid), evicted()).await;
    match k.inspect(&w).await.expect("inspect") {
        Presence::Stopped {
            reason: Some(r), ..
        } => {
            assert_eq!(r.reason, "Evicted");
            assert!(r.message.contains("low on resource"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    let replaced = k.ensure_started(&spec).await.expect("replace");
    assert_ne!(replaced.container_id, started.container_id);

    // Files written later wait in the files Secret, merged by path.
    let file = |p: &str, c: &[u8]| ConfigFile {
        path: p.into(),
        content: c.to_vec(),
        mode: 0o644,
    };
    k.write_files(&w, &[file("plugins/a/x.md", b"one")])
        .await
        .expect("write");
    k.write_files(
        &w,
        &[file("plugins/b/y.md", b"two"), file("plugins/a/x.md", b"1")],
    )
    .await
    .expect("write again");
    let written = secrets
        .get(&format!("{}-files", pod_name(&w.uid)))
        .await
        .expect("files secret")
        .data
        .expect("data");
    let files = untar(&written["files.tar"].0);
    assert_eq!(files["plugins/a/x.md"].1, b"1");
    assert_eq!(files["plugins/b/y.md"].1, b"two");
    // A removal list edited by hand keeps only the paths this backend could have written.
    let files_secret = format!("{}-files", pod_name(&w.uid));
    secrets
        .patch(
            &files_secret,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"remove.list": "../../etc\nplugins/b\n"}})),
        )
        .await
        .expect("edit the removal list");
    k.write_files(&w, &[file("plugins/c/z.md", b"3")])
        .await
        .expect("write after the edit");
    let data = secrets
        .get(&files_secret)
        .await
        .expect("files secret")
        .data
        .expect("data");
    let removals = String::from_utf8_lossy(&data["remove.list"].0).to_string();
    assert_eq!(
        removals.lines().collect::<Vec<_>>(),
        vec!["plugins/b", "plugins/c/z.md"]
    );

    // Pause keeps the claims; remove takes everything.
    k.stop(&w).await.expect("stop");
    assert_eq!(k.inspect(&w).await.expect("inspect"), Presence::Absent);
    assert!(
        claims
            .get_opt(&format!("{}-configs", pod_name(&w.uid)))
            .await
            .expect("get")
            .is_some()
    );
    k.remove(&w, true).await.expect("remove");
    assert_nothing_left(&h, &w.uid).await;
}

/// No Pod, Service, Secret or claim of the workspace `uid` is left.
async fn assert_nothing_left(h: &Harness, uid: &str) {
    let lp = ListParams::default().labels(&format!("molecule.ai/uid={uid}"));
    let left = [
        names_of::<Pod>(h, &lp).await,
        names_of::<Service>(h, &lp).await,
        names_of::<Secret>(h, &lp).await,
        names_of::<PersistentVolumeClaim>(h, &lp).await,
    ]
    .concat();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The names of the objects of kind `K` in `default` that `lp` selects.
async fn names_of<K>(h: &Harness, lp: &ListParams) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(h.client.clone(), "default")
        .list_metadata(lp)
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect()
}

/// A harness whose Workspaces are Pods, with the Workspace controller running, and the APIs
/// of Workspaces and Pods in `default`.
async fn pod_harness() -> (Harness, Api<Workspace>, Api<Pod>) {
    let mut h = Harness::start().await;
    h.use_kubernetes(KubernetesSettings::default());
    h.run_workspace();
    let api = Api::namespaced(h.client.clone(), "default");
    let pods = Api::namespaced(h.client.clone(), "default");
    (h, api, pods)
}

/// Creates the echo Workspace `name`; returns its uid and its Pod's name.
async fn pod_workspace(api: &Api<Workspace>, name: &str) -> (String, String) {
    let uid = create(api, &ws_object(name, json!({"image": IMAGE})))
        .await
        .uid()
        .expect("uid");
    let pod = pod_name(&uid);
    (uid, pod)
}

#[tokio::test]
async fn a_workspace_becomes_a_pod_goes_online_is_replaced_paused_restarted_and_deleted() {
    let (h, api, pods) = pod_harness().await;
    let (uid, name) = pod_workspace(&api, "beta").await;

    // Provisioning while the Pod is Pending, with the Pod's reason.
    let pending = wait_for(&api, "beta", |w| {
        ready_reason(w).as_deref() == Some("ContainerCreating")
    })
    .await;
    assert_eq!(phase(&pending), Some(WorkspacePhase::Provisioning));
    let first = pods.get(&name).await.expect("the Pod");
    let st = pending.status.clone().expect("status");
    assert_eq!(st.container_id, first.metadata.uid.clone());
    assert_eq!(st.container_name, Some(format!("pod/{name}")));

    // An image the node cannot pull: still Provisioning, with the Pod's reason and message.
    kubelet(
        &h,
        &name,
        json!({"phase": "Pending", "containerStatuses": [{"name": "agent", "image": IMAGE,
            "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": "Back-off pulling image \"registry.example.com/agents/echo:1\""}}}]}),
    )
    .await;
    let pulling = wait_for(&api, "beta", |w| {
        ready_reason(w).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    assert_eq!(phase(&pulling), Some(WorkspacePhase::Provisioning));
    let message = pulling.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("Back-off pulling image"), "{message}");

    // The kubelet starts it; the agent registers: Online.
    kubelet(&h, &name, running()).await;
    assert_eq!(register(&h, &uid).await, 200);
    wait_for(&api, "beta", |w| phase(w) == Some(WorkspacePhase::Online)).await;

    // Evicted: Offline with the Pod's reason, then a new Pod after the backoff.
    kubelet(&h, &name, evicted()).await;
    let offline = wait_for(&api, "beta", |w| {
        ready_reason(w).as_deref() == Some("Evicted")
    })
    .await;
    assert_eq!(phase(&offline), Some(WorkspacePhase::Offline));
    let replaced = Harness::eventually(CONVERGE, || async {
        pods.get_opt(&name)
            .await
            .ok()
            .flatten()
            .filter(|p| p.metadata.uid != first.metadata.uid)
    })
    .await
    .expect("a new Pod replaces the evicted one");
    kubelet(&h, &name, running()).await;
    assert_eq!(register(&h, &uid).await, 200);
    wait_for(&api, "beta", |w| phase(w) == Some(WorkspacePhase::Online)).await;

    // Pause: no Pod, the claims stay. Resume: a Pod again.
    api.patch(
        "beta",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .expect("pause");
    wait_for(&api, "beta", |w| phase(w) == Some(WorkspacePhase::Paused)).await;
    wait_gone(&pods, &name).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(h.client.clone(), "default");
    assert!(
        claims
            .get_opt(&format!("{name}-configs"))
            .await
            .expect("get")
            .is_some()
    );
    api.patch(
        "beta",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .expect("resume");
    let resumed = wait_for(&pods, &name, |_| true).await;
    assert_ne!(resumed.metadata.uid, replaced.metadata.uid);

    // Restart replaces the Pod.
    kubelet(&h, &name, running()).await;
    assert_eq!(register(&h, &uid).await, 200);
    wait_for(&api, "beta", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    api.patch(
        "beta",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {crate::resources::names::RESTART_ANNOTATION: "2026-12-04T01:00:00Z"}}})),
    )
    .await
    .expect("restart");
    wait_for(&pods, &name, |p| p.metadata.uid != resumed.metadata.uid).await;

    // Delete: the finalizer removes the Pod, Service, Secrets and claims.
    api.delete("beta", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "beta").await;
    assert_nothing_left(&h, &uid).await;
}

#[tokio::test]
async fn privileged_tiers_and_host_directories_are_refused_as_pods() {
    let mut h = Harness::start().await;
    h.use_kubernetes(KubernetesSettings::default());
    h.run_workspace();
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    create(&api, &ws_object("root", json!({"image": IMAGE, "tier": 4}))).await;
    let refused = wait_for(&api, "root", |w| phase(w) == Some(WorkspacePhase::Failed)).await;
    let st = refused.status.expect("status");
    let c = condition(&st.conditions, "Ready");
    assert_eq!(c.reason.as_deref(), Some("TierNotAllowed"));
    assert!(
        c.message
            .as_deref()
            .unwrap_or("")
            .contains("--kubernetes-allow-privileged")
    );
    create(
        &api,
        &ws_object(
            "hostdir",
            json!({"image": IMAGE, "workspaceDir": "/srv/agents"}),
        ),
    )
    .await;
    let refused = wait_for(&api, "hostdir", |w| {
        phase(w) == Some(WorkspacePhase::Failed)
    })
    .await;
    let st = refused.status.expect("status");
    let c = condition(&st.conditions, "Ready");
    assert!(
        c.message.as_deref().unwrap_or("").contains("kubernetes"),
        "{c:?}"
    );
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "default");
    assert!(
        pods.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn the_reaper_removes_pod_objects_of_no_workspace_and_keeps_live_ones() {
    let mut h = Harness::start().await;
    let k: Arc<dyn WorkspaceBackend> = h.use_kubernetes(KubernetesSettings::default());
    let live = live_workspace(&h, "kept").await;
    k.ensure_started(&start_spec(&live))
        .await
        .expect("live start");
    // Left behind by a crash, with no owner for the GC to follow.
    let orphan_uid = "0badc0de-0000-4000-8000-000000000000";
    let labels = json!({"molecule.platform.managed": "true", "molecule.ai/instance": "harness0000",
        "molecule.ai/uid": orphan_uid, "molecule.ai/namespace": "default", "molecule.ai/name": "gone"});
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "default");
    let services: Api<Service> = Api::namespaced(h.client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &object(
            json!({"metadata": {"name": "ws-0badc0de0000", "labels": labels},
            "spec": {"containers": [{"name": "agent", "image": IMAGE}]}}),
        ),
    )
    .await
    .expect("orphan pod");
    services
        .create(
            &PostParams::default(),
            &object(
                json!({"metadata": {"name": "ws-0badc0de0000", "labels": labels},
                "spec": {"ports": [{"port": 8000}]}}),
            ),
        )
        .await
        .expect("orphan service");
    let poke = h.run_reaper(Duration::from_secs(3600));
    poke.send(()).await.expect("poke");
    wait_gone(&pods, "ws-0badc0de0000").await;
    wait_gone(&services, "ws-0badc0de0000").await;
    assert!(
        pods.get_opt(&pod_name(&live.uid))
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        services
            .get_opt(&pod_name(&live.uid))
            .await
            .expect("get")
            .is_some()
    );
}

#[tokio::test]
async fn a_pod_evicted_before_its_agent_came_up_is_reported_and_replaced_with_backoff() {
    let (h, api, pods) = pod_harness().await;
    let (_, name) = pod_workspace(&api, "gamma").await;
    let first = wait_for(&pods, &name, |_| true).await;
    kubelet(&h, &name, evicted()).await;
    let offline = wait_for(&api, "gamma", |w| {
        ready_reason(w).as_deref() == Some("Evicted")
    })
    .await;
    assert_eq!(phase(&offline), Some(WorkspacePhase::Offline));
    let message = offline.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("low on resource") && message.contains("replacing it in 1s"),
        "{message}"
    );
    wait_for(&pods, &name, |p| p.metadata.uid != first.metadata.uid).await;
}

/// A `local://` plugin in the harness's registry.
fn local_plugin(h: &Harness, name: &str) {
    let root = h.dir.join("plugins").join(name);
    std::fs::create_dir_all(root.join("hooks")).expect("plugin dir");
    std::fs::write(
        root.join("plugin.yaml"),
        format!("name: {name}\nversion: 1.0.0\ndescription: test\n"),
    )
    .expect("plugin.yaml");
    std::fs::write(root.join("hooks/start.sh"), "echo started\n").expect("hook");
}

#[tokio::test]
async fn a_plugin_reaches_a_pod_workspace_through_its_files_secret_and_a_restart() {
    let mut h = Harness::start().await;
    h.use_kubernetes(KubernetesSettings::default());
    local_plugin(&h, "skills");
    h.run_workspace();
    h.run_plugin();
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let uid = create(&api, &ws_object("alpha", json!({"image": IMAGE})))
        .await
        .uid()
        .expect("uid");
    let name = pod_name(&uid);
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "default");
    let first = wait_for(&pods, &name, |_| true).await;
    let installs: Api<crate::resources::PluginInstall> =
        Api::namespaced(h.client.clone(), "default");
    create(
        &installs,
        &object(
            json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "PluginInstall",
            "metadata": {"name": "skills", "namespace": "default"},
            "spec": {"workspaceRef": {"name": "alpha"}, "source": "local://skills"}}),
        ),
    )
    .await;
    let installed = wait_for(&installs, "skills", |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason.as_deref() == Some("Installed"))
        })
    })
    .await;
    let st = installed.status.expect("status");
    assert_eq!(st.plugin_name.as_deref(), Some("skills"));
    let sha = st.installed_sha.expect("sha");

    // The files wait in the files Secret, with the marker; a restart brings a new Pod whose
    // init container places them.
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    let data = secrets
        .get(&format!("{name}-files"))
        .await
        .expect("files secret")
        .data
        .expect("data");
    let files = untar(&data["files.tar"].0);
    assert!(
        files.contains_key("plugins/skills/plugin.yaml"),
        "{:?}",
        files.keys()
    );
    assert_eq!(
        files["plugins/skills/.complete"].1,
        format!("{sha}\n").into_bytes()
    );
    let pod = wait_for(&pods, &name, |p| p.metadata.uid != first.metadata.uid).await;
    let script = pod.spec.expect("spec").init_containers.expect("init")[0]
        .command
        .clone()
        .expect("command")
        .join(" ");
    assert!(
        script.contains("tar -xf /molecule/files/files.tar -C /configs"),
        "{script}"
    );

    // Deleting the install leaves a tombstone, removed into place at the next start.
    let before = pod.metadata.uid;
    // The installed plugin is in the files Secret every new Pod unpacks: the restart's Pod is
    // recorded, not restarted again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pods.get_opt(&name)
            .await
            .expect("get")
            .and_then(|p| p.metadata.uid),
        before,
        "one restart per install"
    );
    let recorded = wait_for(&installs, "skills", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.installed_container_id.clone())
            == before
    })
    .await;
    assert_eq!(
        recorded.status.and_then(|s| s.installed_sha),
        Some(sha.clone())
    );
    installs
        .delete("skills", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&installs, "skills").await;
    let data = secrets
        .get(&format!("{name}-files"))
        .await
        .expect("files secret")
        .data
        .expect("data");
    let files = untar(&data["files.tar"].0);
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["plugins/skills"]);
    let removals = String::from_utf8_lossy(&data["remove.list"].0).to_string();
    assert!(
        removals.lines().any(|l| l == "plugins/skills"),
        "{removals}"
    );
    wait_for(&pods, &name, |p| p.metadata.uid != before).await;
}
