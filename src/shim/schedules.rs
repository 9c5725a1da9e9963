//! `/workspaces/:id/schedules` routes in the original's shape (ADR 0053): list, create, patch,
//! delete, run now, history. Every route takes the admin bearer token. They edit the
//! Workspace's `spec.schedules` (so `kubectl` and REST agree); the schedule controller fires
//! them and keeps `status.schedules`. A schedule's id is its name.
//!
//! Run-now writes the time of the request into the `molecule.ai/run-schedules` annotation; the
//! controller fires a request newer than the schedule's last run once (202: it is queued, not
//! answered). History is the schedule's rows of the activity log (`schedule:<name>: …`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};

use super::Shim;
use super::auth::bearer;
use super::error::{ShimError, ShimResult};
use super::input::{self, Fields};
use crate::resources::names::RUN_SCHEDULES_ANNOTATION;
use crate::resources::{ScheduleSpec, ScheduleStatus, Workspace};
use crate::store::{ActivityFilter, ActivitySource};

const MAX_NAME: usize = 128;
const MAX_CRON: usize = 200;
const MAX_TZ: usize = 64;
const MAX_PROMPT: usize = 64 * 1024;
/// Most fires a schedule's history shows (the newest).
const HISTORY_LIMIT: usize = 500;
/// Writes retried after a concurrent change of the record.
const WRITE_TRIES: usize = 3;

/// One schedule as the REST routes show it.
pub fn view(ws: &Workspace, spec: &ScheduleSpec) -> Value {
    let st = ws
        .status
        .as_ref()
        .and_then(|s| s.schedules.iter().find(|s| s.name == spec.name))
        .cloned()
        .unwrap_or_default();
    let ScheduleStatus {
        next_run_at,
        last_run_at,
        run_count,
        last_status,
        last_error,
        ..
    } = st;
    json!({
        "id": spec.name,
        "workspace_id": ws.uid(),
        "name": spec.name,
        "cron_expr": spec.cron_expr,
        "timezone": spec.timezone.clone().unwrap_or_else(|| "UTC".into()),
        "prompt": spec.prompt,
        "enabled": spec.enabled,
        "next_run_at": next_run_at,
        "last_run_at": last_run_at,
        "run_count": run_count,
        "last_status": last_status,
        "last_error": last_error,
    })
}

/// A 422 naming the field (`cron_expr`, `timezone`, `name`).
fn unprocessable(field: &str, message: String) -> ShimError {
    ShimError::Body(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"error": format!("{field}: {message}"), "field": field}),
    )
}

/// The rules of one schedule among `all` (its index `at`): a cron expression that parses, a
/// known zone, a unique name, a prompt.
fn check(all: &[ScheduleSpec], at: usize) -> Result<(), ShimError> {
    let s = &all[at];
    if s.name.trim().is_empty() || s.name.contains('/') {
        return Err(unprocessable(
            "name",
            "must be non-empty and must not contain '/'".into(),
        ));
    }
    if all
        .iter()
        .enumerate()
        .any(|(i, o)| i != at && o.name == s.name)
    {
        return Err(unprocessable(
            "name",
            format!("a schedule named {:?} exists already", s.name),
        ));
    }
    crate::cron::Cron::parse(&s.cron_expr).map_err(|e| unprocessable("cron_expr", e))?;
    crate::cron::zone(s.timezone.as_deref()).map_err(|e| unprocessable("timezone", e))?;
    if s.prompt.trim().is_empty() {
        return Err(unprocessable("prompt", "must not be empty".into()));
    }
    Ok(())
}

/// Applies the body's fields to `s` (a create starts from an empty schedule).
fn apply_fields(f: &Fields<'_>, s: &mut ScheduleSpec, create: bool) -> Result<(), ShimError> {
    if create {
        s.name = f.required_str("name", MAX_NAME)?.trim().to_string();
        s.cron_expr = f.required_str("cron_expr", MAX_CRON)?;
        s.prompt = f.text("prompt", MAX_PROMPT)?.unwrap_or_default();
    } else {
        if let Some(n) = f.str("name", MAX_NAME)? {
            s.name = n.trim().to_string();
        }
        if let Some(c) = f.str("cron_expr", MAX_CRON)? {
            s.cron_expr = c;
        }
        if let Some(p) = f.text("prompt", MAX_PROMPT)? {
            s.prompt = p;
        }
    }
    if let Some(tz) = f.nullable_str("timezone", MAX_TZ)? {
        s.timezone = tz.filter(|t| !t.trim().is_empty() && t != "UTC");
    }
    if let Some(e) = f.bool("enabled")? {
        s.enabled = e;
    }
    Ok(())
}

