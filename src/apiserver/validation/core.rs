//! Built-in core kinds the Kubernetes workspace backend uses (Pod, Service,
//! PersistentVolumeClaim, ConfigMap; ADR 0057), validated as the real server does for built-in
//! types: the object is decoded into its k8s-openapi type, so a wrong type anywhere is an
//! error with the field's path, fields the type does not know are pruned and reported, and the
//! few required fields the server insists on are checked.

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Cause, REASON_INVALID, REASON_REQUIRED, REASON_TYPE_INVALID, Report, cause};

/// The typed check of one core kind, by kind name; `None` for kinds checked by schema only.
pub fn typed_check(kind: &str) -> Option<fn(&mut Value) -> Report> {
    match kind {
        "Pod" => Some(|o| checked::<Pod>(o, pod_required)),
        "Service" => Some(|o| checked::<Service>(o, service_required)),
        "PersistentVolumeClaim" => Some(|o| checked::<PersistentVolumeClaim>(o, pvc_required)),
        "ConfigMap" => Some(|o| checked::<ConfigMap>(o, configmap_required)),
        _ => None,
    }
}

/// Decodes `obj` as `T`: a decode error is one cause at its path; otherwise what `T` dropped is
/// pruned from `obj` (below the root, outside metadata) and reported, and `required` runs on
/// the typed value.
fn checked<T: DeserializeOwned + Serialize>(
    obj: &mut Value,
    required: fn(&T) -> Vec<Cause>,
) -> Report {
    let mut report = Report::default();
    let typed: T = match serde_path_to_error::deserialize(&*obj) {
        Ok(t) => t,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            report.invalid.push(cause(
                &path,
                format!("Invalid value: {}", e.inner()),
                REASON_TYPE_INVALID,
            ));
            return report;
        }
    };
    if let Ok(back) = serde_json::to_value(&typed)
        && let Some(map) = obj.as_object_mut()
    {
        for (k, v) in map.iter_mut() {
            if matches!(k.as_str(), "metadata" | "apiVersion" | "kind") {
                continue;
            }
            match back.get(k) {
                Some(b) => prune_lost(v, b, k, &mut report.unknown),
                None if v.is_null() => {}
                None => report.unknown.push(k.clone()),
            }
        }
        map.retain(|k, v| {
            matches!(k.as_str(), "metadata" | "apiVersion" | "kind")
                || back.get(k).is_some()
                || v.is_null()
        });
    }
    report.invalid.extend(required(&typed));
    report
}

