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
//!
//! The `kubernetes` backend variant (`deploy-kubernetes/`, an overlay of `deploy/`) drops the
//! Docker host and adds the RBAC for workspace Pods; the Helm chart (`deploy/helm/molecule/`)
//! renders, with a small Go-template subset that [`tmpl`] implements, exactly what the two
//! kustomizations render (helm itself is not available here).

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
    kustomize("deploy")
}

/// `kubectl kustomize <dir>` (relative to the repository root), as values.
fn kustomize(dir: &str) -> Vec<Value> {
    let home = tempfile::tempdir().expect("home");
    let out = Command::new(kubectl_bin("1.33"))
        .args(["kustomize", &root().join(dir).to_string_lossy()])
        .env("HOME", home.path())
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}:\n{}",
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
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered objects"))
}

fn check_all_typed(objs: &[Value]) {
    for o in objs {
        if let Err(e) = check_typed(o) {
            panic!(
                "{} {}: {e}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
    }
}

/// Every flag in `args` is one `molecule operator` has.
fn assert_operator_flags(args: &Value) {
    let help = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["operator", "--help"])
        .output()
        .expect("operator --help");
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for arg in args.as_array().expect("args") {
        let flag = arg.as_str().unwrap_or("").split('=').next().unwrap_or("");
        assert!(
            help.contains(flag),
            "molecule operator has no {flag}:\n{help}"
        );
    }
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
    check_all_typed(&objs);

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
    assert_operator_flags(&c["args"]);
}

/// (kind, name) of every object.
fn kinds_and_names(objs: &[Value]) -> BTreeSet<(String, String)> {
    objs.iter()
        .map(|o| {
            let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
            (s(&o["kind"]), s(&o["metadata"]["name"]))
        })
        .collect()
}

/// What the cluster roles that `objs` bind to the service account `molecule-system/<sa>`
/// grant, as (group, resource, verb).
fn cluster_grants(objs: &[Value], sa: &str) -> BTreeSet<(String, String, String)> {
    let bound: BTreeSet<&str> = objs
        .iter()
        .filter(|b| b["kind"] == "ClusterRoleBinding")
        .filter(|b| {
            b["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == sa
                    && s["namespace"] == "molecule-system"
            })
        })
        .filter_map(|b| b["roleRef"]["name"].as_str())
        .collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut out = BTreeSet::new();
    for role in objs.iter().filter(|r| r["kind"] == "ClusterRole") {
        if !role["metadata"]["name"]
            .as_str()
            .is_some_and(|n| bound.contains(n))
        {
            continue;
        }
        for rule in role["rules"].as_array().into_iter().flatten() {
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        out.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_kubernetes_variant_drops_the_docker_host_and_grants_workspace_pods() {
    let objs = kustomize("deploy-kubernetes");
    check_all_typed(&objs);
    // Everything of the base is there, CRDs included; the overlay only adds its RBAC.
    let mut expected = kinds_and_names(&rendered());
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        expected.insert((kind.into(), "molecule-operator-workspace-pods".into()));
    }
    assert_eq!(kinds_and_names(&objs), expected);

    let d = find(&objs, "Deployment", "molecule-operator");
    let spec = &d["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert!(spec.get("nodeSelector").is_none(), "no Docker-host pinning");
    assert!(spec["securityContext"].get("supplementalGroups").is_none());
    assert!(
        !spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v.get("hostPath").is_some()),
        "no hostPath volume"
    );
    assert!(
        !c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["mountPath"] == "/var/run/docker.sock"),
        "no Docker socket mount"
    );
    assert!(
        !c["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "DOCKER_HOST"),
        "no DOCKER_HOST"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in [
        "--default-backend=kubernetes",
        "--kubernetes-platform-url=http://molecule-agents.molecule-system.svc:8081",
    ] {
        assert!(args.contains(&arg), "no {arg} in {args:?}");
    }
    assert!(args.iter().any(|a| a.starts_with("--platform-url=")));
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--kubernetes-allow-privileged")),
        "privileged Pods stay off"
    );
    assert_operator_flags(&c["args"]);

    // The kubernetes backend's verbs, granted to the ServiceAccount the Deployment runs as.
    let sa = spec["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let granted = cluster_grants(&objs, sa);
    let needed = molecule::controllers::rbac::grants_of(
        molecule::controllers::rbac::KUBERNETES_BACKEND_RULES,
        None,
    );
    for (_, group, resource, verb) in needed {
        let grant = (group, resource.clone(), verb.clone());
        assert!(granted.contains(&grant), "{verb} {resource} is not granted");
    }
    for verb in ["get", "list", "watch", "patch", "delete"] {
        let grant = (String::new(), "secrets".to_string(), verb.to_string());
        assert!(granted.contains(&grant), "{verb} secrets is not granted");
    }
    assert!(
        !granted.iter().any(|(_, r, _)| r == "pods/exec"),
        "no pods/exec"
    );
}

/// The Go-template subset the chart's templates are written in (deploy/helm/molecule/README.md):
/// `{{ . }}`, `{{ .a.b }}`, `{{ "text" }}`, `{{ x | quote }}`, `{{ if x }}`, `{{ if eq x y }}`,
/// `{{ else }}`, `{{ end }}` and `{{ range x }}`, with Go's `{{- ` / ` -}}` trimming. Anything
/// else is an error, also in a branch the values do not take.
mod tmpl {
    use serde_json::Value;

    static NULL: Value = Value::Null;
    const WS: &[char] = &[' ', '\t', '\r', '\n'];

    enum Tok {
        Text(String),
        Action(String),
    }

    fn lex(src: &str) -> Result<Vec<Tok>, String> {
        let mut toks = vec![];
        let mut rest = src;
        let mut trim_next = false;
        while let Some(open) = rest.find("{{") {
            let mut text = &rest[..open];
            if trim_next {
                text = text.trim_start_matches(WS);
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or("an unclosed {{")?;
            let mut action = &after[..close];
            if let Some(a) = action.strip_prefix("- ") {
                text = text.trim_end_matches(WS);
                action = a;
            }
            trim_next = action.ends_with(" -");
            if trim_next {
                action = &action[..action.len() - 2];
            }
            toks.push(Tok::Text(text.to_string()));
            toks.push(Tok::Action(action.trim().to_string()));
            rest = &after[close + 2..];
        }
        let text = if trim_next {
            rest.trim_start_matches(WS)
        } else {
            rest
        };
        toks.push(Tok::Text(text.to_string()));
        Ok(toks)
    }

    /// An argument: a string literal, `.` or a field path from `.`. Not `live`: syntax only.
    fn arg(word: &str, dot: &Value, live: bool) -> Result<Value, String> {
        if let Some(lit) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"'))
            && !lit.contains(['"', '\\'])
        {
            return Ok(Value::String(lit.to_string()));
        }
        if word == "." {
            return Ok(if live { dot.clone() } else { Value::Null });
        }
        let path: Vec<&str> = word
            .strip_prefix('.')
            .map(|p| p.split('.').collect())
            .unwrap_or_default();
        let field =
            |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if path.is_empty() || !path.iter().all(field) {
            return Err(format!("unsupported argument {word:?}"));
        }
        if !live {
            return Ok(Value::Null);
        }
        let mut v = dot;
        for seg in path {
            match v {
                Value::Null => return Ok(Value::Null),
                Value::Object(m) => v = m.get(seg).unwrap_or(&NULL),
                _ => return Err(format!("can't evaluate {word}: {v} is not a map")),
            }
        }
        Ok(v.clone())
    }

    fn show(v: &Value) -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(format!("no printable value: {v}")),
        }
    }

    fn pipeline(expr: &str, dot: &Value, live: bool) -> Result<Value, String> {
        let words: Vec<&str> = expr.split_whitespace().collect();
        match words.as_slice() {
            [a] => arg(a, dot, live),
            [a, "|", "quote"] => {
                let v = arg(a, dot, live)?;
                if !live {
                    return Ok(Value::Null);
                }
                let quoted = serde_json::to_string(&show(&v)?).map_err(|e| e.to_string())?;
                Ok(Value::String(quoted))
            }
            ["eq", a, b] => Ok(Value::Bool(arg(a, dot, live)? == arg(b, dot, live)?)),
            _ => Err(format!("unsupported action {{{{ {expr} }}}}")),
        }
    }

    /// Go's truth: false, 0, nil and empty strings, lists and maps are false.
    fn truthy(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(m) => !m.is_empty(),
        }
    }

    /// Renders `toks[*i..]` until an `else` or `end` (returned) or the end of input (None).
    /// Not `live` (a branch not taken): only checks the syntax.
    fn block(
        toks: &[Tok],
        i: &mut usize,
        dot: &Value,
        live: bool,
        out: &mut String,
    ) -> Result<Option<&'static str>, String> {
        while let Some(tok) = toks.get(*i) {
            *i += 1;
            let action = match tok {
                Tok::Text(t) => {
                    if live {
                        out.push_str(t);
                    }
                    continue;
                }
                Tok::Action(a) => a.as_str(),
            };
            let unended = || format!("{{{{ {action} }}}} without its {{{{ end }}}}");
            if action == "else" {
                return Ok(Some("else"));
            } else if action == "end" {
                return Ok(Some("end"));
            } else if let Some(cond) = action.strip_prefix("if ") {
                let yes = truthy(&pipeline(cond, dot, live)?);
                let mut end = block(toks, i, dot, live && yes, out)?;
                if end == Some("else") {
                    end = block(toks, i, dot, live && !yes, out)?;
                }
                if end != Some("end") {
                    return Err(unended());
                }
            } else if let Some(list) = action.strip_prefix("range ") {
                let items = match pipeline(list, dot, live)? {
                    Value::Null => vec![],
                    Value::Array(a) => a,
                    v => return Err(format!("range over {v}")),
                };
                // One pass per item, or one that only checks the body when there is none.
                let passes: Vec<Option<&Value>> = if items.is_empty() {
                    vec![None]
                } else {
                    items.iter().map(Some).collect()
                };
                let start = *i;
                for item in passes {
                    *i = start;
                    let end = block(toks, i, item.unwrap_or(&NULL), live && item.is_some(), out)?;
                    if end != Some("end") {
                        return Err(unended());
                    }
                }
            } else {
                let v = pipeline(action, dot, live)?;
                if live {
                    out.push_str(&show(&v)?);
                }
            }
        }
        Ok(None)
    }

    fn run(src: &str, data: &Value, live: bool) -> Result<String, String> {
        let toks = lex(src)?;
        let mut out = String::new();
        match block(&toks, &mut 0, data, live, &mut out)? {
            None => Ok(out),
            Some(end) => Err(format!("an unexpected {{{{ {end} }}}}")),
        }
    }

    /// `src` rendered with `data` (`{"Values": …, "Chart": …}`).
    pub fn render(src: &str, data: &Value) -> Result<String, String> {
        run(src, data, true)
    }

    /// Whether every action of `src`, in every branch, is one of the subset.
    pub fn check(src: &str) -> Result<(), String> {
        run(src, &Value::Null, false).map(|_| ())
    }
}

