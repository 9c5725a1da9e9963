//! API discovery: legacy (`/api`, `/apis`, `/apis/<g>/<v>`) and aggregated (apidiscovery v2).

use serde_json::{Value, json};

use super::registry::{Registry, ResourceDef};

/// Content type of aggregated discovery v2; it must be exact (kubectl ignores the document otherwise).
pub const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `GET /version`. The minor picks which kubectl the gcloud dispatcher runs (pitfall 10).
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-molecule",
        "gitCommit": env!("CARGO_PKG_VERSION"), "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "rust", "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)
    })
}

/// `GET /api` (legacy).
pub fn api_versions(server_addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_addr}]})
}

/// `GET /apis` (legacy).
pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .group_versions()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| api_group(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<g>`.
pub fn api_group(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis/<g>/<v>` or `/api/v1`.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Value {
    let mut resources = vec![];
    for d in reg.in_group_version(group, version) {
        let mut r = json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind, "verbs": VERBS,
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        if d.status_subresource {
            resources.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn discovery_resource(d: &ResourceDef) -> Value {
    let rk = json!({"group": d.group, "version": d.version, "kind": d.kind});
    let mut r = json!({
        "resource": d.plural, "singularResource": d.singular,
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "responseKind": rk, "verbs": VERBS,
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    if d.status_subresource {
        r["subresources"] = json!([{"subresource": "status", "verbs": ["get", "patch", "update"], "responseKind": rk}]);
    }
    r
}

/// Aggregated discovery for the core group (`/api`) or the named groups (`/apis`).
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let mut items = vec![];
    for (g, v) in reg.group_versions() {
        if g.is_empty() != core {
            continue;
        }
        let resources: Vec<Value> = reg
            .in_group_version(&g, &v)
            .map(|d| discovery_resource(d))
            .collect();
        items.push(json!({"metadata": {"name": g}, "versions": [{"version": v, "freshness": "Current", "resources": resources}]}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_our_kinds_with_status_and_short_names() {
        let reg = Registry::new(&crate::resources::all_crds());
        let list = resource_list(&reg, "molecule.ai", "v1alpha1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .expect("r")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(
            names.contains(&"workspaces")
                && names.contains(&"workspaces/status")
                && names.contains(&"runtimes")
        );
        let agg = aggregated(&reg, false);
        let mol = agg["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|i| i["metadata"]["name"] == "molecule.ai")
            .expect("molecule");
        let ws = mol["versions"][0]["resources"]
            .as_array()
            .expect("res")
            .iter()
            .find(|r| r["resource"] == "workspaces")
            .expect("ws");
        assert_eq!(ws["shortNames"], json!(["ws"]));
        assert_eq!(ws["subresources"][0]["subresource"], "status");
        let core = aggregated(&reg, true);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let groups = api_group_list(&reg);
        assert!(
            groups["groups"]
                .as_array()
                .expect("g")
                .iter()
                .all(|g| g["name"] != "")
        );
    }
}
