//! Crash safety: `kill -9` the server in the middle of a burst of writes, restart it on the same
//! data dir, and check that no acknowledged write was lost, resourceVersions stay monotonic and
//! watchers resume.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Server};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use molecule::resources::{Workspace, WorkspaceSpec};

async fn kill9_during_burst(postgres: bool) {
    let Some(backend) = Backend::get(postgres).await else {
        return;
    };
    let mut s = Server::start(backend);
    let client = s.client().await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), "default");

    // A watcher running across the crash.
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let watch_task = {
        let seen = seen.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let mut w = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = w.next().await {
                if let Ok(o) = ev {
                    seen.lock().expect("lock").insert(o.name_any());
                }
            }
        })
    };

    // A burst of concurrent creates; every acknowledged (name, rv) is recorded.
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut writers = vec![];
    for t in 0..8 {
        let api = api.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let name = format!("burst-{t}-{i}");
                let ws = Workspace::new(
                    &name,
                    WorkspaceSpec {
                        runtime: Some("echo".into()),
                        ..Default::default()
                    },
                );
                match api.create(&PostParams::default(), &ws).await {
                    Ok(o) => {
                        let rv = o
                            .resource_version()
                            .and_then(|r| r.parse().ok())
                            .expect("numeric rv");
                        acked.lock().expect("lock").push((name, rv));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 50,
        "the burst acknowledged only {} writes before the kill",
        acked.len()
    );

    tokio::task::block_in_place(|| s.spawn());
    let items = api
        .list(&ListParams::default())
        .await
        .expect("list after restart")
        .items;
    let stored: std::collections::HashMap<String, u64> = items
        .iter()
        .map(|o| {
            (
                o.name_any(),
                o.resource_version()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    for (name, rv) in &acked {
        assert_eq!(
            stored.get(name),
            Some(rv),
            "acknowledged write {name} (rv {rv}) lost or changed after kill -9"
        );
    }
    let max_acked = acked.iter().map(|(_, rv)| *rv).max().unwrap_or(0);
    let after = api
        .create(
            &PostParams::default(),
            &Workspace::new("after-restart", WorkspaceSpec::default()),
        )
        .await
        .expect("create after restart");
    let rv: u64 = after
        .resource_version()
        .and_then(|r| r.parse().ok())
        .expect("rv");
    assert!(
        rv > max_acked,
        "resourceVersion went backwards: {rv} <= {max_acked}"
    );

    // The watcher reconnects to the restarted server and sees the new object.
    let mut resumed = false;
    for _ in 0..300 {
        if seen.lock().expect("lock").contains("after-restart") {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch_task.abort();
    assert!(resumed, "the watcher did not resume after the restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_sqlite() {
    kill9_during_burst(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_postgres() {
    kill9_during_burst(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_with_a_watch_open() {
    let mut s = Server::start(Backend::Sqlite);
    let out = s.dir.path().join("w.txt");
    let mut w = s.kubectl_spawn("1.33", &["get", "ws", "-w"], &out);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let code = tokio::task::block_in_place(|| s.terminate());
    let _ = w.kill();
    let _ = w.wait();
    assert_eq!(
        code,
        Some(0),
        "serve did not exit 0 on SIGTERM; log:\n{}",
        s.log()
    );
    assert!(s.log().contains("stopped"), "{}", s.log());
}