fn api(shim: &Shim, ws: &Workspace) -> Api<Workspace> {
    Api::namespaced(shim.client.clone(), &ws.namespace().unwrap_or_default())
}

/// Reads the record, lets `edit` change it into a merge patch, writes the patch on the
/// condition that the record did not change meanwhile (retried a few times), and waits until
/// the shim's index has seen the write.
async fn edit<T>(
    shim: &Shim,
    cached: &Workspace,
    edit: impl Fn(&Workspace) -> Result<(Value, T), ShimError>,
) -> Result<(Workspace, T), ShimError> {
    let api = api(shim, cached);
    let name = cached.name_any();
    for attempt in 1..=WRITE_TRIES {
        let fresh = api.get(&name).await?;
        if fresh.metadata.deletion_timestamp.is_some() {
            return Err(ShimError::Conflict("the workspace is being deleted".into()));
        }
        let (mut body, out) = edit(&fresh)?;
        body["metadata"]["resourceVersion"] = json!(fresh.resource_version());
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(written) => {
                if let Some(uid) = written.uid() {
                    shim.cache
                        .wait_for_version(&uid, written.resource_version().as_deref())
                        .await;
                }
                return Ok((written, out));
            }
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < WRITE_TRIES => continue,
            Err(kube::Error::Api(s)) if s.code == 422 => {
                // The API server's own check (ADR 0053) names the field in its message.
                return Err(ShimError::Body(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error": s.message}),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ShimError::Conflict(
        "the workspace changed concurrently; retry".into(),
    ))
}

fn spec_patch(list: &[ScheduleSpec]) -> Value {
    json!({"spec": {"schedules": list}})
}

fn find(ws: &Workspace, id: &str) -> Result<usize, ShimError> {
    ws.spec
        .schedules
        .iter()
        .position(|s| s.name == id)
        .ok_or(ShimError::NotFound("schedule"))
}

/// `GET /workspaces/:id/schedules` (admin).
pub async fn list(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    let out: Vec<Value> = ws.spec.schedules.iter().map(|s| view(&ws, s)).collect();
    Ok(axum::Json(out).into_response())
}

/// `POST /workspaces/:id/schedules {name, cron_expr, timezone?, prompt, enabled?}` (admin)
/// → 201 with the schedule.
pub async fn create(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    let m = input::object(body, false).await?;
    let mut new = ScheduleSpec {
        enabled: true,
        ..Default::default()
    };
    apply_fields(&Fields(&m), &mut new, true)?;
    let (written, name) = edit(&shim, &ws, |fresh| {
        let mut list = fresh.spec.schedules.clone();
        list.push(new.clone());
        check(&list, list.len() - 1)?;
        Ok((spec_patch(&list), new.name.clone()))
    })
    .await?;
    audit(&shim, &written, "schedule.created", &name).await;
    let at = find(&written, &name)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(view(&written, &written.spec.schedules[at])),
    )
        .into_response())
}

/// `PATCH /workspaces/:id/schedules/:schedule_id {name?, cron_expr?, timezone?, prompt?,
/// enabled?}` (admin).
pub async fn update(
    State(shim): State<Arc<Shim>>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    let m = input::object(body, false).await?;
    let f = Fields(&m);
    let (written, name) = edit(&shim, &ws, |fresh| {
        let at = find(fresh, &sid)?;
        let mut list = fresh.spec.schedules.clone();
        apply_fields(&f, &mut list[at], false)?;
        check(&list, at)?;
        Ok((spec_patch(&list), list[at].name.clone()))
    })
    .await?;
    audit(&shim, &written, "schedule.updated", &name).await;
    let at = find(&written, &name)?;
    Ok(axum::Json(view(&written, &written.spec.schedules[at])).into_response())
}

/// `DELETE /workspaces/:id/schedules/:schedule_id` (admin).
pub async fn remove(
    State(shim): State<Arc<Shim>>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    let (written, ()) = edit(&shim, &ws, |fresh| {
        let at = find(fresh, &sid)?;
        let mut list = fresh.spec.schedules.clone();
        list.remove(at);
        Ok((spec_patch(&list), ()))
    })
    .await?;
    audit(&shim, &written, "schedule.deleted", &sid).await;
    Ok(axum::Json(json!({"status": "deleted", "id": sid})).into_response())
}

