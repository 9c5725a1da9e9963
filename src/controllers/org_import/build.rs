//! The pure steps of the OrgImport controller: the source of a record, the child Workspaces and
//! Secrets a plan asks for (as server-side-apply bodies), what to prune, and the next status.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use kube::ResourceExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::orgtemplate::{self, DesiredWorkspace, ExternalRef, Plan, Requirement, Source};
use crate::resources::{
    ConfigFiles, EnvFromSource, LocalObjectReference, OrgImport, OrgImportSpec, SecretReference,
    WorkspaceAccess, WorkspaceSpec,
};

pub use crate::resources::names::ORG_LABEL;
/// Label (slugs joined by `.`) and annotation (display names joined by `/`) of a child's
/// position in the tree.
pub const TREE_PATH: &str = "molecule.ai/tree-path";
/// Annotation holding the child's final plugin list as a JSON array (ADR 0010), for the plugin
/// controller.
pub const PLUGINS_ANNOTATION: &str = crate::resources::names::ORG_PLUGINS_ANNOTATION;
pub use crate::resources::names::CANVAS_ANNOTATION;
/// Annotation naming where the child is defined (`file: yaml path`).
pub const ORIGIN_ANNOTATION: &str = "molecule.ai/org-origin";
/// Inline config file with the org settings the Workspace spec has no field for.
pub const ORG_SETTINGS_FILE: &str = "org-workspace.json";

/// The Secret holding a child's layered `.env` files (ADR 0010).
pub fn env_secret_name(workspace: &str) -> String {
    format!("{workspace}-org-env")
}

/// The record's source: exactly one of dir, template, git.
pub fn source_of(spec: &OrgImportSpec) -> Result<Source, String> {
    let s = &spec.source;
    let given = [s.dir.is_some(), s.template.is_some(), s.git.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        return Err("spec.source needs exactly one of dir, template or git".into());
    }
    if let Some(d) = &s.dir {
        return Ok(Source::Dir(d.clone()));
    }
    if let Some(t) = &s.template {
        return Ok(Source::Inline(t.clone()));
    }
    let g = s.git.clone().unwrap_or_default();
    Ok(Source::Git(ExternalRef {
        repo: g.repo,
        git_ref: g.git_ref.unwrap_or_else(|| "main".into()),
        path: g
            .path
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| ".".into()),
        url: g.url,
    }))
}

/// One child of the import: a Workspace and, when its layered env is not empty, a Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub key: String,
    pub name: String,
    /// Display names from the root, joined by `/`.
    pub tree_path: String,
    pub workspace: Value,
    pub secret: Option<Value>,
    /// The workspace's plugins after the defaults union and opt-outs: each becomes a
    /// PluginInstall owned by the Workspace.
    pub plugins: Vec<String>,
}

impl Child {
    pub fn secret_name(&self) -> String {
        env_secret_name(&self.name)
    }
}

