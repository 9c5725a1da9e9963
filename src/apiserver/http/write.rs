//! The write verbs: create, update (put), patch, delete and deletecollection, parsed here and
//! run by `verbs`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Query, Target, selectors};
use crate::apiserver::ApiServer;
use crate::apiserver::apply::{self, Scope};
use crate::apiserver::error::{ApiError, StatusCause};
use crate::apiserver::objects::{Key, WriteReply};
use crate::apiserver::protobuf;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::verbs::{
    self, FieldValidation, Part, Propagation, Writer, to_storage, to_view,
};

/// Parses a request body (JSON, or YAML for apply patches and YAML content types).
fn parse_body(ct: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::unsupported_media_type(
            "application/json, application/yaml",
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if ct.contains("yaml") {
        return crate::yaml::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        });
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn manager(q: &Query) -> String {
    q.get("fieldManager")
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

pub(super) async fn create(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    ct: &str,
    bytes: &[u8],
    dry_run: bool,
) -> Result<WriteReply, ApiError> {
    let def = t.def;
    let mut obj = if ct.contains("protobuf") && !def.custom {
        protobuf::decode(&def.kind, bytes)?
    } else {
        parse_body(ct, bytes)?
    };
    verbs::check_type_meta(&def, &mut obj)?;
    let ns = verbs::check_namespace(&def, t.ns.as_deref(), &mut obj)?;
    let fv = FieldValidation::parse(q.get("fieldValidation"))?;
    let name = match obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_string(),
        None => match obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(g) => format!("{g}{}", crate::util::random_suffix(5)),
            None => {
                return Err(verbs::invalid(
                    &def,
                    "",
                    vec![StatusCause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
        },
    };
    obj["metadata"]["name"] = json!(name);
    let warnings = verbs::validate(&def, &mut obj, fv)?;
    verbs::check_schedules(&def, &obj, None)?;
    verbs::normalize(&def, &mut obj);
    let obj = to_storage(&def, obj);
    let key: Key = (def.storage.clone(), ns, name);
    let manager = manager(q);
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let stored = verbs::create(txn, &def, &key, obj, &manager, None)?;
                Ok(WriteReply {
                    code: 201,
                    body: to_view(&def, &stored),
                    warnings,
                })
            }),
        )
        .await
}

pub(super) async fn put(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    ct: &str,
    bytes: &[u8],
    dry_run: bool,
) -> Result<WriteReply, ApiError> {
    let def = t.def;
    let name = t.name.unwrap_or_default();
    let mut obj = parse_body(ct, bytes)?;
    verbs::check_type_meta(&def, &mut obj)?;
    let ns = verbs::check_namespace(&def, t.ns.as_deref(), &mut obj)?;
    let fv = FieldValidation::parse(q.get("fieldValidation"))?;
    if obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        obj["metadata"]["name"] = json!(name);
    }
    let Some(rv) = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(String::from)
    else {
        return Err(verbs::invalid(
            &def,
            &name,
            vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: "Invalid value: 0x0: must be specified for an update".into(),
                field: "metadata.resourceVersion".into(),
            }],
        ));
    };
    let warnings = verbs::validate(&def, &mut obj, fv)?;
    verbs::normalize(&def, &mut obj);
    let obj = to_storage(&def, obj);
    let part = if t.sub.is_some() {
        Part::Status
    } else {
        Part::Main
    };
    let key: Key = (def.storage.clone(), ns, name.clone());
    let manager = manager(q);
    let reg = api.registry.clone();
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let old = txn.get(&key).ok_or_else(|| verbs::not_found(&def, &name))?;
                if old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    != Some(rv.as_str())
                {
                    return Err(verbs::conflict(&def, &name));
                }
                if part == Part::Main {
                    verbs::check_schedules(&def, &obj, Some(&old))?;
                }
                let mut r = verbs::update(
                    txn,
                    &reg,
                    &def,
                    &key,
                    &old,
                    obj,
                    part,
                    Writer::Update(&manager),
                )?;
                r.warnings = warnings;
                Ok(r)
            }),
        )
        .await
}

