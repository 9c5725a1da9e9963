//! The kinds the embedded API server serves: our CRDs plus the core kinds kubectl and the
//! controllers need (Namespace, Secret, Event in two API groups, Lease), and the ones the
//! Kubernetes workspace backend creates (Pod, Service, PersistentVolumeClaim, ConfigMap; ADR
//! 0057). Like envtest, the server stores these and runs nothing.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

/// How a served kind maps onto its stored form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Stored as served.
    Plain,
    /// `events.k8s.io/v1` Event, stored as a core/v1 Event (one store, two views).
    EventsV1,
}

/// One printer column of `kubectl get`.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// Everything the server knows about one resource.
#[derive(Debug)]
pub struct ResourceDef {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// A custom resource (strategic merge patch is refused for these).
    pub custom: bool,
    /// The structural schema of the whole object (openAPIV3Schema).
    pub schema: Value,
    pub columns: Vec<Column>,
    /// Key of the shared storage: two views of one kind share it.
    pub storage: Arc<str>,
    pub view: View,
    /// Field selectors this kind supports, as (field label, JSON pointer into the stored object).
    pub field_selectors: Vec<(&'static str, &'static str)>,
    /// Object names are DNS-1123 labels (namespaces) rather than subdomains.
    pub label_names: bool,
}

impl ResourceDef {
    /// `molecule.ai/v1alpha1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `workspaces.molecule.ai` or `secrets`: how the real server names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    /// `Workspace.molecule.ai`, as used in Invalid messages.
    pub fn kind_qualified(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// All served resources.
#[derive(Debug)]
pub struct Registry {
    pub defs: Vec<Arc<ResourceDef>>,
}

impl Registry {
    /// The registry for the given CRDs plus the built-in core kinds.
    pub fn new(crds: &[CustomResourceDefinition]) -> Self {
        let mut defs: Vec<Arc<ResourceDef>> =
            crds.iter().filter_map(def_from_crd).map(Arc::new).collect();
        defs.extend(core_defs().into_iter().map(Arc::new));
        defs.extend(workload_defs().into_iter().map(Arc::new));
        Registry { defs }
    }

    /// Looks a resource up by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    /// Every (group, version) served, groups in registration order.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = vec![];
        for d in &self.defs {
            let gv = (d.group.clone(), d.version.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
        out
    }

    /// Resources of one group-version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceDef>> {
        self.defs
            .iter()
            .filter(move |d| d.group == group && d.version == version)
    }

    /// The view through which a stored object of `storage` is addressed by uid (first match).
    pub fn by_storage(&self, storage: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| &*d.storage == storage && d.view == View::Plain)
            .cloned()
    }
}

const CR_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
];

fn def_from_crd(crd: &CustomResourceDefinition) -> Option<ResourceDef> {
    let version = crd.spec.versions.iter().find(|v| v.served)?;
    let schema =
        serde_json::to_value(version.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()?;
    let names = &crd.spec.names;
    let mut columns = vec![];
    for c in version
        .additional_printer_columns
        .as_deref()
        .unwrap_or_default()
    {
        columns.push(Column {
            name: c.name.clone(),
            type_: c.type_.clone(),
            format: c.format.clone().unwrap_or_default(),
            description: c.description.clone().unwrap_or_default(),
            priority: c.priority.map(i64::from).unwrap_or(0),
            json_path: c.json_path.clone(),
        });
    }
    let status_subresource = version
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .is_some();
    Some(ResourceDef {
        group: crd.spec.group.clone(),
        version: version.name.clone(),
        kind: names.kind.clone(),
        plural: names.plural.clone(),
        singular: names
            .singular
            .clone()
            .unwrap_or_else(|| names.kind.to_lowercase()),
        short_names: names.short_names.clone().unwrap_or_default(),
        categories: names.categories.clone().unwrap_or_default(),
        namespaced: crd.spec.scope == "Namespaced",
        status_subresource,
        custom: true,
        schema,
        columns,
        storage: Arc::from(format!("{}/{}", crd.spec.group, names.plural)),
        view: View::Plain,
        field_selectors: CR_FIELDS.to_vec(),
        label_names: false,
    })
}

fn col(name: &str, type_: &str, json_path: &str, priority: i64, description: &str) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        format: String::new(),
        description: description.into(),
        priority,
        json_path: json_path.into(),
    }
}