fn owner_ref(org: &OrgImport) -> Value {
    json!({
        "apiVersion": crate::resources::API_VERSION,
        "kind": "OrgImport",
        "name": org.name_any(),
        "uid": org.metadata.uid.clone().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn labels(org: &OrgImport, key: &str) -> Value {
    json!({
        ORG_LABEL: orgtemplate::tree_label(&org.name_any()),
        TREE_PATH: orgtemplate::tree_label(key),
    })
}

/// The org settings file: everything org.yaml has that the Workspace spec does not.
/// `global_memories` go to the first root only (ADR 0047).
fn settings_file(plan: &Plan, w: &DesiredWorkspace) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert("org".into(), json!(plan.name));
    doc.insert("tree_path".into(), json!(w.tree_path));
    doc.insert("plugins".into(), json!(w.plugins));
    let first_root = plan.workspaces.first().map(|f| f.key.as_str()) == Some(w.key.as_str());
    if first_root && !plan.global_memories.is_empty() {
        let memories: Vec<Value> = plan
            .global_memories
            .iter()
            .map(|m| json!({"content": m.content, "scope": m.scope}))
            .collect();
        doc.insert("global_memories".into(), Value::Array(memories));
    }
    if !w.category_routing.is_empty() {
        doc.insert("category_routing".into(), json!(w.category_routing));
    }
    if let Some(i) = w.idle_interval_seconds {
        doc.insert("idle_interval_seconds".into(), json!(i));
    }
    if let Some(c) = w.canvas {
        doc.insert("canvas".into(), json!({"x": c.x, "y": c.y}));
    }
    let mut s = serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default();
    s.push('\n');
    s
}

fn spec_of(
    org: &OrgImport,
    plan: &Plan,
    w: &DesiredWorkspace,
    secret: Option<&str>,
) -> WorkspaceSpec {
    let org_name = org.name_any();
    let mut inline = BTreeMap::new();
    for (file, text) in [
        ("system-prompt.md", &w.system_prompt),
        ("initial-prompt.md", &w.initial_prompt),
        ("idle-prompt.md", &w.idle_prompt),
    ] {
        if let Some(t) = text {
            inline.insert(file.to_string(), t.clone());
        }
    }
    inline.insert(ORG_SETTINGS_FILE.to_string(), settings_file(plan, w));
    let env_secret = env_secret_name(&orgtemplate::workspace_name(&org_name, &w.key));
    // A channel token is a key of the env Secret (the layered `.env`; ADR 0047).
    let channels = w
        .channels
        .iter()
        .cloned()
        .map(|mut c| {
            if let Some(sel) = c.config_from.as_mut().filter(|s| s.name.is_empty()) {
                sel.name = env_secret.clone();
            }
            c
        })
        .collect();
    WorkspaceSpec {
        display_name: Some(w.display_name.clone()),
        role: w.role.clone(),
        runtime: Some(w.runtime.clone()),
        tier: w.tier,
        model: w.model.clone(),
        parent_ref: w.parent_key.as_ref().map(|k| LocalObjectReference {
            name: orgtemplate::workspace_name(&org_name, k),
        }),
        files: Some(ConfigFiles {
            files_dir: w.files_dir.clone(),
            inline,
        }),
        env_from: secret
            .map(|name| {
                vec![EnvFromSource {
                    secret_ref: SecretReference {
                        name: name.to_string(),
                        optional: false,
                    },
                    prefix: None,
                }]
            })
            .unwrap_or_default(),
        // Plain names are checked again by the Workspace controller (`requiredEnv`); `any_of`
        // groups only by the import's preflight.
        required_env: w
            .required_env
            .iter()
            .filter_map(|r| match r {
                Requirement::Name(n) => Some(n.clone()),
                Requirement::AnyOf(_) => None,
            })
            .collect(),
        workspace_dir: w.workspace_dir.clone(),
        // The plan binds a dir only with read_only or read_write (ADR 0047).
        workspace_access: match (w.workspace_dir.as_ref(), w.workspace_access.as_deref()) {
            (Some(_), Some("read-write")) => Some(WorkspaceAccess::ReadWrite),
            (Some(_), _) => Some(WorkspaceAccess::ReadOnly),
            (None, _) => None,
        },
        max_concurrent_tasks: w.max_concurrent_tasks,
        url: w.url.clone(),
        // What goes into the generated config.yaml (ADR 0048).
        initial_prompt: w.initial_prompt.clone(),
        idle_prompt: w.idle_prompt.clone(),
        idle_interval_seconds: w.idle_prompt.as_ref().and(w.idle_interval_seconds),
        category_routing: routing(&w.category_routing),
        schedules: w.schedules.clone(),
        channels,
        ..Default::default()
    }
}

/// `category_routing` as role lists: a single name is a list of one; anything else is dropped.
fn routing(r: &BTreeMap<String, Value>) -> BTreeMap<String, Vec<String>> {
    r.iter()
        .filter_map(|(k, v)| {
            let roles: Vec<String> = match v {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                _ => return None,
            };
            (!roles.is_empty()).then(|| (k.clone(), roles))
        })
        .collect()
}

/// The children `plan` asks for, parents first.
/// The keys of the workspaces `spec.exclude` takes out of the org: the named records and
/// their subtrees (a child cannot be created under a parent that does not exist).
pub fn excluded(org: &OrgImport, plan: &Plan) -> BTreeSet<String> {
    let org_name = org.name_any();
    let mut out: BTreeSet<String> = plan
        .workspaces
        .iter()
        .filter(|w| {
            org.spec
                .exclude
                .contains(&orgtemplate::workspace_name(&org_name, &w.key))
        })
        .map(|w| w.key.clone())
        .collect();
    loop {
        let more: Vec<String> = plan
            .workspaces
            .iter()
            .filter(|w| !out.contains(&w.key))
            .filter(|w| w.parent_key.as_ref().is_some_and(|p| out.contains(p)))
            .map(|w| w.key.clone())
            .collect();
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}

pub fn children(org: &OrgImport, plan: &Plan) -> Vec<Child> {
    let org_name = org.name_any();
    let ns = org.namespace().unwrap_or_else(|| "default".into());
    plan.workspaces
        .iter()
        .map(|w| {
            let name = orgtemplate::workspace_name(&org_name, &w.key);
            let secret_name = env_secret_name(&name);
            let secret = (!w.env.0.is_empty()).then(|| {
                let data: serde_json::Map<String, Value> = w
                    .env
                    .0
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            json!(base64::engine::general_purpose::STANDARD.encode(v)),
                        )
                    })
                    .collect();
                json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": secret_name,
                        "namespace": ns,
                        "labels": labels(org, &w.key),
                        "ownerReferences": [owner_ref(org)],
                    },
                    "type": "Opaque",
                    "data": data,
                })
            });
            let spec = spec_of(org, plan, w, secret.as_ref().map(|_| secret_name.as_str()));
            let tree_path = w.tree_path.join("/");
            let mut annotations = serde_json::Map::new();
            annotations.insert(TREE_PATH.into(), json!(tree_path));
            annotations.insert(
                PLUGINS_ANNOTATION.into(),
                json!(serde_json::to_string(&w.plugins).unwrap_or_else(|_| "[]".into())),
            );
            annotations.insert(ORIGIN_ANNOTATION.into(), json!(w.origin));
            if let Some(c) = w.canvas {
                annotations.insert(
                    CANVAS_ANNOTATION.into(),
                    json!(json!({"x": c.x, "y": c.y}).to_string()),
                );
            }
            let workspace = json!({
                "apiVersion": crate::resources::API_VERSION,
                "kind": "Workspace",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": labels(org, &w.key),
                    "annotations": annotations,
                    "ownerReferences": [owner_ref(org)],
                },
                "spec": serde_json::to_value(&spec).unwrap_or(Value::Null),
            });
            Child {
                key: w.key.clone(),
                name,
                tree_path,
                workspace,
                secret,
                plugins: w.plugins.clone(),
            }
        })
        .collect()
}

