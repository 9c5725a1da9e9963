//! The API permissions the controller host needs, declared next to the code that uses them
//! (ADR 0027). `deploy/10-rbac.yaml` must grant exactly these (a unit test compares the two), and
//! the `operator` integration suite records every call a real run makes (the embedded API
//! server counts requests per client, verb and resource) and fails on any call not declared
//! here, and on any declared rule of the exercised controllers that the run never needed.
//!
//! A new controller adds its rules here, under its name in [`super::KNOWN`], and the matching
//! lines to `deploy/10-rbac.yaml`.

use std::collections::BTreeSet;

/// Where a rule is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// A ClusterRole: every namespace.
    Cluster,
    /// A Role in the operator's own namespace (the leader-election Lease).
    OperatorNamespace,
}

/// One permission, with the reason it is needed.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The controller (a name in `KNOWN`) or `host` (the controller host itself) or `registry`
    /// (the agent-facing endpoints every replica serves).
    pub controller: &'static str,
    pub scope: Scope,
    /// API group, "" for the core group.
    pub group: &'static str,
    /// Plural resource, with `/subresource` when it is one.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub why: &'static str,
}

const MOLECULE: &str = "molecule.ai";

/// Every permission of `molecule operator`.
pub const RULES: &[Rule] = &[
    Rule {
        controller: "host",
        scope: Scope::Cluster,
        group: "",
        resource: "namespaces",
        verbs: &["get"],
        why: "the default installation id is the uid of the `default` Namespace",
    },
    Rule {
        controller: "host",
        scope: Scope::OperatorNamespace,
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "list", "watch", "create", "update"],
        why: "leader election: read, watch (fast takeover), create, renew and release the Lease",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces",
        verbs: &["get", "list", "watch", "patch"],
        why: "the cache every replica keeps; a fresh read before replacing a container; the finalizer",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces/status",
        verbs: &["patch"],
        why: "phase, conditions, container identity",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "runtimes",
        verbs: &["get", "list", "watch"],
        why: "a workspace's runtime from the Runtime cache: its image and required env; known runtimes in errors; a Runtime change wakes the workspaces naming it",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch", "patch"],
        why: "env from Secrets (a change restarts the workspaces reading it); the token Secret of an external agent (server-side apply)",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "Events on transitions (a repeated Event is patched into a series)",
    },
    Rule {
        controller: "schedule",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces",
        verbs: &["get", "list", "watch"],
        why: "the shared Workspace cache; a fresh read before claiming a fire (ADR 0053)",
    },
    Rule {
        controller: "schedule",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces/status",
        verbs: &["patch"],
        why: "status.schedules: the claim of a fire, then its outcome",
    },
    Rule {
        controller: "schedule",
        scope: Scope::Cluster,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "a Warning Event when a fire fails or is skipped",
    },
    Rule {
        controller: "registry",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces",
        verbs: &["get"],
        why: "re-reading a workspace whose token hash the cache does not have yet",
    },
    Rule {
        controller: "registry",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces/status",
        verbs: &["patch"],
        why: "agent registration and heartbeats",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "plugininstalls",
        verbs: &["list", "watch"],
        why: "the PluginInstall cache: a first start carries its plugins and wakes when an announced one appears (ADR 0056)",
    },
    Rule {
        controller: "plugin",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "plugininstalls",
        verbs: &["get", "list", "watch", "patch"],
        why: "the PluginInstall controller and its finalizer; the download route for external agents",
    },
    Rule {
        controller: "plugin",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "plugininstalls/status",
        verbs: &["patch"],
        why: "installed sha, restart class, conditions; drift bookkeeping",
    },
    Rule {
        controller: "plugin",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "pluginupdates",
        verbs: &["list", "watch", "create"],
        why: "the drift queue: one PluginUpdate per new upstream sha; approvals wake the controller",
    },
    Rule {
        controller: "plugin",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "pluginupdates/status",
        verbs: &["patch"],
        why: "applied / dismissed / waiting-for-canary on each update",
    },
    Rule {
        controller: "plugin",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces",
        verbs: &["get", "list", "watch", "patch"],
        why: "the target workspace; re-install into a new container; the restart annotation for a cold change",
    },
    Rule {
        controller: "plugin",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "orgimports",
        verbs: &["get"],
        why: "the allowlist of the org a workspace was imported from",
    },
    Rule {
        controller: "plugin",
        scope: Scope::Cluster,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "Events on installs, refusals and updates",
    },
    Rule {
        controller: "org_import",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "orgimports",
        verbs: &["list", "watch", "patch"],
        why: "the OrgImport controller and its finalizer",
    },
    Rule {
        controller: "org_import",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "orgimports/status",
        verbs: &["patch"],
        why: "counts, revisions, conditions, missing env",
    },
    Rule {
        controller: "org_import",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces",
        verbs: &["list", "watch", "patch", "delete"],
        why: "children by server-side apply; prune in reconcile mode; child changes wake the import",
    },
    Rule {
        controller: "org_import",
        scope: Scope::Cluster,
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch", "patch", "delete"],
        why: "the global env for the preflight; the children's layered-env Secrets",
    },
    Rule {
        controller: "org_import",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "plugininstalls",
        verbs: &["list", "patch", "delete"],
        why: "each child's `plugins:` as PluginInstalls (server-side apply); dropped plugins uninstalled",
    },
    Rule {
        controller: "org_import",
        scope: Scope::Cluster,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "Events on imports",
    },
    Rule {
        controller: "runtime",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "runtimes",
        verbs: &["get", "list", "watch"],
        why: "the Runtime controller; auto-refresh and the refresh route list every runtime",
    },
    Rule {
        controller: "runtime",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "runtimes/status",
        verbs: &["patch"],
        why: "resolved image, digest, source, built-from sha, conditions",
    },
    Rule {
        controller: "runtime",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces",
        verbs: &["get", "list", "patch"],
        why: "rolls: a runtime's workspaces restart onto a new image one at a time",
    },
    Rule {
        controller: "runtime",
        scope: Scope::Cluster,
        group: "",
        resource: "secrets",
        verbs: &["get"],
        why: "registry pull credentials named by a Runtime",
    },
    Rule {
        controller: "runtime",
        scope: Scope::Cluster,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "Events on resolution changes and rolls",
    },
    Rule {
        controller: "channel",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces",
        verbs: &["get", "list", "watch"],
        why: "the channels of every workspace; a fresh read (resourceVersion) before a status write",
    },
    Rule {
        controller: "channel",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces/status",
        verbs: &["patch"],
        why: "status.channels and the ChannelsReady condition",
    },
    Rule {
        controller: "channel",
        scope: Scope::Cluster,
        group: "",
        resource: "secrets",
        verbs: &["get"],
        why: "a channel's bot token, from the Secret its configFrom names",
    },
    Rule {
        controller: "channel",
        scope: Scope::Cluster,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "Events when a channel fails (a new reason)",
    },
    Rule {
        controller: "reaper",
        scope: Scope::Cluster,
        group: MOLECULE,
        resource: "workspaces",
        verbs: &["list"],
        why: "the live uids, read from the API rather than a cache before removing anything",
    },
];