/// `POST /workspaces/:id/schedules/:schedule_id/run` (admin) → 202 with the schedule: the
/// controller fires it once, now.
pub async fn run(
    State(shim): State<Arc<Shim>>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    let (written, ()) = edit(&shim, &ws, |fresh| {
        find(fresh, &sid)?;
        if fresh.spec.paused {
            return Err(ShimError::Conflict("the workspace is paused".into()));
        }
        let mut requests: BTreeMap<String, String> = fresh
            .annotations()
            .get(RUN_SCHEDULES_ANNOTATION)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        requests.retain(|n, _| fresh.spec.schedules.iter().any(|s| &s.name == n));
        requests.insert(sid.clone(), jiff::Timestamp::now().to_string());
        let value = serde_json::to_string(&requests).unwrap_or_default();
        let mut ann = Map::new();
        ann.insert(RUN_SCHEDULES_ANNOTATION.into(), Value::String(value));
        Ok((json!({"metadata": {"annotations": ann}}), ()))
    })
    .await?;
    audit(&shim, &written, "schedule.run", &sid).await;
    let at = find(&written, &sid)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(view(&written, &written.spec.schedules[at])),
    )
        .into_response())
}

/// `GET /workspaces/:id/schedules/:schedule_id/history` (admin): the schedule's fires from the
/// activity log, newest first.
pub async fn history(
    State(shim): State<Arc<Shim>>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    find(&ws, &sid)?;
    let Some(store) = shim.audit.store() else {
        return Ok(axum::Json(Vec::<Value>::new()).into_response());
    };
    let rows = store
        .activity_query(&ActivityFilter {
            workspace_id: id.clone(),
            activity_type: Some("a2a_receive".into()),
            source: Some(ActivitySource::Canvas),
            summary_prefix: Some(format!("schedule:{sid}: ")),
            limit: HISTORY_LIMIT,
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "schedule history: the activity query failed");
            ShimError::Unavailable("the activity log is unavailable; retry")
        })?;
    let out: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "schedule_id": sid,
                "run_at": r.created_at,
                "status": r.status,
                "duration_ms": r.duration_ms,
                "error": r.error_detail,
            })
        })
        .collect();
    Ok(axum::Json(out).into_response())
}

async fn audit(shim: &Shim, ws: &Workspace, action: &str, schedule: &str) {
    shim.audit
        .record(
            action,
            &ws.namespace().unwrap_or_default(),
            &ws.name_any(),
            json!({"uid": ws.uid(), "schedule": schedule}),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, expr: &str, tz: Option<&str>) -> ScheduleSpec {
        ScheduleSpec {
            name: name.into(),
            cron_expr: expr.into(),
            timezone: tz.map(Into::into),
            prompt: "p".into(),
            enabled: true,
        }
    }

    fn field(e: ShimError) -> String {
        match e {
            ShimError::Body(code, v) => {
                assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
                v["field"].as_str().unwrap_or_default().to_string()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn checks_name_the_field() {
        let list = [s("a", "* * * * *", None), s("a", "0 9 * * *", None)];
        assert_eq!(field(check(&list, 1).unwrap_err()), "name");
        assert_eq!(
            field(check(&[s("b", "* * *", None)], 0).unwrap_err()),
            "cron_expr"
        );
        assert_eq!(
            field(check(&[s("b", "@daily", Some("Nowhere/City"))], 0).unwrap_err()),
            "timezone"
        );
        assert!(check(&[s("b", "@daily", Some("Europe/Berlin"))], 0).is_ok());
    }

    #[test]
    fn the_view_is_snake_case_with_the_name_as_id_and_utc_by_default() {
        let mut ws = Workspace::new("w", Default::default());
        ws.spec.schedules = vec![s("daily", "@daily", None)];
        ws.status = Some(crate::resources::WorkspaceStatus {
            schedules: vec![ScheduleStatus {
                name: "daily".into(),
                run_count: 2,
                last_status: Some("ok".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        let v = view(&ws, &ws.spec.schedules[0]);
        assert_eq!(v["id"], "daily");
        assert_eq!(v["cron_expr"], "@daily");
        assert_eq!(v["timezone"], "UTC");
        assert_eq!(v["run_count"], 2);
        assert_eq!(v["last_status"], "ok");
        assert_eq!(v["next_run_at"], Value::Null);
    }
}