/// Digest of what the children look like, without any env value (env changes show up as
/// updated Secrets instead): a change marks a new import pass.
pub fn digest(children: &[Child]) -> String {
    let mut h = Sha256::new();
    for c in children {
        h.update(c.workspace.to_string().as_bytes());
        if let Some(s) = &c.secret {
            let keys: Vec<&String> = s["data"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            h.update(json!(keys).to_string().as_bytes());
        }
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..12])
}

/// Whether a Secret name is a child's env Secret.
pub fn is_env_secret(name: &str) -> bool {
    name.ends_with("-org-env")
}

/// Tree paths of the children, plus those of owned children kept outside the tree, sorted.
pub fn inventory(children: &[Child], existing: &[Existing], kept: &[String]) -> Vec<String> {
    let mut out: Vec<String> = children.iter().map(|c| c.tree_path.clone()).collect();
    out.extend(
        existing
            .iter()
            .filter(|e| kept.contains(&e.name))
            .map(|e| e.tree_path.clone().unwrap_or_else(|| e.name.clone())),
    );
    out.sort();
    out
}

/// The Ready message and Imported Event of a pass.
pub fn summary(c: &crate::resources::OrgImportCounts, kept: usize) -> String {
    let mut s = format!(
        "{} workspaces: {} created, {} updated, {} unchanged, {} pruned, {} skipped (spawning: false)",
        c.desired, c.created, c.updated, c.unchanged, c.pruned, c.skipped
    );
    if c.refused > 0 {
        s.push_str(&format!(
            ", {} refused by the template policy (condition PolicyRefused)",
            c.refused
        ));
    }
    if kept > 0 {
        s.push_str(&format!(", {kept} kept outside the tree (mode merge)"));
    }
    s
}

/// A child record that exists in the namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct Existing {
    pub name: String,
    /// Owned by this import (an ownerReference with its uid).
    pub owned: bool,
    /// The tree path annotation (display names).
    pub tree_path: Option<String>,
}

