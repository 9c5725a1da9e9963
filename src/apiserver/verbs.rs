//! The write verbs of the API server as pure steps over a [`Txn`]: create, update (PUT and
//! every patch flavour), delete with finalizers and ownerReference garbage collection.
//! HTTP parsing lives in `http.rs`; nothing here does I/O.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::apply::{self, Scope};
use super::error::{ApiError, StatusCause};
use super::objects::{Key, Txn, WriteReply};
use super::registry::{Registry, ResourceDef, View};
use super::validation::{self, NameRule};

/// How unknown fields are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    /// Parses the query parameter; the server default is Warn.
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Deletion propagation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("") | Some("Background") => Ok(Propagation::Background),
            Some("Foreground") => Ok(Propagation::Foreground),
            Some("Orphan") => Ok(Propagation::Orphan),
            Some(other) => Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
            ))),
        }
    }
}

const FOREGROUND: &str = "foregroundDeletion";

/// `workspaces.molecule.ai "alpha" not found`
pub fn not_found(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} {name:?} not found", def.qualified()),
    )
    .with_details(&def.group, &def.plural, name)
}

/// The 409 for a stale resourceVersion.
pub fn conflict(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            def.qualified()
        ),
    )
    .with_details(&def.group, &def.plural, name)
}

/// A 422 naming the object and listing causes, in the real server's wording.
pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<StatusCause>) -> ApiError {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let joined = if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    };
    ApiError::invalid(
        format!("{} {name:?} is invalid: {joined}", def.kind_qualified()),
        causes,
    )
    .with_details(&def.group, &def.plural, name)
}

fn cause(field: &str, reason: &str, message: impl Into<String>) -> StatusCause {
    StatusCause {
        field: field.into(),
        reason: reason.into(),
        message: message.into(),
    }
}

fn meta(v: &Value) -> Option<&Map<String, Value>> {
    v.get("metadata").and_then(Value::as_object)
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    // Just ensured to be an object.
    v["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    meta(v).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn finalizers(v: &Value) -> Vec<String> {
    meta(v)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn set_finalizers(v: &mut Value, f: &[String]) {
    let m = meta_mut(v);
    if f.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(f));
    }
}

/// Converts a stored object to the form `def` serves.
pub fn to_view(def: &ResourceDef, stored: &Value) -> Value {
    view(def, stored).into_owned()
}

/// The served form of a stored object, borrowed when the two are the same (every kind but
/// `events.k8s.io` Events): lists and watches serialize it without a copy.
pub fn view<'a>(def: &ResourceDef, stored: &'a Value) -> std::borrow::Cow<'a, Value> {
    use std::borrow::Cow;
    match def.view {
        View::Plain => Cow::Borrowed(stored),
        View::EventsV1 => {
            let mut out = Map::new();
            out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
            out.insert("kind".into(), json!("Event"));
            let map = [
                ("metadata", "metadata"),
                ("eventTime", "eventTime"),
                ("series", "series"),
                ("action", "action"),
                ("reason", "reason"),
                ("type", "type"),
                ("related", "related"),
                ("involvedObject", "regarding"),
                ("message", "note"),
                ("reportingComponent", "reportingController"),
                ("reportingInstance", "reportingInstance"),
                ("source", "deprecatedSource"),
                ("count", "deprecatedCount"),
                ("firstTimestamp", "deprecatedFirstTimestamp"),
                ("lastTimestamp", "deprecatedLastTimestamp"),
            ];
            for (core, v1) in map {
                if let Some(x) = stored.get(core).filter(|x| !x.is_null()) {
                    out.insert(v1.into(), x.clone());
                }
            }
            Cow::Owned(Value::Object(out))
        }
    }
}