/// Removes from `orig` the object keys `typed` does not have, recording their paths.
fn prune_lost(orig: &mut Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, typed) {
        (Value::Object(a), Value::Object(b)) => {
            let mut gone = vec![];
            for (k, v) in a.iter_mut() {
                match b.get(k) {
                    Some(w) => prune_lost(v, w, &format!("{path}.{k}"), out),
                    None if v.is_null() => {}
                    None => gone.push(k.clone()),
                }
            }
            for k in gone {
                a.remove(&k);
                out.push(format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter_mut().zip(b).enumerate() {
                prune_lost(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn required(path: &str) -> Cause {
    cause(path, "Required value".to_string(), REASON_REQUIRED)
}

fn pod_required(p: &Pod) -> Vec<Cause> {
    let mut out = vec![];
    let Some(spec) = &p.spec else {
        return vec![required("spec.containers")];
    };
    if spec.containers.is_empty() {
        out.push(required("spec.containers"));
    }
    let lists = [
        ("spec.initContainers", spec.init_containers.as_deref()),
        ("spec.containers", Some(spec.containers.as_slice())),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.unwrap_or_default().iter().enumerate() {
            if c.name.is_empty() {
                out.push(required(&format!("{list}[{i}].name")));
            }
            if c.image.as_deref().is_none_or(str::is_empty) {
                out.push(required(&format!("{list}[{i}].image")));
            }
        }
    }
    out
}

fn service_required(s: &Service) -> Vec<Cause> {
    let Some(spec) = &s.spec else {
        return vec![required("spec.ports")];
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let external = spec.type_.as_deref() == Some("ExternalName");
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut out = vec![];
    if ports.is_empty() && !headless && !external {
        out.push(required("spec.ports"));
    }
    for (i, p) in ports.iter().enumerate() {
        if !(1..=65535).contains(&p.port) {
            out.push(cause(
                &format!("spec.ports[{i}].port"),
                format!(
                    "Invalid value: {}: must be between 1 and 65535, inclusive",
                    p.port
                ),
                REASON_INVALID,
            ));
        }
    }
    out
}

fn pvc_required(c: &PersistentVolumeClaim) -> Vec<Cause> {
    let Some(spec) = &c.spec else {
        return vec![
            required("spec.accessModes"),
            required("spec.resources[storage]"),
        ];
    };
    let mut out = vec![];
    if spec.access_modes.as_deref().unwrap_or_default().is_empty() {
        out.push(required("spec.accessModes"));
    }
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    if storage.is_none() {
        out.push(required("spec.resources[storage]"));
    }
    out
}

fn configmap_required(c: &ConfigMap) -> Vec<Cause> {
    let keys = c
        .data
        .iter()
        .flat_map(|d| d.keys())
        .chain(c.binary_data.iter().flat_map(|d| d.keys()));
    keys.filter(|k| !is_config_key(k))
        .map(|k| {
            cause(
                &format!("data[{k}]"),
                format!(
                    "Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
                ),
                REASON_INVALID,
            )
        })
        .collect()
}

/// A Secret or ConfigMap key: `[-._a-zA-Z0-9]+`, at most 253 bytes.
pub fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(kind: &str, mut obj: Value) -> (Value, Report) {
        let check = typed_check(kind).expect("typed kind");
        let r = check(&mut obj);
        (obj, r)
    }

    #[test]
    fn a_valid_pod_passes_and_unknown_fields_are_pruned_with_their_paths() {
        let (obj, r) = run(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "x": 1},
                   "spec": {"containers": [{"name": "a", "image": "i", "bogus": true}], "alsoBogus": 1},
                   "status": {"phase": "Running"}}),
        );
        assert!(r.is_valid(), "{:?}", r.invalid);
        assert_eq!(
            r.unknown,
            vec!["spec.containers[0].bogus", "spec.alsoBogus"]
        );
        assert!(obj.pointer("/spec/containers/0/bogus").is_none());
        assert_eq!(obj["status"]["phase"], "Running");
        // Metadata is not the typed check's business.
        assert_eq!(obj["metadata"]["x"], 1);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let (_, r) = run(
            "Pod",
            json!({"spec": {"containers": [{"name": "a", "image": "i", "ports": [{"containerPort": "eighty"}]}]}}),
        );
        assert_eq!(r.invalid.len(), 1, "{:?}", r.invalid);
        assert_eq!(
            r.invalid[0].field,
            "spec.containers[0].ports[0].containerPort"
        );
        assert_eq!(r.invalid[0].reason, REASON_TYPE_INVALID);
    }

    #[test]
    fn required_fields_of_each_kind() {
        let fields = |r: Report| r.invalid.into_iter().map(|c| c.field).collect::<Vec<_>>();
        let (_, r) = run("Pod", json!({"spec": {"containers": [{"name": ""}]}}));
        assert_eq!(
            fields(r),
            vec!["spec.containers[0].name", "spec.containers[0].image"]
        );
        let (_, r) = run("Pod", json!({}));
        assert_eq!(fields(r), vec!["spec.containers"]);
        let (_, r) = run(
            "Service",
            json!({"spec": {"ports": [{"port": 0}, {"port": 8000}]}}),
        );
        assert_eq!(fields(r), vec!["spec.ports[0].port"]);
        let (_, r) = run("Service", json!({"spec": {"clusterIP": "None"}}));
        assert!(r.is_valid());
        let (_, r) = run("PersistentVolumeClaim", json!({"spec": {}}));
        assert_eq!(
            fields(r),
            vec!["spec.accessModes", "spec.resources[storage]"]
        );
        let (_, r) = run(
            "PersistentVolumeClaim",
            json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        );
        assert!(r.is_valid());
        let (_, r) = run("ConfigMap", json!({"data": {"ok.key": "v", "a/b": "v"}}));
        assert_eq!(fields(r), vec!["data[a/b]"]);
    }
}