/// Names some child wants that another owner already uses: nothing may be applied.
pub fn conflicts(children: &[Child], existing: &[Existing]) -> Vec<String> {
    let foreign: BTreeSet<&str> = existing
        .iter()
        .filter(|e| !e.owned)
        .map(|e| e.name.as_str())
        .collect();
    children
        .iter()
        .filter(|c| foreign.contains(c.name.as_str()))
        .map(|c| c.name.clone())
        .collect()
}

/// What to do with owned children that left the tree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prune {
    /// Delete these (mode `reconcile`).
    pub delete: Vec<String>,
    /// Keep these (mode `merge`, or the empty-set guard).
    pub keep: Vec<String>,
    /// Reconcile mode, but the desired set is empty: nothing is deleted (ADR 0010).
    pub guarded: bool,
}

/// Owned children not in `children`; deleted only in reconcile mode and never all of them
/// because the desired set came out empty.
pub fn prune(reconcile: bool, children: &[Child], existing: &[Existing]) -> Prune {
    let desired: BTreeSet<&str> = children.iter().map(|c| c.name.as_str()).collect();
    let stale: Vec<String> = existing
        .iter()
        .filter(|e| e.owned && !desired.contains(e.name.as_str()))
        .map(|e| e.name.clone())
        .collect();
    match (reconcile, children.is_empty()) {
        (true, false) => Prune {
            delete: stale,
            ..Default::default()
        },
        (true, true) => Prune {
            guarded: !stale.is_empty(),
            keep: stale,
            ..Default::default()
        },
        (false, _) => Prune {
            keep: stale,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{OrgImportMode, OrgImportSource};

    fn org() -> OrgImport {
        let mut o = OrgImport::new(
            "demo",
            OrgImportSpec {
                source: OrgImportSource {
                    dir: Some("demo".into()),
                    ..Default::default()
                },
                mode: OrgImportMode::Merge,
                ..Default::default()
            },
        );
        o.metadata.namespace = Some("team".into());
        o.metadata.uid = Some("uid-1".into());
        o
    }

    fn plan(yaml: &str) -> Plan {
        let tmp = tempfile::tempdir().expect("tmp");
        let opts = crate::orgtemplate::Options {
            root: tmp.path().to_path_buf(),
            external: crate::orgtemplate::ExternalConfig::for_root(tmp.path()),
            persona_root: None,
            process_env: false,
        };
        crate::orgtemplate::load_plan(&opts, &Source::Inline(yaml.into())).expect("plan")
    }

    const TREE: &str = r#"
name: Demo Org
defaults: {runtime: echo, plugins: [memory, search]}
workspaces:
  - name: Lead
    system_prompt: lead well
    canvas: {x: 1, y: 2}
    children:
      - name: Analyst
        tier: 3
        plugins: ["!search"]
        required_env: [ANALYST_KEY, {any_of: [A, B]}]
        workspace_dir: /srv/analyst
        workspace_access: read_only
"#;

    #[test]
    fn sources_need_exactly_one_kind() {
        let mut spec = org().spec;
        assert_eq!(source_of(&spec), Ok(Source::Dir("demo".into())));
        spec.source.template = Some("x".into());
        assert!(source_of(&spec).is_err());
        spec.source = Default::default();
        assert!(source_of(&spec).is_err());
        spec.source.git = Some(crate::resources::GitSource {
            repo: "molecule-ai/orgs".into(),
            ..Default::default()
        });
        let Ok(Source::Git(r)) = source_of(&spec) else {
            panic!("git")
        };
        assert_eq!((r.git_ref.as_str(), r.path.as_str()), ("main", "."));
    }

    #[test]
    fn excluded_records_take_their_subtree_and_nothing_else() {
        let p = plan(TREE);
        let names = |o: &OrgImport| -> Vec<String> {
            let keep = excluded(o, &p);
            let mut q = p.clone();
            q.workspaces.retain(|w| !keep.contains(&w.key));
            children(o, &q).into_iter().map(|c| c.name).collect()
        };
        let all = names(&org());
        assert_eq!(all.len(), 2, "{all:?}");
        let lead = all[0].clone();
        let analyst = all[1].clone();
        let mut o = org();
        // The leaf alone.
        o.spec.exclude = vec![analyst.clone()];
        assert_eq!(names(&o), vec![lead.clone()]);
        // The parent takes its child along.
        o.spec.exclude = vec![lead.clone()];
        assert!(names(&o).is_empty());
        // A name that is not in the org changes nothing (nor does another org's record).
        o.spec.exclude = vec!["other.lead".into(), "demo".into()];
        assert_eq!(names(&o), vec![lead, analyst]);
    }

    #[test]
    fn children_carry_owner_labels_parent_plugins_and_settings() {
        let c = children(&org(), &plan(TREE));
        assert_eq!(c.len(), 2);
        let lead = &c[0].workspace;
        let analyst = &c[1].workspace;
        assert_eq!(c[1].name, "demo.lead.analyst");
        assert_eq!(analyst["metadata"]["namespace"], "team");
        assert_eq!(analyst["metadata"]["labels"][ORG_LABEL], "demo");
        assert_eq!(analyst["metadata"]["labels"][TREE_PATH], "lead.analyst");
        assert_eq!(
            analyst["metadata"]["annotations"][TREE_PATH],
            "Lead/Analyst"
        );
        assert_eq!(
            analyst["metadata"]["annotations"][PLUGINS_ANNOTATION],
            "[\"memory\"]"
        );
        assert_eq!(
            lead["metadata"]["annotations"][CANVAS_ANNOTATION],
            "{\"x\":1.0,\"y\":2.0}"
        );
        let owner = &analyst["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("OrgImport"), Some("uid-1"))
        );
        assert_eq!(owner["controller"], true);
        assert_eq!(analyst["spec"]["parentRef"]["name"], "demo.lead");
        assert!(lead["spec"].get("parentRef").is_none());
        assert_eq!(analyst["spec"]["tier"], 3);
        assert_eq!(analyst["spec"]["workspaceAccess"], "read-only");
        assert_eq!(analyst["spec"]["requiredEnv"], json!(["ANALYST_KEY"]));
        assert_eq!(
            lead["spec"]["files"]["inline"]["system-prompt.md"],
            "lead well"
        );
        let settings: Value = serde_json::from_str(
            analyst["spec"]["files"]["inline"][ORG_SETTINGS_FILE]
                .as_str()
                .expect("settings"),
        )
        .expect("json");
        assert_eq!(settings["org"], "Demo Org");
        assert_eq!(settings["tree_path"], json!(["Lead", "Analyst"]));
        assert!(c.iter().all(|c| c.secret.is_none()));
        // The spec round-trips into the typed Workspace.
        let typed: crate::resources::Workspace =
            serde_json::from_value(analyst.clone()).expect("typed");
        assert_eq!(typed.spec.display_name.as_deref(), Some("Analyst"));
    }

    #[test]
    fn layered_env_becomes_an_owned_secret_referenced_by_env_from() {
        let mut p = plan(TREE);
        p.workspaces[1]
            .env
            .0
            .insert("ANALYST_KEY".into(), "s3cret".into());
        let c = children(&org(), &p);
        let s = c[1].secret.as_ref().expect("secret");
        assert_eq!(s["metadata"]["name"], "demo.lead.analyst-org-env");
        assert_eq!(s["data"]["ANALYST_KEY"], "czNjcmV0");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            c[1].workspace["spec"]["envFrom"][0]["secretRef"]["name"],
            "demo.lead.analyst-org-env"
        );
        // The digest ignores env values but sees names and spec changes.
        let d1 = digest(&c);
        p.workspaces[1]
            .env
            .0
            .insert("ANALYST_KEY".into(), "other".into());
        assert_eq!(digest(&children(&org(), &p)), d1);
        p.workspaces[1].env.0.insert("NEW".into(), "x".into());
        assert_ne!(digest(&children(&org(), &p)), d1);
        assert!(!format!("{:?}", p.workspaces[1]).contains("s3cret"));
    }

    fn ex(name: &str, owned: bool) -> Existing {
        Existing {
            name: name.into(),
            owned,
            tree_path: None,
        }
    }

    #[test]
    fn prune_touches_only_owned_leftovers_and_never_empties_everything() {
        let c = children(&org(), &plan(TREE));
        let existing = vec![
            ex("demo.lead", true),
            ex("demo.lead.analyst", true),
            ex("demo.lead.writer", true),
            ex("someone-elses", false),
        ];
        let p = prune(true, &c, &existing);
        assert_eq!(p.delete, ["demo.lead.writer"]);
        let p = prune(false, &c, &existing);
        assert_eq!(
            (p.delete.len(), p.keep.clone()),
            (0, vec!["demo.lead.writer".to_string()])
        );
        let p = prune(true, &[], &existing);
        assert!(p.delete.is_empty() && p.guarded, "{p:?}");
        let mut kept = existing.clone();
        kept[2].tree_path = Some("Lead/Writer".into());
        assert_eq!(
            inventory(&c, &kept, &["demo.lead.writer".to_string()]),
            ["Lead", "Lead/Analyst", "Lead/Writer"]
        );
        let counts = crate::resources::OrgImportCounts {
            desired: 2,
            created: 1,
            unchanged: 1,
            skipped: 3,
            ..Default::default()
        };
        assert_eq!(
            summary(&counts, 1),
            "2 workspaces: 1 created, 0 updated, 1 unchanged, 0 pruned, 3 skipped (spawning: false), 1 kept outside the tree (mode merge)"
        );
        assert_eq!(conflicts(&c, &[ex("demo.lead", false)]), ["demo.lead"]);
        assert!(conflicts(&c, &existing).is_empty());
    }

    #[test]
    fn prompts_and_routing_reach_the_workspace_spec() {
        let yaml = "name: P\ndefaults: {runtime: echo, idle_prompt: anything new?, category_routing: {bugs: qa, docs: [writer, lead], odd: 3}}\nworkspaces:\n  - name: Lead\n    initial_prompt: hello\n    idle_interval_seconds: 60\n";
        let c = children(&org(), &plan(yaml));
        let spec = &c[0].workspace["spec"];
        assert_eq!(spec["initialPrompt"], "hello");
        assert_eq!(spec["idlePrompt"], "anything new?");
        assert_eq!(spec["idleIntervalSeconds"], 60);
        assert_eq!(
            spec["categoryRouting"],
            json!({"bugs": ["qa"], "docs": ["writer", "lead"]})
        );
    }

    #[test]
    fn schedules_channels_memories_and_binds_reach_the_spec() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("o")).expect("mkdir");
        std::fs::write(
            tmp.path().join("o/org.yaml"),
            r##"
name: Carry
global_memories: [{content: ship on thursdays}]
workspaces:
  - name: Lead
    workspace_dir: /srv/lead
    channels:
      - type: telegram
        config: {bot_token: "${TG_TOKEN}", chat_id: "-1"}
    schedules: [{name: daily, cron_expr: "@daily", prompt: report}]
    children:
      - name: Dev
        workspace_dir: /srv/dev
        workspace_access: read_write
"##,
        )
        .expect("write");
        std::fs::write(tmp.path().join("o/.env"), "TG_TOKEN=1:x\n").expect("env");
        let opts = crate::orgtemplate::Options {
            root: tmp.path().to_path_buf(),
            external: crate::orgtemplate::ExternalConfig::for_root(tmp.path()),
            persona_root: None,
            process_env: false,
        };
        let p = crate::orgtemplate::load_plan(&opts, &Source::Dir("o".into())).expect("plan");
        let c = children(&org(), &p);
        let lead = &c[0].workspace["spec"];
        assert_eq!(
            lead["channels"][0]["configFrom"],
            json!({"name": "demo.lead-org-env", "key": "TG_TOKEN"})
        );
        assert_eq!(lead["channels"][0]["config"], json!({"chat_id": "-1"}));
        assert_eq!(
            lead["schedules"],
            json!([{"name": "daily", "cronExpr": "@daily", "prompt": "report"}])
        );
        // Access none (the default): no bind at all.
        assert!(lead.get("workspaceDir").is_none() && lead.get("workspaceAccess").is_none());
        let dev = &c[1].workspace["spec"];
        assert_eq!(
            (&dev["workspaceDir"], &dev["workspaceAccess"]),
            (&json!("/srv/dev"), &json!("read-write"))
        );
        let settings = |w: &Value| -> Value {
            serde_json::from_str(w["files"]["inline"][ORG_SETTINGS_FILE].as_str().expect("s"))
                .expect("json")
        };
        assert_eq!(
            settings(lead)["global_memories"],
            json!([{"content": "ship on thursdays", "scope": "GLOBAL"}])
        );
        assert!(settings(dev).get("global_memories").is_none());
        // The typed Workspace reads it back.
        let typed: crate::resources::Workspace =
            serde_json::from_value(c[0].workspace.clone()).expect("typed");
        assert_eq!(typed.spec.channels[0].type_, "telegram");
    }
}