/// Converts a served object to its stored form.
pub fn to_storage(def: &ResourceDef, served: Value) -> Value {
    match def.view {
        View::Plain => served,
        View::EventsV1 => {
            let mut out = Map::new();
            out.insert("apiVersion".into(), json!("v1"));
            out.insert("kind".into(), json!("Event"));
            let map = [
                ("metadata", "metadata"),
                ("eventTime", "eventTime"),
                ("series", "series"),
                ("action", "action"),
                ("reason", "reason"),
                ("type", "type"),
                ("related", "related"),
                ("regarding", "involvedObject"),
                ("note", "message"),
                ("reportingController", "reportingComponent"),
                ("reportingInstance", "reportingInstance"),
                ("deprecatedSource", "source"),
                ("deprecatedCount", "count"),
                ("deprecatedFirstTimestamp", "firstTimestamp"),
                ("deprecatedLastTimestamp", "lastTimestamp"),
            ];
            for (v1, core) in map {
                if let Some(x) = served.get(v1).filter(|x| !x.is_null()) {
                    out.insert(core.into(), x.clone());
                }
            }
            Value::Object(out)
        }
    }
}

/// Checks and fills apiVersion/kind.
pub fn check_type_meta(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {})",
            def.kind
        )));
    };
    let want_av = def.api_version();
    match m.get("apiVersion").and_then(Value::as_str) {
        Some(av) if av != want_av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
        _ => {}
    }
    match m.get("kind").and_then(Value::as_str) {
        Some(k) if k != def.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
        _ => {}
    }
    m.insert("apiVersion".into(), json!(want_av));
    m.insert("kind".into(), json!(def.kind));
    Ok(())
}

/// Takes the namespace from the URL; a different one in the body is a 400.
pub fn check_namespace(
    def: &ResourceDef,
    url_ns: Option<&str>,
    obj: &mut Value,
) -> Result<String, ApiError> {
    let body_ns = meta_str(obj, "namespace").map(String::from);
    if !def.namespaced {
        meta_mut(obj).remove("namespace");
        return Ok(String::new());
    }
    let ns = url_ns.unwrap_or("default").to_string();
    if let Some(b) = body_ns.filter(|b| !b.is_empty())
        && b != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    meta_mut(obj).insert("namespace".into(), json!(ns));
    Ok(ns)
}

/// The rules of a Workspace's `spec.schedules` a schema cannot say (ADR 0053), checked when the
/// list changes (`old` is the stored object): a record stored before a rule existed keeps
/// taking status writes (ratcheting, as kube-apiserver does).
pub fn check_schedules(
    def: &ResourceDef,
    new: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if def.group != crate::resources::GROUP || def.kind != "Workspace" {
        return Ok(());
    }
    let list = |v: &Value| v.pointer("/spec/schedules").cloned();
    if old.is_some_and(|o| list(o) == list(new)) {
        return Ok(());
    }
    let causes = validation::workspace_schedules(new);
    if causes.is_empty() {
        return Ok(());
    }
    let name = meta_str(new, "name").unwrap_or("").to_string();
    Err(invalid(
        def,
        &name,
        causes
            .into_iter()
            .map(|c| cause(&c.field, c.reason, c.message))
            .collect(),
    ))
}

/// Schema and metadata validation, with unknown fields handled by `mode`.
/// Returns the warnings to send.
pub fn validate(
    def: &ResourceDef,
    obj: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    check(def, obj, mode, false)
}

/// Validation of a partial object (a server-side apply configuration): missing required
/// fields are fine there; the merged result is validated in full afterwards.
pub fn validate_partial(
    def: &ResourceDef,
    obj: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    check(def, obj, mode, true)
}

fn check(
    def: &ResourceDef,
    obj: &mut Value,
    mode: FieldValidation,
    partial: bool,
) -> Result<Vec<String>, ApiError> {
    let name = meta_str(obj, "name")
        .or_else(|| meta_str(obj, "generateName"))
        .unwrap_or("")
        .to_string();
    let rule = if def.label_names {
        NameRule::Label
    } else {
        NameRule::Subdomain
    };
    let mut m = validation::validate_metadata(obj, rule);
    let s = validation::validate(&def.schema, obj);
    m.unknown.extend(s.unknown);
    m.invalid.extend(s.invalid);
    if !def.custom
        && let Some(typed) = validation::typed_check(&def.kind)
    {
        m.merge(typed(obj));
    }
    if partial {
        m.invalid.retain(|c| c.reason != "FieldValueRequired");
    }
    if mode == FieldValidation::Strict && !m.unknown.is_empty() {
        let list: Vec<String> = m
            .unknown
            .iter()
            .map(|u| format!("unknown field {u:?}"))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
            def.kind,
            def.version,
            def.kind,
            list.join(", ")
        )));
    }
    if !m.invalid.is_empty() {
        let causes = m
            .invalid
            .into_iter()
            .map(|c| cause(&c.field, c.reason, c.message))
            .collect();
        return Err(invalid(def, &name, causes));
    }
    Ok(match mode {
        FieldValidation::Warn => m
            .unknown
            .iter()
            .map(|u| format!("unknown field {u:?}"))
            .collect(),
        _ => vec![],
    })
}