/// What the kubernetes workspace backend needs besides [`RULES`] (ADR 0057), granted by
/// `deploy-kubernetes/rbac-workspace-pods.yaml` (a unit test compares the two). Its Secrets are
/// covered by the Workspace controller's secrets rule.
pub const KUBERNETES_BACKEND_RULES: &[Rule] = &[
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: "",
        resource: "pods",
        verbs: &["get", "list", "watch", "create", "delete"],
        why: "the workspace Pod: read for its status, created, deleted on pause and restart; listed by the reaper; watched so a kubelet's status write wakes the controller",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: "",
        resource: "pods/log",
        verbs: &["get"],
        why: "the workspace console (the agent container's log)",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: "",
        resource: "services",
        verbs: &["list", "patch", "delete"],
        why: "the Service in front of the agent, applied server-side; listed and removed by the reaper",
    },
    Rule {
        controller: "workspace",
        scope: Scope::Cluster,
        group: "",
        resource: "persistentvolumeclaims",
        verbs: &["list", "create", "delete"],
        why: "the /configs and /workspace claims, created once and removed on delete; listed by the reaper",
    },
];

/// One granted (scope, group, resource, verb).
pub type Grant = (Scope, String, String, String);

/// The grants of the rules of `controllers` (all rules when `None`).
pub fn grants(controllers: Option<&[&str]>) -> BTreeSet<Grant> {
    grants_of(RULES, controllers)
}