fn chart_dir() -> PathBuf {
    root().join("deploy/helm/molecule")
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    molecule::yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `over` merged into `base` the way Helm merges `--set`/`-f` values: maps key by key, anything
/// else replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Every file in the chart's templates/, sorted.
fn chart_templates() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("templates"))
        .expect("templates/")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// `helm template` of the chart with values.yaml and `overrides`: the objects of the rendered
/// manifests (`templates/*.yaml`, not `_*` files).
fn helm_template(overrides: &Value) -> Vec<Value> {
    let mut values = read_yaml(&chart_dir().join("values.yaml"));
    merge(&mut values, overrides);
    let chart = read_yaml(&chart_dir().join("Chart.yaml"));
    let data = json!({"Values": values, "Chart": {
        "Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]}});
    let mut objs = vec![];
    for t in chart_templates() {
        let name = t
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let yaml = t
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml"));
        if !yaml || name.starts_with('_') {
            continue;
        }
        let src = std::fs::read_to_string(&t).expect("template");
        let text = tmpl::render(&src, &data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if text.trim().is_empty() {
            continue;
        }
        let docs: Vec<Value> = molecule::yaml::from_str_multiple(&text)
            .unwrap_or_else(|e| panic!("{name} renders invalid YAML: {e}\n{text}"));
        objs.extend(docs.into_iter().filter(|v| !v.is_null()));
    }
    objs
}

/// The chart's objects are exactly the kustomization's, CRDs aside (Helm installs those from
/// the chart's crds/), each equal as JSON.
fn assert_same_objects(chart: &[Value], kustomized: &[Value], what: &str) {
    let kustomized: Vec<Value> = kustomized
        .iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .cloned()
        .collect();
    assert_eq!(
        kinds_and_names(chart),
        kinds_and_names(&kustomized),
        "{what}: the chart's objects (left) and kustomize's (right)"
    );
    assert_eq!(chart.len(), kustomized.len(), "{what}: an object twice");
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    for o in &kustomized {
        let kind = o["kind"].as_str().unwrap_or("?");
        let name = o["metadata"]["name"].as_str().unwrap_or("?");
        let mine = find(chart, kind, name);
        assert!(
            mine == o,
            "{what}: {kind} {name} differs\nthe chart:\n{}\nkustomize:\n{}",
            pretty(mine),
            pretty(o)
        );
    }
}

#[test]
fn the_helm_chart_renders_what_the_kustomizations_render() {
    let pods = helm_template(&json!({}));
    check_all_typed(&pods);
    assert_same_objects(
        &pods,
        &kustomize("deploy-kubernetes"),
        "defaultBackend kubernetes",
    );
    let docker = helm_template(&json!({"defaultBackend": "docker"}));
    assert_same_objects(&docker, &rendered(), "defaultBackend docker");

    // The kubernetes backend's options; none of them with the docker backend.
    let objs = helm_template(&json!({
        "allowPrivileged": true,
        "workspaceImagePullSecrets": ["regcred", "mirror"],
        "image": {"repository": "registry.example.com/molecule", "tag": "9.9.9"},
        "createNamespace": false,
    }));
    let d = find(&objs, "Deployment", "molecule-operator");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let args = c["args"].as_array().expect("args");
    assert_eq!(
        args[args.len() - 3..],
        [
            json!("--kubernetes-allow-privileged"),
            json!("--kubernetes-image-pull-secret=regcred"),
            json!("--kubernetes-image-pull-secret=mirror"),
        ]
    );
    assert_operator_flags(&c["args"]);
    assert_eq!(c["image"], "registry.example.com/molecule:9.9.9");
    assert!(!objs.iter().any(|o| o["kind"] == "Namespace"));
    let objs = helm_template(&json!({
        "defaultBackend": "docker",
        "allowPrivileged": true,
        "workspaceImagePullSecrets": ["regcred"],
    }));
    let d = find(&objs, "Deployment", "molecule-operator");
    let args = &d["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        !args.to_string().contains("kubernetes"),
        "docker backend: {args}"
    );

    // CRDs: the generated ones through a symlink (git stores it), without their kustomization.
    assert_eq!(
        std::fs::read_link(chart_dir().join("crds")).expect("crds is a symlink"),
        Path::new("../../../crds")
    );
    let ignore = std::fs::read_to_string(chart_dir().join(".helmignore")).expect(".helmignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "crds/kustomization.yaml")
    );
}

#[test]
fn the_chart_templates_use_only_the_supported_subset() {
    let templates = chart_templates();
    assert!(!templates.is_empty());
    for t in templates {
        let src = std::fs::read_to_string(&t).expect("template");
        if let Err(e) = tmpl::check(&src) {
            panic!("{}: {e}", t.display());
        }
    }
    // The renderer refuses what it does not implement.
    let data = json!({"Values": {"a": 1, "l": []}});
    for bad in [
        "{{ include \"x\" . }}",
        "{{ toYaml .Values.a | nindent 4 }}",
        "{{ .Values.a | default \"x\" }}",
        "{{/* c */}}",
        "{{ with .Values.a }}{{ end }}",
        "{{ if .Values.a }}",
        "{{ end }}",
        "{{ $x := 1 }}",
        "{{ else if .Values.a }}",
        "{{ range .Values.l }}{{ else }}{{ end }}",
        "{{ .Values.missing }}",
        "{{ Values }}",
        "{{ .Values.a }",
    ] {
        assert!(tmpl::render(bad, &data).is_err(), "rendered {bad:?}");
    }
    // Go's trimming, truth and quoting.
    let src = "a\n  {{- if .V.x }}\n  b{{ . }}\n  {{- end }}\nc {{- \"d\" -}} e";
    assert_eq!(
        tmpl::render(src, &json!({"V": {"x": 0}})).as_deref(),
        Ok("a\ncde")
    );
    assert_eq!(
        tmpl::render(
            "{{ range .l }}[{{ . | quote }}]{{ end }}",
            &json!({"l": ["x", 1, true]})
        )
        .as_deref(),
        Ok("[\"x\"][\"1\"][\"true\"]")
    );
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
        let pods = dry_run(version, port, "-k", &root().join("deploy-kubernetes"));
        assert!(
            pods.contains("clusterrole.rbac.authorization.k8s.io/molecule-operator-workspace-pods created (dry run)")
                && pods.contains("clusterrolebinding.rbac.authorization.k8s.io/molecule-operator-workspace-pods created (dry run)"),
            "kubectl {version} -k deploy-kubernetes:\n{pods}"
        );
        assert_eq!(
            pods.lines().count(),
            all.lines().count() + 2,
            "deploy-kubernetes is deploy/ plus its RBAC:\n{pods}"
        );
    }
}