fn object_schema(description: &str, properties: Value) -> Value {
    let mut props = properties;
    if let Some(m) = props.as_object_mut() {
        m.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        m.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        m.insert(
            "metadata".into(),
            json!({"type": "object", "description": "Standard object's metadata."}),
        );
    }
    json!({"type": "object", "description": description, "properties": props})
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn object_reference() -> Value {
    json!({"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"},
        "namespace": {"type": "string"}, "uid": {"type": "string"}, "resourceVersion": {"type": "string"},
        "fieldPath": {"type": "string"}}})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time", "nullable": true})
}

fn series(count_time: &str) -> Value {
    json!({"type": "object", "properties": {"count": {"type": "integer", "format": "int32"}, count_time: time()}})
}

/// An object part whose fields the kind's k8s-openapi type checks (see
/// [`super::validation::typed_check`]), so the schema keeps them as they are.
fn typed_part(description: &str) -> Value {
    json!({"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": true})
}

/// A core kind stored as served, with the metadata field selectors plus `extra`.
#[allow(clippy::too_many_arguments)]
fn core_kind(
    kind: &str,
    plural: &str,
    short_names: &[&str],
    status_subresource: bool,
    schema: Value,
    columns: Vec<Column>,
    extra_fields: &[(&'static str, &'static str)],
) -> ResourceDef {
    let mut field_selectors = CR_FIELDS.to_vec();
    field_selectors.extend_from_slice(extra_fields);
    ResourceDef {
        group: String::new(),
        version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: if matches!(kind, "Pod" | "Service") {
            vec!["all".into()]
        } else {
            vec![]
        },
        namespaced: true,
        status_subresource,
        custom: false,
        schema,
        columns,
        storage: Arc::from(format!("core/{plural}")),
        view: View::Plain,
        field_selectors,
        label_names: false,
    }
}

/// Pod, Service, PersistentVolumeClaim and ConfigMap (ADR 0057).
fn workload_defs() -> Vec<ResourceDef> {
    let age = || col("Age", "date", ".metadata.creationTimestamp", 0, "");
    vec![
        core_kind(
            "Pod",
            "pods",
            &["po"],
            true,
            object_schema(
                "Pod is a collection of containers that can run on a host.",
                json!({"spec": typed_part("Specification of the desired behavior of the pod."),
                       "status": typed_part("Most recently observed status of the pod.")}),
            ),
            vec![
                col("Name", "string", ".metadata.name", 0, ""),
                col("Ready", "string", "#podready", 0, "Ready containers of all"),
                col(
                    "Status",
                    "string",
                    "#podstatus",
                    0,
                    "The pod's reason or phase",
                ),
                col("Restarts", "integer", "#restarts", 0, "Container restarts"),
                age(),
                col("IP", "string", ".status.podIP", 1, ""),
                col("Node", "string", ".spec.nodeName", 1, ""),
            ],
            &[
                ("spec.nodeName", "/spec/nodeName"),
                ("status.phase", "/status/phase"),
            ],
        ),
        core_kind(
            "Service",
            "services",
            &["svc"],
            true,
            object_schema(
                "Service is a named abstraction of software service.",
                json!({"spec": typed_part("Spec defines the behavior of a service."),
                       "status": typed_part("Most recently observed status of the service.")}),
            ),
            vec![
                col("Name", "string", ".metadata.name", 0, ""),
                col("Type", "string", ".spec.type", 0, ""),
                col("Cluster-IP", "string", ".spec.clusterIP", 0, ""),
                col("Port(s)", "string", "#ports", 0, ""),
                age(),
                col("Selector", "string", "#selector", 1, ""),
            ],
            &[],
        ),
        core_kind(
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            &["pvc"],
            true,
            object_schema(
                "PersistentVolumeClaim is a user's request for and claim to a persistent volume.",
                json!({"spec": typed_part("The desired characteristics of a volume."),
                       "status": typed_part("The current status of the claim.")}),
            ),
            vec![
                col("Name", "string", ".metadata.name", 0, ""),
                col("Status", "string", ".status.phase", 0, ""),
                col("Volume", "string", ".spec.volumeName", 0, ""),
                col("Capacity", "string", ".status.capacity.storage", 0, ""),
                col("Access Modes", "string", "#accessmodes", 0, ""),
                col("StorageClass", "string", ".spec.storageClassName", 0, ""),
                age(),
            ],
            &[],
        ),
        core_kind(
            "ConfigMap",
            "configmaps",
            &["cm"],
            false,
            object_schema(
                "ConfigMap holds configuration data for pods to consume.",
                json!({"data": string_map(),
                       "binaryData": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
                       "immutable": {"type": "boolean"}}),
            ),
            vec![
                col("Name", "string", ".metadata.name", 0, ""),
                col("Data", "integer", "#datacount", 0, "The number of keys"),
                age(),
            ],
            &[],
        ),
    ]
}

