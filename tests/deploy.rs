//! The cluster manifests in `deploy/` (issue 9): `kubectl kustomize` renders them with the CRDs
//! referenced from `crds/`; every object survives a strict round trip through the real
//! Kubernetes types (k8s-openapi: an unknown or misplaced field is an error); the Deployment
//! has what a production install needs; and `kubectl apply --dry-run=client` parses every
//! manifest, both as `-f deploy/` and as `-k deploy/`.
//!
//! `kubectl apply --dry-run=client` still asks a server for API discovery. The embedded server
//! does not serve Deployments or RBAC, and this machine has no kube-apiserver, so a stand-in on
//! 127.0.0.1 speaks the discovery wire format for the kinds in `deploy/` (and answers 404 for
//! every object, as a fresh cluster would). Schema strictness comes from the typed round trip.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use common::{kubectl_bin, text};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rendered() -> Vec<Value> {
    let home = tempfile::tempdir().expect("home");
    let out = Command::new(kubectl_bin("1.33"))
        .args(["kustomize", &root().join("deploy").to_string_lossy()])
        .env("HOME", home.path())
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/:\n{}",
        text(&out)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    molecule::yaml::from_str_multiple::<Value>(&yaml)
        .expect("yaml documents")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Paths present in `orig` that the typed value lost or changed.
fn lost(orig: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => lost(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                lost(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        // Quantities and int-or-strings may be re-rendered; compare as text.
        (a, b) if a.to_string().trim_matches('"') == b.to_string().trim_matches('"') => {}
        _ => out.push(format!("{path} ({orig} became {typed})")),
    }
}

fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut out = vec![];
    lost(v, &back, "", &mut out);
    if out.is_empty() {
        Ok(())
    } else {
        Err(format!("unknown or invalid fields: {out:?}"))
    }
}

fn check_typed(v: &Value) -> Result<(), String> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    match (v["apiVersion"].as_str(), v["kind"].as_str()) {
        (Some("v1"), Some("Namespace")) => strict::<core::Namespace>(v),
        (Some("v1"), Some("ServiceAccount")) => strict::<core::ServiceAccount>(v),
        (Some("v1"), Some("Service")) => strict::<core::Service>(v),
        (Some("apps/v1"), Some("Deployment")) => strict::<apps::Deployment>(v),
        (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
            strict::<rbac::ClusterRole>(v)
        }
        (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
            strict::<rbac::ClusterRoleBinding>(v)
        }
        (Some("rbac.authorization.k8s.io/v1"), Some("Role")) => strict::<rbac::Role>(v),
        (Some("rbac.authorization.k8s.io/v1"), Some("RoleBinding")) => {
            strict::<rbac::RoleBinding>(v)
        }
        (Some("apiextensions.k8s.io/v1"), Some("CustomResourceDefinition")) => {
            strict::<ext::CustomResourceDefinition>(v)
        }
        (a, k) => Err(format!("unexpected object {a:?} {k:?}")),
    }
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"))
}