enum PatchKind {
    Merge,
    Json,
    Apply,
}

pub(super) async fn patch(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    ct: &str,
    bytes: &[u8],
    dry_run: bool,
) -> Result<WriteReply, ApiError> {
    const ACCEPTED: &str =
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";
    let def = t.def;
    let kind = match ct {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/json-patch+json" => PatchKind::Json,
        "application/apply-patch+yaml" => PatchKind::Apply,
        "application/strategic-merge-patch+json" if !def.custom => PatchKind::Merge,
        _ => return Err(ApiError::unsupported_media_type(ACCEPTED)),
    };
    let name = t.name.unwrap_or_default();
    let ns = if def.namespaced {
        t.ns.clone().unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    let fv = FieldValidation::parse(q.get("fieldValidation"))?;
    let part = if t.sub.is_some() {
        Part::Status
    } else {
        Part::Main
    };
    let patch = parse_body(
        if matches!(kind, PatchKind::Apply) {
            "yaml"
        } else {
            "json"
        },
        bytes,
    )?;
    let manager = manager(q);
    let force = q.flag("force");
    let mut warnings = vec![];
    if matches!(kind, PatchKind::Apply) {
        if q.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                vec![StatusCause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: is required for apply patch".into(),
                    field: "fieldManager".into(),
                }],
            ));
        }
        if !patch.is_object() {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        }
    }
    let mut applied = patch.clone();
    if matches!(kind, PatchKind::Apply) {
        verbs::check_type_meta(&def, &mut applied)?;
        verbs::check_namespace(&def, t.ns.as_deref(), &mut applied)?;
        if applied
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            applied["metadata"]["name"] = json!(name);
        }
        warnings = verbs::validate_partial(&def, &mut applied, fv)?;
    }
    let key: Key = (def.storage.clone(), ns, name.clone());
    let reg = api.registry.clone();
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let Some(old) = txn.get(&key) else {
                    if matches!(kind, PatchKind::Apply) && part == Part::Main {
                        let mut obj = applied.clone();
                        verbs::normalize(&def, &mut obj);
                        let stored = verbs::create(
                            txn,
                            &def,
                            &key,
                            to_storage(&def, obj.clone()),
                            &manager,
                            Some((&to_storage(&def, obj), force)),
                        )?;
                        return Ok(WriteReply {
                            code: 201,
                            body: to_view(&def, &stored),
                            warnings,
                        });
                    }
                    return Err(verbs::not_found(&def, &name));
                };
                let old_view = to_view(&def, &old);
                let mut new = match kind {
                    PatchKind::Merge => {
                        let mut d = old_view.clone();
                        json_patch::merge(&mut d, &patch);
                        d
                    }
                    PatchKind::Json => {
                        let mut d = old_view.clone();
                        verbs::json_patch(&mut d, &patch)?;
                        d
                    }
                    PatchKind::Apply => {
                        let scope = if part == Part::Status {
                            Scope::Status
                        } else {
                            Scope::Main
                        };
                        apply::apply(Some(&old_view), &applied, &manager, force, scope, txn.now())
                            .map_err(|e| match e {
                            apply::ApplyError::Conflicts(cs) => {
                                let msg = apply::conflict_message(&cs);
                                let causes = cs
                                    .iter()
                                    .map(|c| StatusCause {
                                        reason: "FieldManagerConflict".into(),
                                        message: format!("conflict with {:?}", c.manager),
                                        field: c.field.clone(),
                                    })
                                    .collect();
                                ApiError::new(409, "Conflict", msg)
                                    .with_details(&def.group, &def.plural, &name)
                                    .with_causes(causes)
                            }
                            apply::ApplyError::Invalid(m) => ApiError::bad_request(m),
                        })?
                    }
                };
                if new.pointer("/metadata/resourceVersion")
                    != old_view.pointer("/metadata/resourceVersion")
                {
                    return Err(verbs::conflict(&def, &name));
                }
                verbs::check_type_meta(&def, &mut new)?;
                let mut w = verbs::validate(&def, &mut new, fv)?;
                if part == Part::Main {
                    verbs::check_schedules(&def, &new, Some(&old_view))?;
                }
                verbs::normalize(&def, &mut new);
                let writer = if matches!(kind, PatchKind::Apply) {
                    Writer::Apply
                } else {
                    Writer::Update(&manager)
                };
                let mut r = verbs::update(
                    txn,
                    &reg,
                    &def,
                    &key,
                    &old,
                    to_storage(&def, new),
                    part,
                    writer,
                )?;
                w.extend(warnings);
                w.dedup();
                r.warnings = w;
                Ok(r)
            }),
        )
        .await
}