/// The status a new Pod or PersistentVolumeClaim starts with on a real server: `Pending`, until
/// a kubelet (or, here, a test playing one) writes more.
fn initial_status(def: &ResourceDef, obj: &mut Value) {
    if def.custom || !def.group.is_empty() || obj.get("status").is_some_and(|s| !s.is_null()) {
        return;
    }
    if matches!(def.kind.as_str(), "Pod" | "PersistentVolumeClaim") {
        obj["status"] = json!({"phase": "Pending"});
    }
}

/// Kind-specific normalisation before storing (Secret `stringData` folds into `data`).
pub fn normalize(def: &ResourceDef, obj: &mut Value) {
    if def.group.is_empty() && def.kind == "Secret" {
        use base64::Engine;
        if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
            && let Some(sd) = sd.as_object()
        {
            if !obj.get("data").is_some_and(Value::is_object) {
                obj["data"] = json!({});
            }
            for (k, v) in sd {
                if let Some(s) = v.as_str() {
                    obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
                }
            }
        }
        if obj.get("type").is_none() {
            obj["type"] = json!("Opaque");
        }
    }
    if def.group.is_empty() && def.kind == "Namespace" {
        obj["status"] = json!({"phase": "Active"});
    }
    if def.group.is_empty()
        && def.kind == "Service"
        && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.entry("type").or_insert_with(|| json!("ClusterIP"));
    }
}

/// Everything but metadata and status: what bumps `generation`.
fn spec_part(v: &Value) -> Map<String, Value> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Create: the object must not exist. `obj` is validated and in stored form.
pub fn create(
    txn: &mut Txn<'_>,
    def: &ResourceDef,
    key: &Key,
    mut obj: Value,
    manager: &str,
    applied: Option<(&Value, bool)>,
) -> Result<Arc<Value>, ApiError> {
    if txn.get(key).is_some() {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {:?} already exists", def.qualified(), key.2),
        )
        .with_details(&def.group, &def.plural, &key.2));
    }
    let now = txn.now().to_string();
    if def.status_subresource && applied.is_none() {
        obj.as_object_mut().map(|m| m.remove("status"));
    }
    if let Some((a, force)) = applied {
        obj = apply::apply(None, a, manager, force, Scope::Main, &now)
            .map_err(|e| ApiError::invalid(e.to_string(), vec![]))?;
        if def.status_subresource {
            obj.as_object_mut().map(|m| m.remove("status"));
        }
        check_type_meta(def, &mut obj)?;
    }
    let m = meta_mut(&mut obj);
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "generation",
    ] {
        m.remove(f);
    }
    m.insert("name".into(), json!(key.2));
    if def.namespaced {
        m.insert("namespace".into(), json!(key.1));
    }
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(now));
    m.insert("generation".into(), json!(1));
    if applied.is_none() {
        m.remove("managedFields");
        apply::record_update(None, &mut obj, manager, Scope::Main, &now);
    }
    initial_status(def, &mut obj);
    Ok(txn.put(key, obj))
}

/// The part of an update a subresource may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

/// How the new object was produced, for field ownership.
pub enum Writer<'a> {
    /// PUT or merge/JSON patch by a manager (operation Update).
    Update(&'a str),
    /// Server-side apply (managedFields already computed).
    Apply,
    /// The server itself (GC, deletion); ownership untouched.
    System,
}

