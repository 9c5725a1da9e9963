//! kube-rs against `molecule serve`: typed CRUD, raw watch events, the runtime watcher, and a
//! small Controller (finalizer + status SSA + Recorder events shown by `kubectl describe`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Server, text};
use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::{finalizer, watcher};
use kube::{Resource, ResourceExt};
use molecule::resources::{OrgImport, OrgImportSource, OrgImportSpec, Workspace, WorkspaceSpec};
use serde_json::json;

fn ws(name: &str, tier: i32) -> Workspace {
    Workspace::new(
        name,
        WorkspaceSpec {
            runtime: Some("echo".into()),
            tier: Some(tier),
            ..Default::default()
        },
    )
}

async fn crud(s: &Server) {
    let api: Api<Workspace> = Api::namespaced(s.client().await, "default");
    let created = api
        .create(&PostParams::default(), &ws("crud", 2))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let dup = api
        .create(&PostParams::default(), &ws("crud", 2))
        .await
        .expect_err("dup");
    assert!(dup.to_string().contains("AlreadyExists"), "{dup}");
    let mut got = api.get("crud").await.expect("get");
    assert_eq!(got.spec.tier, Some(2));
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    got.spec.tier = Some(3);
    let replaced = api
        .replace("crud", &PostParams::default(), &got)
        .await
        .expect("replace");
    assert_eq!(replaced.metadata.generation, Some(2));
    // A stale resourceVersion is a 409 Conflict.
    let err = api
        .replace("crud", &PostParams::default(), &got)
        .await
        .expect_err("stale");
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a conflict, got {other}"),
    }
    let patched = api
        .patch(
            "crud",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"role": "r"}})),
        )
        .await
        .expect("patch");
    assert_eq!(patched.spec.role.as_deref(), Some("r"));
    let del = api
        .delete("crud", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(
        del.is_right(),
        "an object without finalizers is gone at once"
    );
    assert!(api.get_opt("crud").await.expect("get_opt").is_none());
}

async fn watch_events(s: &Server) {
    let api: Api<Workspace> = Api::namespaced(s.client().await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list rv");
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();
    api.create(&PostParams::default(), &ws("watched", 1))
        .await
        .expect("create");
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"tier": 2}})),
    )
    .await
    .expect("patch");
    api.delete("watched", &DeleteParams::default())
        .await
        .expect("delete");
    let mut seen = vec![];
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("watch event in time")
            .expect("ok")
            .expect("open");
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.name_any())),
            WatchEvent::Modified(o) => {
                seen.push(format!("MODIFIED {} {:?}", o.name_any(), o.spec.tier))
            }
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            "ADDED watched",
            "MODIFIED watched Some(2)",
            "DELETED watched"
        ]
    );

    // The runtime watcher (list + watch, bookmarks) sees the same lifecycle.
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut init_done = false;
    while !init_done {
        if let watcher::Event::InitDone =
            tokio::time::timeout(Duration::from_secs(10), w.try_next())
                .await
                .expect("init")
                .expect("ok")
                .expect("open")
        {
            init_done = true;
        }
    }
    api.create(&PostParams::default(), &ws("watched2", 1))
        .await
        .expect("create");
    api.delete("watched2", &DeleteParams::default())
        .await
        .expect("delete");
    let (mut applied, mut deleted) = (false, false);
    while !(applied && deleted) {
        match tokio::time::timeout(Duration::from_secs(10), w.try_next())
            .await
            .expect("event")
            .expect("ok")
            .expect("open")
        {
            watcher::Event::Apply(o) if o.name_any() == "watched2" => applied = true,
            watcher::Event::Delete(o) if o.name_any() == "watched2" => deleted = true,
            _ => {}
        }
    }
}

