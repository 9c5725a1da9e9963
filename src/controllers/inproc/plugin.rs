//! The PluginInstall controller on the harness (ADR 0015): a refused source gets a precise
//! condition and Event before anything is fetched, and deleting the record runs its finalizer.
//! The simulated backend's exec answers nothing, so no test here reaches an install.

use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use serde_json::json;

use super::{condition, create, object, wait_event, wait_for, wait_gone};
use crate::controllers::plugin::FINALIZER;
use crate::plugins::Origin;
use crate::resources::{ConditionStatus, PluginInstall};
use crate::testing::harness::Harness;

/// A git URL carrying credentials: refused by the spec check (they would reach status and
/// logs, ADR 0040).
const WITH_CREDENTIALS: &str = "https://user:s3cret@github.com/acme/skills";

fn install(name: &str, source: &str) -> PluginInstall {
    object(json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "PluginInstall",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"workspaceRef": {"name": "alpha"}, "source": source},
    }))
}

fn api(h: &Harness) -> Api<PluginInstall> {
    Api::namespaced(h.client.clone(), "default")
}

/// The Ready condition's (status, reason, message), once present.
fn ready(pi: &PluginInstall) -> Option<(ConditionStatus, String, String)> {
    let c = pi
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((
        c.status,
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

/// What the spec check says of `source`.
fn refusal(source: &str) -> crate::plugins::Refusal {
    Origin::parse(source, None, false).expect_err("a refused source")
}

#[tokio::test]
async fn a_refused_source_gets_a_precise_condition_and_event() {
    let mut h = Harness::start().await;
    h.run_plugin();
    let api = api(&h);
    create(&api, &install("leaky", WITH_CREDENTIALS)).await;
    let expected = refusal(WITH_CREDENTIALS);
    assert_eq!(expected.reason, "InvalidSource");

    let refused = wait_for(&api, "leaky", |p| ready(p).is_some()).await;
    let st = refused.status.expect("status");
    let c = condition(&st.conditions, "Ready");
    assert_eq!(c.status, ConditionStatus::False);
    assert_eq!(c.reason.as_deref(), Some("InvalidSource"));
    assert_eq!(c.message.as_deref(), Some(expected.message.as_str()));
    assert!(!expected.message.contains("s3cret"), "{}", expected.message);
    let (type_, note) = wait_event(&h, Some("default"), "leaky", "InvalidSource").await;
    assert_eq!(
        (type_.as_str(), note.as_str()),
        ("Warning", expected.message.as_str())
    );
    assert_eq!(h.backend.created(), 0, "nothing is started");
}

#[tokio::test]
async fn a_bad_source_string_is_refused_by_name() {
    let mut h = Harness::start().await;
    h.run_plugin();
    let api = api(&h);
    let source = "local://Not A Name";
    create(&api, &install("badname", source)).await;
    let expected = refusal(source);
    let refused = wait_for(&api, "badname", |p| ready(p).is_some()).await;
    let (status, reason, message) = ready(&refused).expect("Ready");
    assert_eq!(status, ConditionStatus::False);
    assert_eq!(
        (reason.as_str(), message.as_str()),
        (expected.reason, expected.message.as_str())
    );
    wait_event(&h, Some("default"), "badname", expected.reason).await;
}

#[tokio::test]
async fn deleting_an_install_runs_its_finalizer() {
    let mut h = Harness::start().await;
    h.run_plugin();
    let api = api(&h);
    create(&api, &install("doomed", WITH_CREDENTIALS)).await;
    let held = wait_for(&api, "doomed", |p| {
        p.finalizers().iter().any(|f| f == FINALIZER) && ready(p).is_some()
    })
    .await;
    assert!(held.metadata.deletion_timestamp.is_none());
    api.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "doomed").await;
}

#[tokio::test]
async fn a_workspace_request_for_a_git_host_off_the_allowlist_is_refused() {
    let mut h = Harness::start().await;
    h.run_plugin_with(crate::controllers::plugin::Settings {
        git_hosts: crate::plugins::git_hosts::GitHosts::parse("git.allowed.example")
            .expect("hosts"),
        ..h.plugin_settings()
    });
    let api = api(&h);
    let mut pi = install("asked", "https://git.elsewhere.example/acme/skills.git");
    pi.spec.track = Some("tag:v1".into());
    pi.metadata.labels = Some(
        [(
            crate::resources::names::REQUESTED_BY_LABEL.to_string(),
            "workspace".to_string(),
        )]
        .into(),
    );
    create(&api, &pi).await;
    let refused = wait_for(&api, "asked", |p| ready(p).is_some()).await;
    let (status, reason, message) = ready(&refused).expect("Ready");
    assert_eq!(status, ConditionStatus::False);
    assert_eq!(reason, "SourceNotAllowed");
    assert_eq!(
        message,
        "a plugin requested by a workspace may come from the local registry or the hosts of --plugin-git-hosts only"
    );
    let (type_, note) = wait_event(&h, Some("default"), "asked", "SourceNotAllowed").await;
    assert_eq!(
        (type_.as_str(), note.as_str()),
        ("Warning", message.as_str())
    );
}

#[tokio::test]
async fn a_plugin_the_registry_lacks_is_refused_without_touching_the_running_container() {
    use crate::resources::{Workspace, WorkspacePhase};
    let mut h = Harness::start().await;
    h.run_workspace();
    h.run_plugin();
    let workspaces: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    create(
        &workspaces,
        &object(json!({
            "apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace",
            "metadata": {"name": "alpha", "namespace": "default"},
            "spec": {"image": "registry.example.com/agents/echo:1"},
        })),
    )
    .await;
    wait_for(&workspaces, "alpha", |w| {
        w.status
            .as_ref()
            .and_then(|s| s.container_id.as_ref())
            .is_some()
            && w.status.as_ref().and_then(|s| s.phase) != Some(WorkspacePhase::Pending)
    })
    .await;
    let api = api(&h);
    create(&api, &install("absent", "local://no-such-plugin")).await;
    let refused = wait_for(&api, "absent", |p| ready(p).is_some()).await;
    let (status, reason, message) = ready(&refused).expect("Ready");
    assert_eq!(status, ConditionStatus::False);
    assert_eq!(reason, "PluginNotFound", "{message}");
    assert!(message.contains("no-such-plugin"), "{message}");
    wait_event(&h, Some("default"), "absent", "PluginNotFound").await;
    assert_eq!(h.backend.execs(), 0, "the container was probed for nothing");
}