/// Finishes any update: keeps what the caller may not change, bumps generation, enforces the
/// deletion rules, skips no-ops, and deletes the object when its last finalizer goes.
#[allow(clippy::too_many_arguments)]
pub fn update(
    txn: &mut Txn<'_>,
    reg: &Registry,
    def: &ResourceDef,
    key: &Key,
    old: &Arc<Value>,
    mut new: Value,
    part: Part,
    writer: Writer<'_>,
) -> Result<WriteReply, ApiError> {
    let now = txn.now().to_string();
    if part == Part::Status {
        let mut merged = (**old).clone();
        merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if merged["status"].is_null() {
            merged.as_object_mut().map(|m| m.remove("status"));
        }
        if matches!(writer, Writer::Apply) {
            merged["metadata"]["managedFields"] = new
                .pointer("/metadata/managedFields")
                .cloned()
                .unwrap_or(Value::Null);
        }
        new = merged;
    } else if def.status_subresource {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                new.as_object_mut().map(|m| m.remove("status"));
            }
        }
    }
    if let Some(n) = meta_str(&new, "name")
        && n != key.2
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({})",
            key.2
        )));
    }
    // Immutable metadata comes from the stored object.
    let old_meta = meta(old).cloned().unwrap_or_default();
    {
        let m = meta_mut(&mut new);
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
            "resourceVersion",
        ] {
            match old_meta.get(f) {
                Some(v) => m.insert(f.into(), v.clone()),
                None => m.remove(f),
            };
        }
        if !matches!(writer, Writer::Apply) {
            match old_meta.get("managedFields") {
                Some(v) => m.insert("managedFields".into(), v.clone()),
                None => m.remove("managedFields"),
            };
        }
    }
    let deleting = old_meta.contains_key("deletionTimestamp");
    let new_fin = finalizers(&new);
    if deleting {
        let old_fin = finalizers(old);
        if let Some(f) = new_fin.iter().find(|f| !old_fin.contains(f)) {
            return Err(invalid(
                def,
                &key.2,
                vec![cause(
                    "metadata.finalizers",
                    "FieldValueForbidden",
                    format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{f:?}}}"
                    ),
                )],
            ));
        }
    }
    if spec_part(&new) != spec_part(old) {
        let g = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta_mut(&mut new).insert("generation".into(), json!(g + 1));
    }
    if let Writer::Update(manager) = writer {
        let scope = if part == Part::Status {
            Scope::Status
        } else {
            Scope::Main
        };
        apply::record_update(Some(old), &mut new, manager, scope, &now);
    }
    if new == **old {
        return Ok(WriteReply::ok(to_view(def, old)));
    }
    let stored = txn.put(key, new);
    if deleting && new_fin.is_empty() {
        let last = txn.remove(key).unwrap_or(stored);
        after_removal(txn, reg, &last)?;
        return Ok(WriteReply::ok(to_view(def, &last)));
    }
    Ok(WriteReply::ok(to_view(def, &stored)))
}

/// Result of a delete.
pub enum Deleted {
    /// Finalizers are pending: the object (now with deletionTimestamp).
    Pending(Arc<Value>),
    /// Removed: its last state.
    Gone(Arc<Value>),
}

