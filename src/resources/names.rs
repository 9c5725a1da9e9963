//! Names several modules agree on: annotations, labels, Secret names and routes (ADR 0044).
//! They live beside the kinds, so the controllers, the shim and the image service share them
//! without importing each other.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;

/// Annotation on a Workspace whose change restarts it (like `kubectl rollout restart`).
pub const RESTART_ANNOTATION: &str = "molecule.ai/restartedAt";

/// Label on a PluginInstall requested with a workspace's own token (value `workspace`): the
/// plugin controller holds its git source to `--plugin-git-hosts` too (ADR 0038).
pub const REQUESTED_BY_LABEL: &str = "molecule.ai/requested-by";

/// Name of the namespace-wide Secret every workspace inherits.
pub const GLOBAL_SECRET: &str = "molecule-global-secrets";

/// Name of a workspace's own Secret.
pub fn workspace_secret(workspace: &str) -> String {
    format!("{workspace}-secrets")
}

/// Keys of a Secret with a non-empty value: applied to the global Secret, what the env
/// preflight (`orgtemplate::preflight`) takes as available.
pub fn non_empty_keys(secret: &Secret) -> BTreeSet<String> {
    let data = secret.data.iter().flatten();
    let strings = secret.string_data.iter().flatten();
    data.filter(|(_, v)| !v.0.is_empty())
        .map(|(k, _)| k.clone())
        .chain(
            strings
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| k.clone()),
        )
        .collect()
}

/// The route of a PluginInstall's download for external agents (ADR 0015).
pub const DOWNLOAD_ROUTE: &str = "/registry/plugins/{namespace}/{name}/download";

/// The path of one PluginInstall's download ([`DOWNLOAD_ROUTE`] filled in).
pub fn download_path(namespace: &str, name: &str) -> String {
    DOWNLOAD_ROUTE
        .replace("{namespace}", namespace)
        .replace("{name}", name)
}

/// Annotation carrying the org template's `canvas: {x, y}` as JSON (set by OrgImport, read by
/// the canvas when no position was set through `PATCH x/y`).
pub const CANVAS_ANNOTATION: &str = "molecule.ai/canvas";

/// Annotation asking for schedules to fire now: a JSON object of schedule name → the RFC 3339
/// time of the request. A request newer than the schedule's `lastRunAt` fires it once
/// (`POST /workspaces/:id/schedules/:name/run`, ADR 0053).
pub const RUN_SCHEDULES_ANNOTATION: &str = "molecule.ai/run-schedules";

/// Label naming the OrgImport a child belongs to.
pub const ORG_LABEL: &str = "molecule.ai/org";

/// Annotation carrying, as JSON, the agent card a workspace was imported with from a bundle:
/// shown until its agent registers a card of its own (ADR 0055).
pub const AGENT_CARD_ANNOTATION: &str = "molecule.ai/agent-card";

/// Annotation naming the workspace id a bundle was exported from (ADR 0055).
pub const SOURCE_BUNDLE_ANNOTATION: &str = "molecule.ai/source-bundle-id";

/// On a Workspace an OrgImport made: its template's plugins (a JSON list of names), each of
/// which becomes a PluginInstall labelled [`ORG_PLUGIN_LABEL`] (ADR 0047, ADR 0056).
pub const ORG_PLUGINS_ANNOTATION: &str = "molecule.ai/plugins";

/// On a PluginInstall an OrgImport made for a child's `plugins:`: the plugin's name.
pub const ORG_PLUGIN_LABEL: &str = "molecule.ai/org-plugin";

/// On a PluginInstall made for a workspace (org import, REST shim): the workspace's name, when
/// it fits a label value.
pub const PLUGIN_WORKSPACE_LABEL: &str = "molecule.ai/workspace";

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn download_path_fills_the_route() {
        assert_eq!(
            download_path("team-a", "skills.pack"),
            "/registry/plugins/team-a/skills.pack/download"
        );
    }

    #[test]
    fn non_empty_keys_skip_empty_values() {
        let secret = Secret {
            data: Some(
                [
                    ("A".to_string(), ByteString(b"x".to_vec())),
                    ("EMPTY".to_string(), ByteString(vec![])),
                ]
                .into(),
            ),
            string_data: Some(
                [
                    ("B".to_string(), "y".to_string()),
                    ("BLANK".to_string(), String::new()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let keys: Vec<String> = non_empty_keys(&secret).into_iter().collect();
        assert_eq!(keys, ["A", "B"]);
        assert!(non_empty_keys(&Secret::default()).is_empty());
    }
}
