//! What a workspace gets (ADR 0048), on the harness: the generated config.yaml, the baseline
//! env, the gh-identity mutator, the effective tier in the Tier column, and an unresolvable
//! runtime shown as Pending (then Failed) in `kubectl get ws`.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use serde_json::{Value, json};

use super::{condition, create, object, wait_event, wait_for};
use crate::resources::{ConditionStatus, Runtime, Workspace, WorkspacePhase};
use crate::testing::harness::Harness;

const IMAGE: &str = "registry.example.com/agents/echo:1";

fn ws(name: &str, spec: Value) -> Workspace {
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

/// The `kubectl get ws <name>` row, as the API server serves it: column name → cell.
async fn row(h: &Harness, name: &str) -> serde_json::Map<String, Value> {
    let req = hyper::http::Request::get(format!(
        "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces/{name}"
    ))
    .header(
        "Accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .body(vec![])
    .expect("request");
    let t: Value = h.client.request(req).await.expect("table");
    let cols = t["columnDefinitions"].as_array().expect("columns").clone();
    let cells = t["rows"][0]["cells"].as_array().expect("cells").clone();
    cols.iter()
        .zip(cells)
        .map(|(c, v)| (c["name"].as_str().unwrap_or_default().to_string(), v))
        .collect()
}

/// The env and config.yaml the workspace's container was started with.
fn started(h: &Harness, w: &Workspace) -> (Vec<(String, String)>, Value) {
    let spec = h
        .backend
        .last_start(&w.uid().expect("uid"))
        .expect("started");
    let config = spec
        .files
        .iter()
        .find(|f| f.path == "config.yaml")
        .expect("config.yaml");
    let yaml = String::from_utf8(config.content.clone()).expect("utf-8");
    (spec.env, crate::yaml::from_str(&yaml).expect("yaml"))
}

fn env_of<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn a_workspace_gets_the_original_config_yaml_baseline_env_and_tier() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    create(
        &api,
        &ws(
            "lead",
            json!({
                "image": IMAGE,
                "displayName": "Research Lead",
                "role": "research-lead",
                "initialPrompt": "Read the brief.\nThen plan the week.\n",
                "idlePrompt": "anything new?",
                "idleIntervalSeconds": 120,
                "categoryRouting": {"bugs": ["qa"], "docs": ["writer", "lead"]},
            }),
        ),
    )
    .await;
    create(&api, &ws("plain", json!({"image": IMAGE, "tier": 3}))).await;
    let lead = wait_for(&api, "lead", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    let plain = wait_for(&api, "plain", |w| phase(w) == Some(WorkspacePhase::Online)).await;

    // 9: the original's config.yaml shape, then the routing and prompt blocks.
    let (env, config) = started(&h, &lead);
    assert_eq!(config["name"], "Research Lead");
    assert_eq!(config["description"], "research-lead");
    assert_eq!(config["version"], "1.0.0");
    assert_eq!(config["tier"], 2);
    assert_eq!(config["runtime"], "echo");
    assert_eq!(config["runtime_config"], json!({"timeout": 0}));
    assert_eq!(
        config["category_routing"],
        json!({"bugs": ["qa"], "docs": ["writer", "lead"]})
    );
    assert_eq!(
        config["initial_prompt"],
        "Read the brief.\nThen plan the week.\n"
    );
    assert_eq!(config["idle_prompt"], "anything new?");
    assert_eq!(config["idle_interval_seconds"], 120);
    // The echo agent reads it.
    let agent = crate::agent::AgentConfig::from_yaml(
        &crate::yaml::to_string(&config).expect("yaml"),
        |_| None,
    )
    .expect("the echo agent reads the generated config");
    assert_eq!(agent.role.as_deref(), Some("research-lead"));
    assert_eq!(agent.workspace_id, lead.uid().expect("uid"));

    // 11: the baseline env of the original.
    let uid = lead.uid().expect("uid");
    for (k, v) in [
        ("WORKSPACE_ID", uid.as_str()),
        ("WORKSPACE_CONFIG_PATH", "/configs"),
        ("PLATFORM_URL", h.url.as_str()),
        ("MOLECULE_URL", h.url.as_str()),
        ("TIER", "2"),
        ("PLUGINS_DIR", "/plugins"),
        ("PYTHONPATH", "/app"),
    ] {
        assert_eq!(env_of(&env, k), Some(v), "{k}");
    }
    // 13: gh-identity with a role; a no-op without one, and never an invented owner.
    assert_eq!(env_of(&env, "MOLECULE_AGENT_ROLE"), Some("Research-Lead"));
    assert!(
        env_of(&env, "MOLECULE_ATTRIBUTION_BADGE").is_some_and(|b| b.contains("Research-Lead"))
    );
    assert_eq!(env_of(&env, "MOLECULE_OWNER"), None);
    let (plain_env, plain_config) = started(&h, &plain);
    for k in [
        "MOLECULE_AGENT_ROLE",
        "MOLECULE_OWNER",
        "MOLECULE_ATTRIBUTION_BADGE",
    ] {
        assert_eq!(env_of(&plain_env, k), None, "{k}");
    }
    assert_eq!(env_of(&plain_env, "TIER"), Some("3"));
    assert_eq!(plain_config["tier"], 3);
    assert!(plain_config.get("initial_prompt").is_none());

    // 15: the Tier column shows the effective tier.
    assert_eq!(lead.status.as_ref().and_then(|s| s.tier), Some(2));
    assert_eq!(row(&h, "lead").await["Tier"], 2);
    assert_eq!(row(&h, "plain").await["Tier"], 3);
}

#[tokio::test]
async fn an_unresolvable_runtime_is_pending_with_its_reason_then_failed() {
    let mut h = Harness::start().await;
    let settings = crate::controllers::workspace::Settings {
        provision_timeout: Duration::from_secs(4),
        ..h.workspace_settings()
    };
    h.run_workspace_with(settings);
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    create(&api, &ws("lost", json!({"runtime": "nosuch"}))).await;
    let pending = wait_for(&api, "lost", |w| phase(w) == Some(WorkspacePhase::Pending)).await;
    let st = pending.status.expect("status");
    let unknown = "unknown runtime \"nosuch\"; known runtimes: echo, external";
    let ready = condition(&st.conditions, "Ready");
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason.as_deref(), Some("UnknownRuntime"));
    let message = ready.message.clone().unwrap_or_default();
    assert!(message.starts_with(unknown), "{message}");
    // What `kubectl get ws` shows at once.
    let r = row(&h, "lost").await;
    assert_eq!(r["Phase"], "Pending");
    assert_eq!(r["Ready"], "False");
    assert_eq!(r["Reason"], "UnknownRuntime");
    assert_eq!(r["Message"], Value::String(message.clone()));
    assert_eq!(r["Tier"], 2);
    let (type_, note) = wait_event(&h, Some("default"), "lost", "UnknownRuntime").await;
    assert_eq!(
        (type_.as_str(), note.as_str()),
        ("Warning", message.as_str())
    );
    assert_eq!(h.backend.created(), 0, "nothing is created meanwhile");

    // After the provision timeout: Failed, still nothing created.
    let failed = wait_for(&api, "lost", |w| phase(w) == Some(WorkspacePhase::Failed)).await;
    let st = failed.status.expect("status");
    let ready = condition(&st.conditions, "Ready");
    assert_eq!(ready.reason.as_deref(), Some("UnknownRuntime"));
    let gave_up = ready.message.clone().unwrap_or_default();
    assert!(
        gave_up.starts_with(unknown) && gave_up.contains("gave up after 4s"),
        "{gave_up}"
    );
    assert_eq!(row(&h, "lost").await["Phase"], "Failed");
    assert_eq!(h.backend.created(), 0);

    // A name no Runtime record can have fails at once.
    create(&api, &ws("odd", json!({"runtime": "../x y"}))).await;
    let odd = wait_for(&api, "odd", |w| phase(w).is_some()).await;
    assert_eq!(phase(&odd), Some(WorkspacePhase::Failed));
}

#[tokio::test]
async fn a_runtime_created_while_pending_lets_the_workspace_start() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    create(&api, &ws("early", json!({"runtime": "later"}))).await;
    wait_for(&api, "early", |w| phase(w) == Some(WorkspacePhase::Pending)).await;
    let runtimes: Api<Runtime> = Api::all(h.client.clone());
    create(
        &runtimes,
        &object(json!({
            "apiVersion": "molecule.ai/v1alpha1",
            "kind": "Runtime",
            "metadata": {"name": "later"},
            "spec": {"image": "registry.example.com/later:1"},
        })),
    )
    .await;
    let online = wait_for(&api, "early", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    let ready = condition(&online.status.expect("status").conditions, "Ready").clone();
    assert_eq!(ready.status, ConditionStatus::True);
}

/// A Workspace failed for a Runtime's required env waits for a change (no requeue): a change
/// of the Runtime record is one. Without the Runtime cache's trigger (ADR 0025) it would stay
/// Failed until its own record changed.
#[tokio::test]
async fn a_runtime_record_change_wakes_the_workspaces_that_name_it() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let runtimes: Api<Runtime> = Api::all(h.client.clone());
    let needy = |required: Value| -> Runtime {
        object(json!({
            "apiVersion": "molecule.ai/v1alpha1",
            "kind": "Runtime",
            "metadata": {"name": "needy"},
            "spec": {"image": "registry.example.com/needy:1", "requiredEnv": required},
        }))
    };
    create(&runtimes, &needy(json!(["NEEDY_API_KEY"]))).await;
    // The cache has the record before the Workspace exists.
    while h
        .runtime_cache()
        .reader()
        .get(&kube::runtime::reflector::ObjectRef::new("needy"))
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    create(&api, &ws("user", json!({"runtime": "needy"}))).await;
    create(
        &api,
        &ws("bystander", json!({"runtime": "echo", "image": IMAGE})),
    )
    .await;
    let failed = wait_for(&api, "user", |w| phase(w) == Some(WorkspacePhase::Failed)).await;
    let st = failed.status.expect("status");
    assert_eq!(st.missing_env, vec!["NEEDY_API_KEY".to_string()]);
    wait_for(&api, "bystander", |w| {
        phase(w) == Some(WorkspacePhase::Online)
    })
    .await;
    let bystander_writes = api
        .get("bystander")
        .await
        .expect("bystander")
        .resource_version();

    runtimes
        .patch(
            "needy",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"requiredEnv": null}})),
        )
        .await
        .expect("drop requiredEnv");
    let online = wait_for(&api, "user", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    assert!(online.status.expect("status").missing_env.is_empty());
    // A workspace of another runtime was not touched.
    assert_eq!(
        api.get("bystander")
            .await
            .expect("bystander")
            .resource_version(),
        bystander_writes
    );
}

#[tokio::test]
async fn hostile_prompts_and_routing_fail_precisely_and_create_nothing() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let huge = "x".repeat(crate::controllers::workspace::files::MAX_FILE_BYTES + 1);
    create(
        &api,
        &ws("huge", json!({"image": IMAGE, "initialPrompt": huge})),
    )
    .await;
    create(
        &api,
        &ws(
            "routes",
            json!({"image": IMAGE, "categoryRouting": {"bugs": ["qa\nrole"]}}),
        ),
    )
    .await;
    for (name, needle) in [("huge", "initialPrompt"), ("routes", "categoryRouting")] {
        let failed = wait_for(&api, name, |w| phase(w) == Some(WorkspacePhase::Failed)).await;
        let c = condition(&failed.status.expect("status").conditions, "ConfigReady").clone();
        assert_eq!(c.reason.as_deref(), Some("InvalidConfig"), "{name}");
        assert!(
            c.message.as_deref().unwrap_or("").contains(needle),
            "{name}: {c:?}"
        );
    }
    assert_eq!(h.backend.created(), 0, "nothing half-created");
}