fn core_defs() -> Vec<ResourceDef> {
    let events_storage: Arc<str> = Arc::from("core/events");
    let event_fields: Vec<(&str, &str)> = vec![
        ("metadata.name", "/metadata/name"),
        ("metadata.namespace", "/metadata/namespace"),
        ("involvedObject.kind", "/involvedObject/kind"),
        ("involvedObject.namespace", "/involvedObject/namespace"),
        ("involvedObject.name", "/involvedObject/name"),
        ("involvedObject.uid", "/involvedObject/uid"),
        ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
        (
            "involvedObject.resourceVersion",
            "/involvedObject/resourceVersion",
        ),
        ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
        ("reason", "/reason"),
        ("reportingComponent", "/reportingComponent"),
        ("source", "/source/component"),
        ("type", "/type"),
    ];
    let core_event_schema = object_schema(
        "Event is a report of an event somewhere in the cluster.",
        json!({
            "involvedObject": object_reference(),
            "reason": {"type": "string"}, "message": {"type": "string"},
            "source": {"type": "object", "properties": {"component": {"type": "string"}, "host": {"type": "string"}}},
            "firstTimestamp": time(), "lastTimestamp": time(),
            "count": {"type": "integer", "format": "int32"}, "type": {"type": "string"},
            "eventTime": time(), "series": series("lastObservedTime"),
            "action": {"type": "string"}, "related": object_reference(),
            "reportingComponent": {"type": "string"}, "reportingInstance": {"type": "string"}
        }),
    );
    let v1_event_schema = object_schema(
        "Event is a report of an event somewhere in the cluster (events.k8s.io/v1).",
        json!({
            "eventTime": time(), "series": series("lastObservedTime"),
            "reportingController": {"type": "string"}, "reportingInstance": {"type": "string"},
            "action": {"type": "string"}, "reason": {"type": "string"},
            "regarding": object_reference(), "related": object_reference(),
            "note": {"type": "string"}, "type": {"type": "string"},
            "deprecatedSource": {"type": "object", "properties": {"component": {"type": "string"}, "host": {"type": "string"}}},
            "deprecatedFirstTimestamp": time(), "deprecatedLastTimestamp": time(),
            "deprecatedCount": {"type": "integer", "format": "int32"}
        }),
    );
    let meta_fields = CR_FIELDS.to_vec();
    vec![
        ResourceDef {
            group: String::new(),
            version: "v1".into(),
            kind: "Namespace".into(),
            plural: "namespaces".into(),
            singular: "namespace".into(),
            short_names: vec!["ns".into()],
            categories: vec![],
            namespaced: false,
            status_subresource: true,
            custom: false,
            schema: object_schema(
                "Namespace provides a scope for Names.",
                json!({
                    "spec": {"type": "object", "properties": {"finalizers": {"type": "array", "items": {"type": "string"}}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
                }),
            ),
            columns: vec![
                col(
                    "Name",
                    "string",
                    ".metadata.name",
                    0,
                    "Name of the namespace",
                ),
                col(
                    "Status",
                    "string",
                    ".status.phase",
                    0,
                    "The phase of the namespace",
                ),
                col("Age", "date", ".metadata.creationTimestamp", 0, ""),
            ],
            storage: Arc::from("core/namespaces"),
            view: View::Plain,
            field_selectors: vec![
                ("metadata.name", "/metadata/name"),
                ("status.phase", "/status/phase"),
            ],
            label_names: true,
        },
        ResourceDef {
            group: String::new(),
            version: "v1".into(),
            kind: "Secret".into(),
            plural: "secrets".into(),
            singular: "secret".into(),
            short_names: vec![],
            categories: vec![],
            namespaced: true,
            status_subresource: false,
            custom: false,
            schema: object_schema(
                "Secret holds secret data. Values are encrypted at rest.",
                json!({
                    "data": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
                    "stringData": string_map(),
                    "type": {"type": "string"},
                    "immutable": {"type": "boolean"}
                }),
            ),
            columns: vec![
                col("Name", "string", ".metadata.name", 0, "Name of the secret"),
                col("Type", "string", ".type", 0, "The type of the secret"),
                col(
                    "Data",
                    "integer",
                    "#datacount",
                    0,
                    "The number of keys in the secret",
                ),
                col("Age", "date", ".metadata.creationTimestamp", 0, ""),
            ],
            storage: Arc::from("core/secrets"),
            view: View::Plain,
            field_selectors: {
                let mut f = meta_fields.clone();
                f.push(("type", "/type"));
                f
            },
            label_names: false,
        },
        ResourceDef {
            group: String::new(),
            version: "v1".into(),
            kind: "Event".into(),
            plural: "events".into(),
            singular: "event".into(),
            short_names: vec!["ev".into()],
            categories: vec![],
            namespaced: true,
            status_subresource: false,
            custom: false,
            schema: core_event_schema,
            columns: vec![
                col(
                    "Last Seen",
                    "date",
                    "#lastseen",
                    0,
                    "Time of the last occurrence",
                ),
                col("Type", "string", ".type", 0, "Normal or Warning"),
                col("Reason", "string", ".reason", 0, "Why"),
                col(
                    "Object",
                    "string",
                    "#involved",
                    0,
                    "The object this event is about",
                ),
                col("Message", "string", ".message", 0, "What happened"),
                col(
                    "Source",
                    "string",
                    ".reportingComponent",
                    1,
                    "The reporting component",
                ),
                col("Count", "integer", ".count", 1, "Occurrences"),
                col("Name", "string", ".metadata.name", 1, "Event name"),
            ],
            storage: events_storage.clone(),
            view: View::Plain,
            field_selectors: event_fields.clone(),
            label_names: false,
        },
        ResourceDef {
            group: "events.k8s.io".into(),
            version: "v1".into(),
            kind: "Event".into(),
            plural: "events".into(),
            singular: "event".into(),
            short_names: vec!["ev".into()],
            categories: vec![],
            namespaced: true,
            status_subresource: false,
            custom: false,
            schema: v1_event_schema,
            columns: vec![
                col("Name", "string", ".metadata.name", 0, ""),
                col("Reason", "string", ".reason", 0, ""),
                col("Note", "string", ".note", 0, ""),
                col("Age", "date", ".metadata.creationTimestamp", 0, ""),
            ],
            storage: events_storage,
            view: View::EventsV1,
            field_selectors: event_fields,
            label_names: false,
        },
        ResourceDef {
            group: "coordination.k8s.io".into(),
            version: "v1".into(),
            kind: "Lease".into(),
            plural: "leases".into(),
            singular: "lease".into(),
            short_names: vec![],
            categories: vec![],
            namespaced: true,
            status_subresource: false,
            custom: false,
            schema: object_schema(
                "Lease defines a lease concept (leader election).",
                json!({"spec": {"type": "object", "properties": {
                    "holderIdentity": {"type": "string", "nullable": true},
                    "leaseDurationSeconds": {"type": "integer", "format": "int32", "nullable": true},
                    "acquireTime": {"type": "string", "format": "date-time", "nullable": true},
                    "renewTime": {"type": "string", "format": "date-time", "nullable": true},
                    "leaseTransitions": {"type": "integer", "format": "int32", "nullable": true},
                    "strategy": {"type": "string", "nullable": true},
                    "preferredHolder": {"type": "string", "nullable": true}
                }}}),
            ),
            columns: vec![
                col("Name", "string", ".metadata.name", 0, ""),
                col(
                    "Holder",
                    "string",
                    ".spec.holderIdentity",
                    0,
                    "The current holder",
                ),
                col("Age", "date", ".metadata.creationTimestamp", 0, ""),
            ],
            storage: Arc::from("coordination.k8s.io/leases"),
            view: View::Plain,
            field_selectors: meta_fields,
            label_names: false,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_serves_crds_and_core_kinds() {
        let r = Registry::new(&crate::resources::all_crds());
        let ws = r
            .find("molecule.ai", "v1alpha1", "workspaces")
            .expect("workspaces");
        assert!(ws.namespaced && ws.status_subresource && ws.custom);
        assert_eq!(ws.short_names, vec!["ws"]);
        assert!(ws.columns.iter().any(|c| c.name == "Phase"));
        let rt = r
            .find("molecule.ai", "v1alpha1", "runtimes")
            .expect("runtimes");
        assert!(!rt.namespaced);
        let core = r.find("", "v1", "events").expect("core events");
        let v1 = r.find("events.k8s.io", "v1", "events").expect("v1 events");
        assert_eq!(core.storage, v1.storage);
        assert!(r.find("", "v1", "secrets").is_some());
        assert!(r.find("coordination.k8s.io", "v1", "leases").is_some());
        for plural in ["pods", "services", "persistentvolumeclaims", "configmaps"] {
            let d = r.find("", "v1", plural).expect(plural);
            assert!(d.namespaced && !d.custom, "{plural}");
            assert_eq!(&*d.storage, format!("core/{plural}"));
        }
        assert!(
            r.find("", "v1", "pods")
                .is_some_and(|d| d.status_subresource)
        );
        assert_eq!(
            r.by_storage("core/events").map(|d| d.group.clone()),
            Some(String::new())
        );
    }
}
