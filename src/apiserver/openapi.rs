//! OpenAPI v3 documents generated from the served schemas, so that `kubectl apply` finds the
//! `fieldValidation` parameter (server-side validation) and `kubectl explain` works.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::registry::{Registry, ResourceDef};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The documents, built once at start.
#[derive(Debug)]
pub struct OpenApi {
    /// Keyed by path under /openapi/v3/ (e.g. `apis/molecule.ai/v1alpha1`, `api/v1`).
    pub docs: BTreeMap<String, (String, Value)>,
}

fn schema_name(d: &ResourceDef) -> String {
    let group = if d.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else {
        d.group.split('.').rev().collect::<Vec<_>>().join(".")
    };
    format!("{group}.{}.{}", d.version, d.kind)
}

fn object_meta_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "properties": {
            "name": s("Name must be unique within a namespace."),
            "generateName": s("Optional prefix used by the server to generate a unique name."),
            "namespace": s("Namespace defines the space within which each name must be unique."),
            "uid": s("UID is the unique in time and space value for this object."),
            "resourceVersion": s("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": s("CreationTimestamp is a timestamp representing the server time when this object was created."),
            "deletionTimestamp": s("DeletionTimestamp is the time after which this resource will be deleted."),
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Map of string keys and values for organizing and categorizing objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Unstructured key value map stored with a resource."},
            "finalizers": {"type": "array", "items": {"type": "string"}, "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "description": "List of objects depended by this object.", "items": {"type": "object", "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}, "uid": {"type": "string"},
                "controller": {"type": "boolean"}, "blockOwnerDeletion": {"type": "boolean"}}, "required": ["apiVersion", "kind", "name", "uid"]}},
            "managedFields": {"type": "array", "items": {"type": "object"}, "description": "Field ownership of server-side apply."}
        }
    })
}

fn gvk(d: &ResourceDef) -> Value {
    json!({"group": d.group, "version": d.version, "kind": d.kind})
}

fn resource_schema(d: &ResourceDef) -> Value {
    let mut s = d.schema.clone();
    if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "description": "Standard object's metadata."}),
        );
    }
    s["x-kubernetes-group-version-kind"] = json!([gvk(d)]);
    s
}

fn operations(d: &ResourceDef, item: bool) -> Value {
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(d))});
    let content = |r: &Value| json!({"application/json": {"schema": r}});
    let field_validation = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
        "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."});
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        field_validation
    ]);
    let ok = json!({"200": {"description": "OK", "content": content(&reference)}});
    if item {
        json!({
            "get": {"x-kubernetes-group-version-kind": gvk(d), "x-kubernetes-action": "get", "responses": ok},
            "put": {"x-kubernetes-group-version-kind": gvk(d), "x-kubernetes-action": "put", "parameters": params,
                    "requestBody": {"content": content(&reference)}, "responses": ok},
            "patch": {"x-kubernetes-group-version-kind": gvk(d), "x-kubernetes-action": "patch", "parameters": params,
                      "requestBody": {"content": {
                          "application/apply-patch+yaml": {"schema": {"type": "object"}},
                          "application/json-patch+json": {"schema": {"type": "object"}},
                          "application/merge-patch+json": {"schema": {"type": "object"}}}},
                      "responses": ok},
            "delete": {"x-kubernetes-group-version-kind": gvk(d), "x-kubernetes-action": "delete", "responses": {"200": {"description": "OK"}}}
        })
    } else {
        json!({
            "get": {"x-kubernetes-group-version-kind": gvk(d), "x-kubernetes-action": "list", "responses": {"200": {"description": "OK"}}},
            "post": {"x-kubernetes-group-version-kind": gvk(d), "x-kubernetes-action": "post", "parameters": params,
                     "requestBody": {"content": content(&reference)}, "responses": ok}
        })
    }
}

impl OpenApi {
    /// Builds one document per group-version.
    pub fn build(reg: &Registry) -> Self {
        let mut docs = BTreeMap::new();
        for (g, v) in reg.group_versions() {
            let prefix = if g.is_empty() {
                format!("/api/{v}")
            } else {
                format!("/apis/{g}/{v}")
            };
            let mut paths = Map::new();
            let mut schemas = Map::new();
            schemas.insert(OBJECT_META.into(), object_meta_schema());
            for d in reg.in_group_version(&g, &v) {
                let base = if d.namespaced {
                    format!("{prefix}/namespaces/{{namespace}}/{}", d.plural)
                } else {
                    format!("{prefix}/{}", d.plural)
                };
                paths.insert(base.clone(), operations(d, false));
                paths.insert(format!("{base}/{{name}}"), operations(d, true));
                if d.status_subresource {
                    paths.insert(format!("{base}/{{name}}/status"), operations(d, true));
                }
                schemas.insert(schema_name(d), resource_schema(d));
            }
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.32.0"},
                "paths": paths,
                "components": {"schemas": schemas}
            });
            let hash = hex::encode(Sha256::digest(doc.to_string().as_bytes())).to_uppercase();
            let key = prefix.trim_start_matches('/').to_string();
            docs.insert(key, (hash, doc));
        }
        OpenApi { docs }
    }

    /// `GET /openapi/v3`.
    pub fn root(&self) -> Value {
        let paths: Map<String, Value> = self
            .docs
            .iter()
            .map(|(k, (hash, _))| {
                (
                    k.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{k}?hash={hash}")}),
                )
            })
            .collect();
        json!({"paths": paths})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operation_has_gvk_object_and_field_validation() {
        let reg = Registry::new(&crate::resources::all_crds());
        let api = OpenApi::build(&reg);
        let (_, doc) = api.docs.get("apis/molecule.ai/v1alpha1").expect("doc");
        let patch = &doc["paths"]["/apis/molecule.ai/v1alpha1/namespaces/{namespace}/workspaces/{name}"]
            ["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Workspace"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .expect("p")
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(
            patch["requestBody"]["content"]
                .get("application/strategic-merge-patch+json")
                .is_none()
        );
        let schema = &doc["components"]["schemas"]["ai.molecule.v1alpha1.Workspace"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Workspace"
        );
        assert!(schema["properties"]["spec"]["properties"]["tier"].is_object());
        assert!(api.docs.contains_key("api/v1"));
        assert!(
            api.root()["paths"]["apis/molecule.ai/v1alpha1"]["serverRelativeURL"]
                .as_str()
                .expect("url")
                .contains("?hash=")
        );
        // Cluster-scoped kinds have no namespace segment.
        assert!(
            doc["paths"]
                .get("/apis/molecule.ai/v1alpha1/runtimes/{name}")
                .is_some()
        );
    }
}