/// Deletes `key`, honouring finalizers and propagation.
pub fn delete(
    txn: &mut Txn<'_>,
    reg: &Registry,
    key: &Key,
    policy: Propagation,
) -> Result<Deleted, ApiError> {
    let Some(old) = txn.get(key) else {
        return Err(ApiError::not_found_path());
    };
    let uid = meta_str(&old, "uid").unwrap_or("").to_string();
    let mut fin = finalizers(&old);
    match policy {
        Policy::Orphan => orphan_dependents(txn, &uid),
        Policy::Foreground => {
            let deps = txn.dependents(&uid);
            if !deps.is_empty() && !fin.iter().any(|f| f == FOREGROUND) {
                fin.push(FOREGROUND.to_string());
            }
            for (dk, _) in deps {
                delete(txn, reg, &dk, Propagation::Background)?;
            }
            // Dependents removed right away may already have released the owner.
        }
        Policy::Background => {}
    }
    let current = txn.get(key).unwrap_or(old.clone());
    if fin.is_empty() && finalizers(&current).is_empty() {
        let last = txn.remove(key).ok_or_else(ApiError::not_found_path)?;
        after_removal(txn, reg, &last)?;
        return Ok(Deleted::Gone(last));
    }
    let mut new = (*current).clone();
    let first = meta(&new).is_none_or(|m| !m.contains_key("deletionTimestamp"));
    if policy == Propagation::Foreground {
        let mut cur_fin = finalizers(&new);
        if fin.iter().any(|f| f == FOREGROUND)
            && !cur_fin.iter().any(|f| f == FOREGROUND)
            && !txn.dependents(&uid).is_empty()
        {
            cur_fin.push(FOREGROUND.into());
            set_finalizers(&mut new, &cur_fin);
        }
    }
    if first {
        let now = txn.now().to_string();
        let g = meta(&new)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let m = meta_mut(&mut new);
        m.insert("deletionTimestamp".into(), json!(now));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        m.insert("generation".into(), json!(g + 1));
    }
    if finalizers(&new).is_empty() {
        let last = txn.remove(key).ok_or_else(ApiError::not_found_path)?;
        after_removal(txn, reg, &last)?;
        return Ok(Deleted::Gone(last));
    }
    if new == *current {
        return Ok(Deleted::Pending(current));
    }
    Ok(Deleted::Pending(txn.put(key, new)))
}

type Policy = Propagation;

fn orphan_dependents(txn: &mut Txn<'_>, uid: &str) {
    for (dk, dv) in txn.dependents(uid) {
        let mut d = (*dv).clone();
        strip_owner(&mut d, uid);
        txn.put(&dk, d);
    }
}

fn strip_owner(v: &mut Value, uid: &str) {
    let m = meta_mut(v);
    if let Some(refs) = m.get_mut("ownerReferences").and_then(Value::as_array_mut) {
        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
        if refs.is_empty() {
            m.remove("ownerReferences");
        }
    }
}

/// After an object is gone: collect its dependents (background GC) and release owners that
/// wait in foreground deletion.
pub fn after_removal(txn: &mut Txn<'_>, reg: &Registry, last: &Value) -> Result<(), ApiError> {
    let uid = meta_str(last, "uid").unwrap_or("").to_string();
    if !uid.is_empty() {
        for (dk, dv) in txn.dependents(&uid) {
            let other_owner_alive = owner_refs(&dv)
                .iter()
                .any(|(u, _)| u != &uid && txn.uid_exists(u));
            if other_owner_alive {
                let mut d = (*dv).clone();
                strip_owner(&mut d, &uid);
                txn.put(&dk, d);
            } else if txn.get(&dk).is_some() {
                delete(txn, reg, &dk, Propagation::Background)?;
            }
        }
    }
    for (owner_uid, _) in owner_refs(last) {
        release_foreground_owner(txn, reg, &owner_uid)?;
    }
    Ok(())
}