#[test]
fn deploy_renders_with_the_generated_crds_and_every_object_is_strictly_valid() {
    let objs = rendered();
    let crds: BTreeSet<String> = objs
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
        .collect();
    let generated: BTreeSet<String> = molecule::resources::all_crds()
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(
        crds, generated,
        "deploy/ must carry exactly the generated CRDs"
    );
    // Referenced, not copied: no CRD file lives in deploy/ itself.
    for e in std::fs::read_dir(root().join("deploy"))
        .expect("deploy/")
        .flatten()
    {
        let t = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert!(
            !t.contains("kind: CustomResourceDefinition"),
            "{} copies a CRD",
            e.path().display()
        );
    }
    for o in &objs {
        if let Err(e) = check_typed(o) {
            panic!(
                "{} {}: {e}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
    }

    let d = find(&objs, "Deployment", "molecule-operator");
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["namespace"], "molecule-system");
    let c = &spec["containers"][0];
    assert_eq!(c["command"], json!(["/molecule", "operator"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert!(spec["securityContext"]["runAsUser"].as_i64().unwrap_or(0) > 0);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let sock = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["hostPath"]["path"] == "/var/run/docker.sock")
        .expect("the Docker socket volume");
    assert!(
        c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == sock["name"] && m["mountPath"] == "/var/run/docker.sock"),
        "the Docker socket is mounted"
    );
    let db = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "MOLECULE_DATABASE_URL")
        .expect("MOLECULE_DATABASE_URL");
    assert_eq!(db["valueFrom"]["secretKeyRef"]["name"], "molecule-postgres");
    assert!(
        db.get("value").is_none(),
        "the Postgres URL comes from a Secret only"
    );

    // The service account the Deployment runs as is the one both bindings grant.
    let sa = spec["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    find(&objs, "ServiceAccount", sa);
    for (kind, name) in [
        ("ClusterRoleBinding", "molecule-operator"),
        ("RoleBinding", "molecule-operator-leader-election"),
    ] {
        let b = find(&objs, kind, name);
        assert_eq!(b["subjects"][0]["name"], sa, "{kind}");
        assert_eq!(b["subjects"][0]["namespace"], "molecule-system", "{kind}");
    }

    // The example Secret is the one the Deployment reads, with the key it reads.
    let example = std::fs::read_to_string(root().join("examples/cluster/postgres-secret.yaml"))
        .expect("examples/cluster/postgres-secret.yaml");
    let secret: Value = molecule::yaml::from_str(&example).expect("yaml");
    strict::<k8s_openapi::api::core::v1::Secret>(&secret).expect("a valid Secret");
    assert_eq!(secret["metadata"]["name"], "molecule-postgres");
    assert_eq!(secret["metadata"]["namespace"], "molecule-system");
    assert!(
        secret["stringData"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("postgres://"))
    );
    assert_eq!(db["valueFrom"]["secretKeyRef"]["key"], "url");

    // Every flag the Deployment passes is one `molecule operator` has.
    let help = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["operator", "--help"])
        .output()
        .expect("operator --help");
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for arg in c["args"].as_array().expect("args") {
        let flag = arg.as_str().unwrap_or("").split('=').next().unwrap_or("");
        assert!(
            help.contains(flag),
            "molecule operator has no {flag}:\n{help}"
        );
    }
}

/// The discovery documents for the kinds in deploy/.
fn discovery(path: &str, port: u16) -> Option<Value> {
    let res = |name: &str, kind: &str, namespaced: bool| {
        json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind,
               "verbs": ["create","delete","get","list","patch","update","watch"]})
    };
    let list = |gv: &str, resources: Vec<Value>| json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources});
    let group = |name: &str| {
        json!({"name": name, "versions": [{"groupVersion": format!("{name}/v1"), "version": "v1"}],
               "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"}})
    };
    Some(match path {
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            group("apps"), group("rbac.authorization.k8s.io"), group("apiextensions.k8s.io")]}),
        "/api/v1" => list(
            "v1",
            vec![
                res("namespaces", "Namespace", false),
                res("serviceaccounts", "ServiceAccount", true),
                res("services", "Service", true),
                res("secrets", "Secret", true),
            ],
        ),
        "/apis/apps/v1" => list("apps/v1", vec![res("deployments", "Deployment", true)]),
        "/apis/rbac.authorization.k8s.io/v1" => list(
            "rbac.authorization.k8s.io/v1",
            vec![
                res("clusterroles", "ClusterRole", false),
                res("clusterrolebindings", "ClusterRoleBinding", false),
                res("roles", "Role", true),
                res("rolebindings", "RoleBinding", true),
            ],
        ),
        "/apis/apiextensions.k8s.io/v1" => list(
            "apiextensions.k8s.io/v1",
            vec![res(
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
            )],
        ),
        _ => return None,
    })
}

/// Starts the discovery stand-in; returns its port.
fn discovery_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let app = axum::Router::new().fallback(move |uri: Uri| async move {
                match discovery(uri.path(), port) {
                    Some(doc) => (StatusCode::OK, axum::Json(doc)).into_response(),
                    None => (
                        StatusCode::NOT_FOUND,
                        axum::Json(
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "not found"}),
                        ),
                    )
                        .into_response(),
                }
            });
            let _ = axum::serve(listener, app).await;
        });
    });
    port
}

fn dry_run(version: &str, port: u16, how: &str, dir: &Path) -> String {
    let home = tempfile::tempdir().expect("home");
    let kubeconfig = home.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\ncurrent-context: c\n"
        ),
    )
    .expect("kubeconfig");
    let out = Command::new(kubectl_bin(version))
        .args(["apply", "--dry-run=client", "--validate=false", how])
        .arg(dir)
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", home.path())
        .output()
        .expect("kubectl apply");
    assert!(
        out.status.success(),
        "kubectl {version} apply --dry-run=client {how} {}:\n{}",
        dir.display(),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn kubectl_apply_dry_run_parses_every_manifest() {
    let port = discovery_server();
    let deploy = root().join("deploy");
    for version in ["1.27", "1.33"] {
        let plain = dry_run(version, port, "-f", &deploy);
        for line in [
            "namespace/molecule-system created (dry run)",
            "serviceaccount/molecule-operator created (dry run)",
            "clusterrole.rbac.authorization.k8s.io/molecule-operator created (dry run)",
            "clusterrolebinding.rbac.authorization.k8s.io/molecule-operator created (dry run)",
            "role.rbac.authorization.k8s.io/molecule-operator-leader-election created (dry run)",
            "rolebinding.rbac.authorization.k8s.io/molecule-operator-leader-election created (dry run)",
            "service/molecule-agents created (dry run)",
            "service/molecule-operator-metrics created (dry run)",
            "deployment.apps/molecule-operator created (dry run)",
        ] {
            assert!(
                plain.contains(line),
                "kubectl {version} -f: no {line:?} in:\n{plain}"
            );
        }
        let all = dry_run(version, port, "-k", &deploy);
        assert!(
            all.contains("customresourcedefinition.apiextensions.k8s.io/workspaces.molecule.ai created (dry run)")
                && all.contains("deployment.apps/molecule-operator created (dry run)"),
            "kubectl {version} -k:\n{all}"
        );
        assert_eq!(
            all.lines().count(),
            plain.lines().count() + molecule::resources::all_crds().len(),
            "-k is -f plus the CRDs:\n{all}"
        );
    }
}