/// DeleteOptions from the body and the query.
fn delete_options(
    q: &Query,
    bytes: &[u8],
) -> Result<(Propagation, Option<String>, Option<String>, bool), ApiError> {
    let opts: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?
    };
    let policy = Propagation::parse(
        opts.get("propagationPolicy")
            .and_then(Value::as_str)
            .or(q.get("propagationPolicy")),
    )?;
    let uid = opts
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        .map(String::from);
    let rv = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .map(String::from);
    let dry = q.get("dryRun") == Some("All")
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    Ok((policy, uid, rv, dry))
}

fn success_status(def: &ResourceDef, name: &str, uid: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": def.group, "kind": def.plural, "uid": uid}})
}

pub(super) async fn delete(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    bytes: &[u8],
) -> Result<WriteReply, ApiError> {
    let def = t.def;
    let name = t.name.unwrap_or_default();
    let (policy, pre_uid, pre_rv, dry_run) = delete_options(q, bytes)?;
    let key: Key = (
        def.storage.clone(),
        if def.namespaced {
            t.ns.unwrap_or_else(|| "default".into())
        } else {
            String::new()
        },
        name.clone(),
    );
    let reg = api.registry.clone();
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let old = txn.get(&key).ok_or_else(|| verbs::not_found(&def, &name))?;
                let uid = old.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
                if pre_uid.as_ref().is_some_and(|u| *u != uid) {
                    return Err(ApiError::new(409, "Conflict", format!("Precondition failed: UID in precondition: {}, UID in object meta: {uid}", pre_uid.unwrap_or_default())).with_details(&def.group, &def.plural, &name));
                }
                if pre_rv.as_ref().is_some_and(|r| Some(r.as_str()) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str)) {
                    return Err(verbs::conflict(&def, &name));
                }
                Ok(match verbs::delete(txn, &reg, &key, policy)? {
                    verbs::Deleted::Pending(obj) => WriteReply::ok(to_view(&def, &obj)),
                    verbs::Deleted::Gone(_) => WriteReply::ok(success_status(&def, &name, &uid)),
                })
            }),
        )
        .await
}

pub(super) async fn delete_collection(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    bytes: &[u8],
) -> Result<WriteReply, ApiError> {
    let def = t.def;
    let (labels, fields) = selectors(&def, q)?;
    let (policy, _, _, dry_run) = delete_options(q, bytes)?;
    let ns = t.ns;
    let reg = api.registry.clone();
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let mut items = vec![];
                for (k, v) in txn.list(&def.storage, ns.as_deref()) {
                    if !(labels.matches(&v) && fields.matches(&v)) || txn.get(&k).is_none() {
                        continue;
                    }
                    match verbs::delete(txn, &reg, &k, policy)? {
                        verbs::Deleted::Pending(obj) | verbs::Deleted::Gone(obj) => items.push(to_view(&def, &obj)),
                    }
                }
                Ok(WriteReply::ok(json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": {}, "items": items})))
            }),
        )
        .await
}