fn owner_refs(v: &Value) -> Vec<(String, bool)> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some((
                        r.get("uid")?.as_str()?.to_string(),
                        r.get("blockOwnerDeletion")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn release_foreground_owner(
    txn: &mut Txn<'_>,
    reg: &Registry,
    owner_uid: &str,
) -> Result<(), ApiError> {
    let Some((ok, ov)) = txn.find_uid(owner_uid) else {
        return Ok(());
    };
    let fin = finalizers(&ov);
    if !fin.iter().any(|f| f == FOREGROUND)
        || meta(&ov).is_none_or(|m| !m.contains_key("deletionTimestamp"))
    {
        return Ok(());
    }
    let blocking = txn
        .dependents(owner_uid)
        .iter()
        .any(|(_, d)| owner_refs(d).iter().any(|(u, b)| u == owner_uid && *b));
    if blocking {
        return Ok(());
    }
    let rest: Vec<String> = fin.into_iter().filter(|f| f != FOREGROUND).collect();
    let mut nv = (*ov).clone();
    set_finalizers(&mut nv, &rest);
    txn.put(&ok, nv);
    if rest.is_empty()
        && let Some(last) = txn.remove(&ok)
    {
        after_removal(txn, reg, &last)?;
    }
    Ok(())
}

/// Deletes objects whose every owner is gone, and strips references to missing owners
/// (the garbage collector's periodic pass). Returns how many objects it touched.
pub fn collect_garbage(txn: &mut Txn<'_>, reg: &Registry) -> Result<usize, ApiError> {
    let mut touched = 0;
    let storages: Vec<Arc<str>> = reg
        .defs
        .iter()
        .filter(|d| d.view == View::Plain)
        .map(|d| d.storage.clone())
        .collect();
    for storage in storages {
        // Only objects with owners, read from the index: the rest are never parsed here.
        for (k, owners) in txn.owned(&storage) {
            if owners.iter().all(|u| txn.uid_exists(u)) {
                continue;
            }
            // An earlier deletion of this pass may have taken it already.
            let Some(v) = txn.get(&k) else {
                continue;
            };
            let refs = owner_refs(&v);
            if refs.is_empty() {
                continue;
            }
            let missing: Vec<&String> = refs
                .iter()
                .map(|(u, _)| u)
                .filter(|u| !txn.uid_exists(u))
                .collect();
            if missing.is_empty() {
                continue;
            }
            touched += 1;
            if missing.len() == refs.len() {
                delete(txn, reg, &k, Propagation::Background)?;
            } else {
                let mut d = (*v).clone();
                for u in missing {
                    strip_owner(&mut d, u);
                }
                txn.put(&k, d);
            }
        }
    }
    Ok(touched)
}

/// Deletes Events older than `ttl_secs` (the real apiserver keeps them one hour).
pub fn expire_events(txn: &mut Txn<'_>, storage: &str, ttl_secs: i64) -> usize {
    let now = jiff::Timestamp::now().as_second();
    let mut n = 0;
    for (k, v) in txn.list(storage, None) {
        let ts = [
            "/series/lastObservedTime",
            "/lastTimestamp",
            "/eventTime",
            "/metadata/creationTimestamp",
        ]
        .iter()
        .find_map(|p| {
            v.pointer(p)
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        });
        if ts.is_some_and(|t| now - t.as_second() > ttl_secs) {
            txn.remove(&k);
            n += 1;
        }
    }
    n
}

/// Applies an RFC 6902 JSON patch, with Kubernetes' one extension: `test` of `null` against a
/// missing path succeeds.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    let mut kept = vec![];
    for op in ops {
        let is_null_test = op.get("op").and_then(Value::as_str) == Some("test")
            && op.get("value").is_some_and(Value::is_null);
        if is_null_test {
            let path = op.get("path").and_then(Value::as_str).unwrap_or("");
            if doc.pointer(path).is_none_or(Value::is_null) {
                continue;
            }
        }
        kept.push(op.clone());
    }
    let p: json_patch::Patch = serde_json::from_value(Value::Array(kept))
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(doc, &p)
        .map_err(|e| ApiError::invalid(format!("the JSON patch could not be applied: {e}"), vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_test_on_missing_path_passes() {
        let mut d = json!({"metadata": {"name": "a"}});
        let p = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}, {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]);
        json_patch(&mut d, &p).expect("patch");
        assert_eq!(d["metadata"]["finalizers"], json!(["x"]));
        let p = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "y"}]);
        assert_eq!(json_patch(&mut d, &p).expect_err("test fails").code, 422);
    }

    #[test]
    fn event_views_round_trip() {
        let reg = Registry::new(&[]);
        let v1 = reg.find("events.k8s.io", "v1", "events").expect("v1");
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "a.1"}, "note": "ok", "reason": "R",
            "regarding": {"kind": "Workspace", "name": "a"}, "reportingController": "c", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let stored = to_storage(&v1, e.clone());
        assert_eq!(stored["message"], "ok");
        assert_eq!(stored["involvedObject"]["kind"], "Workspace");
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(to_view(&v1, &stored), e);
    }

    #[test]
    fn secret_string_data_folds_into_data() {
        let reg = Registry::new(&[]);
        let def = reg.find("", "v1", "secrets").expect("secrets");
        let mut s = json!({"stringData": {"A": "b"}});
        normalize(&def, &mut s);
        assert_eq!(s, json!({"data": {"A": "Yg=="}, "type": "Opaque"}));
    }
}