struct Ctx {
    api: Api<Workspace>,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

async fn reconcile(
    obj: Arc<Workspace>,
    ctx: Arc<Ctx>,
) -> Result<Action, finalizer::Error<TestError>> {
    let api = ctx.api.clone();
    finalizer(&api, "molecule.ai/test-controller", obj, |ev| async move {
        match ev {
            finalizer::Event::Apply(o) => {
                let generation = o.metadata.generation.unwrap_or(1);
                let status = json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "status": {
                    "phase": "Online", "observedGeneration": generation,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Online", "message": "reconciled", "observedGeneration": generation}]}});
                ctx.api.patch_status(&o.name_any(), &PatchParams::apply("test-controller").force(), &Patch::Apply(status)).await?;
                let ev = KEvent { type_: EventType::Normal, reason: "Reconciled".into(), note: Some("status written by the test controller".into()), action: "Reconcile".into(), secondary: None };
                ctx.recorder.publish(&ev, &o.object_ref(&())).await?;
                Ok(Action::await_change())
            }
            finalizer::Event::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await
}

fn error_policy(_: Arc<Workspace>, _: &finalizer::Error<TestError>, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

async fn controller(s: &Server) {
    let client = s.client().await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), "default");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test-controller".into(),
            instance: None,
        },
    );
    let ctx = Arc::new(Ctx {
        api: api.clone(),
        recorder,
    });
    let handle = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {}),
    );
    api.create(&PostParams::default(), &ws("ctl", 2))
        .await
        .expect("create");
    let mut online = false;
    for _ in 0..100 {
        let o = api.get("ctl").await.expect("get");
        if o.status
            .as_ref()
            .and_then(|st| st.phase)
            .map(|p| format!("{p:?}"))
            .as_deref()
            == Some("Online")
            && o.finalizers()
                .iter()
                .any(|f| f == "molecule.ai/test-controller")
        {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        online,
        "the controller did not reconcile; server log:\n{}",
        s.log()
    );
    let describe = {
        let mut out = String::new();
        for _ in 0..50 {
            let o = s.kubectl("1.33", &["describe", "ws", "ctl"]);
            out = text(&o);
            if out.contains("Reconciled") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    };
    assert!(
        describe.contains("Reconciled")
            && describe.contains("status written by the test controller")
            && describe.contains("test-controller"),
        "{describe}"
    );
    // Deleting runs the finalizer's cleanup, then the object is gone.
    api.delete("ctl", &DeleteParams::default())
        .await
        .expect("delete");
    let mut gone = false;
    for _ in 0..100 {
        if api.get_opt("ctl").await.expect("get").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.abort();
    assert!(gone, "finalizer was not removed; server log:\n{}", s.log());
}

fn owned_by(name: &str, owner: &OrgImport, finalizer: Option<&str>) -> Workspace {
    let mut w = ws(name, 2);
    let mut oref = owner.controller_owner_ref(&()).expect("owner ref");
    oref.block_owner_deletion = Some(true);
    w.metadata.owner_references = Some(vec![oref]);
    w.metadata.finalizers = finalizer.map(|f| vec![f.to_string()]);
    w
}

async fn wait_gone<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..100 {
        if api.get_opt(name).await.expect("get").is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn propagation(s: &Server) {
    let client = s.client().await;
    let orgs: Api<OrgImport> = Api::namespaced(client.clone(), "default");
    let wss: Api<Workspace> = Api::namespaced(client.clone(), "default");
    let org = |n: &str| {
        OrgImport::new(
            n,
            OrgImportSpec {
                source: OrgImportSource {
                    dir: Some("x".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
    };

    // Foreground: the owner waits (foregroundDeletion) until its blocking dependent is gone.
    let owner = orgs
        .create(&PostParams::default(), &org("fg"))
        .await
        .expect("owner");
    wss.create(
        &PostParams::default(),
        &owned_by("fg-child", &owner, Some("molecule.ai/hold")),
    )
    .await
    .expect("child");
    orgs.delete("fg", &DeleteParams::foreground())
        .await
        .expect("delete fg");
    let o = orgs.get("fg").await.expect("owner still there");
    assert!(
        o.metadata.deletion_timestamp.is_some()
            && o.finalizers().iter().any(|f| f == "foregroundDeletion"),
        "{:?}",
        o.metadata
    );
    assert!(
        wss.get("fg-child")
            .await
            .expect("child")
            .metadata
            .deletion_timestamp
            .is_some(),
        "dependent is terminating"
    );
    wss.patch(
        "fg-child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release child");
    assert!(
        wait_gone(&wss, "fg-child").await,
        "foreground dependent not removed"
    );
    assert!(
        wait_gone(&orgs, "fg").await,
        "foreground owner not released"
    );

    // Orphan: the owner goes, the dependent stays without the reference.
    let owner = orgs
        .create(&PostParams::default(), &org("orph"))
        .await
        .expect("owner");
    wss.create(
        &PostParams::default(),
        &owned_by("orph-child", &owner, None),
    )
    .await
    .expect("child");
    assert!(
        orgs.delete("orph", &DeleteParams::orphan())
            .await
            .expect("delete")
            .is_right()
    );
    let child = wss.get("orph-child").await.expect("orphan kept");
    assert!(
        child
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Background (the default): the dependent is collected with the owner.
    let owner = orgs
        .create(&PostParams::default(), &org("bg"))
        .await
        .expect("owner");
    wss.create(&PostParams::default(), &owned_by("bg-child", &owner, None))
        .await
        .expect("child");
    orgs.delete("bg", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(
        wait_gone(&wss, "bg-child").await,
        "background dependent not collected"
    );

    // deletecollection with a label selector.
    for (n, team) in [("dc-1", "a"), ("dc-2", "a"), ("dc-3", "b")] {
        let mut w = ws(n, 1);
        w.metadata.labels = Some([("dc".to_string(), team.to_string())].into());
        wss.create(&PostParams::default(), &w)
            .await
            .expect("create");
    }
    wss.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("dc=a"),
    )
    .await
    .expect("deletecollection");
    let left: Vec<String> = wss
        .list(&ListParams::default().labels("dc"))
        .await
        .expect("list")
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    assert_eq!(left, vec!["dc-3"]);
}

async fn streaming_lists_and_leases(s: &Server) {
    let client = s.client().await;
    let wss: Api<Workspace> = Api::namespaced(client.clone(), "default");
    wss.create(&PostParams::default(), &ws("stream-1", 1))
        .await
        .expect("create");
    let mut w = watcher(wss.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = vec![];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.try_next())
            .await
            .expect("initial events")
            .expect("ok")
            .expect("open")
        {
            watcher::Event::InitApply(o) => initial.push(o.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert!(initial.contains(&"stream-1".to_string()), "{initial:?}");
    wss.create(&PostParams::default(), &ws("stream-2", 1))
        .await
        .expect("create");
    loop {
        if let watcher::Event::Apply(o) =
            tokio::time::timeout(Duration::from_secs(10), w.try_next())
                .await
                .expect("event")
                .expect("ok")
                .expect("open")
            && o.name_any() == "stream-2"
        {
            break;
        }
    }

    // Leases (leader election) behave like any object, with optimistic concurrency.
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("molecule-leader".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let mut l = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");
    l.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    let taken = leases
        .replace("molecule-leader", &PostParams::default(), &l)
        .await
        .expect("take over");
    assert_eq!(
        taken.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
    assert!(
        leases
            .replace("molecule-leader", &PostParams::default(), &l)
            .await
            .is_err(),
        "a stale lease update must conflict"
    );
}

/// Paged lists: a page holds at most `limit` objects, every later page answers at the first
/// page's resourceVersion, and the pages together hold each object once, in name order.
async fn paged_lists(s: &Server) {
    let client = s.client().await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), "paging");
    for i in 0..7 {
        let mut w = ws(&format!("page-{i}"), 1);
        w.metadata.labels = Some([("parity".to_string(), (i % 2).to_string())].into());
        api.create(&PostParams::default(), &w)
            .await
            .expect("create");
    }
    let mut names = vec![];
    let mut rvs = vec![];
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(3);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.expect("page");
        assert!(page.items.len() <= 3);
        if token.is_some() {
            // A change between pages does not move the list's resourceVersion.
            api.create(&PostParams::default(), &ws("page-z", 1))
                .await
                .ok();
        }
        names.extend(page.items.iter().map(|o| o.name_any()));
        rvs.push(page.metadata.resource_version.clone());
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    let want: Vec<String> = (0..7)
        .map(|i| format!("page-{i}"))
        .chain(["page-z".into()])
        .collect();
    assert_eq!(names, want);
    assert!(rvs.windows(2).all(|w| w[0] == w[1]), "{rvs:?}");

    // A selector fills pages with matching objects only.
    let odd = api
        .list(&ListParams::default().labels("parity=1").limit(2))
        .await
        .expect("odd");
    assert_eq!(odd.items.len(), 2);
    let rest = api
        .list(
            &ListParams::default()
                .labels("parity=1")
                .limit(2)
                .continue_token(odd.metadata.continue_.as_deref().unwrap_or_default()),
        )
        .await
        .expect("odd rest");
    let odd: Vec<String> = odd
        .items
        .iter()
        .chain(&rest.items)
        .map(|o| o.name_any())
        .collect();
    assert_eq!(odd, ["page-1", "page-3", "page-5"]);

    // A token that is not one is refused with 400, not served as a first page.
    let bad = api
        .list(&ListParams::default().limit(2).continue_token("not-a-token"))
        .await
        .expect_err("bad token");
    assert!(bad.to_string().contains("continue"), "{bad}");
}

async fn suite(postgres: bool) {
    let Some(backend) = Backend::get(postgres).await else {
        return;
    };
    let s = Server::start(backend);
    crud(&s).await;
    watch_events(&s).await;
    controller(&s).await;
    propagation(&s).await;
    streaming_lists_and_leases(&s).await;
    paged_lists(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_sqlite() {
    suite(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_postgres() {
    suite(true).await;
}