/// The grants of `rules` of `controllers` (all when `None`).
pub fn grants_of(rules: &[Rule], controllers: Option<&[&str]>) -> BTreeSet<Grant> {
    rules
        .iter()
        .filter(|r| controllers.is_none_or(|c| c.contains(&r.controller)))
        .flat_map(|r| {
            r.verbs.iter().map(move |v| {
                (
                    r.scope,
                    r.group.to_string(),
                    r.resource.to_string(),
                    v.to_string(),
                )
            })
        })
        .collect()
}

/// Whether any rule grants `verb` on `group`/`resource` (in any scope).
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    RULES
        .iter()
        .any(|r| r.group == group && r.resource == resource && r.verbs.contains(&verb))
}

/// The grants of a rendered `deploy/10-rbac.yaml`: ClusterRole rules as [`Scope::Cluster`], Role
/// rules as [`Scope::OperatorNamespace`].
pub fn grants_of_manifests(yaml: &str) -> Result<BTreeSet<Grant>, String> {
    let mut out = BTreeSet::new();
    let docs: Vec<serde_json::Value> =
        crate::yaml::from_str_multiple(yaml).map_err(|e| e.to_string())?;
    for v in docs {
        let scope = match v["kind"].as_str() {
            Some("ClusterRole") => Scope::Cluster,
            Some("Role") => Scope::OperatorNamespace,
            _ => continue,
        };
        let rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule> =
            serde_json::from_value(v["rules"].clone()).map_err(|e| e.to_string())?;
        for r in rules {
            for g in r.api_groups.unwrap_or_default() {
                for res in r.resources.clone().unwrap_or_default() {
                    for verb in &r.verbs {
                        out.insert((scope, g.clone(), res.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy_rbac() -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/10-rbac.yaml");
        std::fs::read_to_string(&p).expect("deploy/10-rbac.yaml")
    }

    #[test]
    fn deploy_rbac_grants_exactly_the_declared_rules() {
        let declared = grants(None);
        let granted = grants_of_manifests(&deploy_rbac()).expect("parse deploy/10-rbac.yaml");
        let missing: Vec<_> = declared.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&declared).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "deploy/10-rbac.yaml drifted from controllers::rbac::RULES\nmissing from the manifest: {missing:?}\nnot declared in RULES: {extra:?}"
        );
    }

    #[test]
    fn the_kubernetes_overlay_grants_exactly_the_backend_rules() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy-kubernetes/rbac-workspace-pods.yaml");
        let yaml = std::fs::read_to_string(&p).expect("deploy-kubernetes/rbac-workspace-pods.yaml");
        let granted = grants_of_manifests(&yaml).expect("parse");
        assert_eq!(granted, grants_of(KUBERNETES_BACKEND_RULES, None));
        // Its Secrets ride on the base's rule.
        for verb in ["get", "list", "patch", "delete"] {
            assert!(allows("", "secrets", verb), "secrets {verb}");
        }
    }

    #[test]
    fn every_known_controller_declares_its_permissions() {
        for c in super::super::KNOWN {
            assert!(
                RULES.iter().any(|r| r.controller == *c),
                "controller {c:?} is in KNOWN but has no rules in controllers::rbac::RULES"
            );
        }
        for r in RULES {
            assert!(
                ["host", "registry"].contains(&r.controller)
                    || super::super::KNOWN.contains(&r.controller),
                "rule for unknown controller {:?}",
                r.controller
            );
            assert!(!r.why.is_empty());
        }
    }

    #[test]
    fn allows_matches_group_resource_and_verb() {
        assert!(allows("molecule.ai", "workspaces/status", "patch"));
        assert!(allows("coordination.k8s.io", "leases", "update"));
        assert!(
            allows("molecule.ai", "workspaces", "delete"),
            "org-import prune"
        );
        assert!(!allows("molecule.ai", "runtimes", "delete"));
        assert!(!allows("", "secrets", "deletecollection"));
        assert!(!allows("", "configmaps", "get"));
    }
}
