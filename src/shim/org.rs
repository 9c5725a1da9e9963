//! `GET /org/templates` and `POST /org/import`: the template listing and an import
//! that becomes an OrgImport record. The env preflight runs here, before anything is created,
//! so a missing env answers 412 `{error, missing_env, required_env}` as the original did; the
//! OrgImport controller runs the same preflight again when it reconciles.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::Shim;
use super::auth::bearer;
use super::error::{ShimError, ShimResult};
use super::input::{self, Fields};
use crate::orgtemplate::{self, Source};
use crate::resources::{OrgImport, OrgImportMode, OrgImportSource, OrgImportSpec};

/// Field manager of the records this route applies.
const MANAGER: &str = "molecule-shim";

/// Keys of the namespace's global Secret with a non-empty value: what the env preflight takes
/// as available.
async fn global_env(client: &kube::Client, ns: &str) -> Result<BTreeSet<String>, kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get_opt(crate::resources::names::GLOBAL_SECRET).await?;
    Ok(s.as_ref()
        .map(crate::resources::names::non_empty_keys)
        .unwrap_or_default())
}

/// A template dir as the listing names it: one path component, no dot-dirs.
fn check_dir(dir: &str) -> Result<(), ShimError> {
    let ok = !dir.is_empty()
        && dir.len() <= 128
        && !dir.starts_with('.')
        && dir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ShimError::bad(
            "field `dir` must name a template directory under the org template root (letters, digits, `.`, `_`, `-`; no path)",
        ))
    }
}

/// The OrgImport name for a template: its dir (or `name:`) as a DNS-1123 label.
pub fn record_name(hint: &str) -> Option<String> {
    let mut out = String::new();
    for c in hint.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 63 {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_string();
    (!out.is_empty()).then_some(out)
}

/// `GET /org/templates`: every template under the root with its name, description, workspace
/// count (spawning:false subtrees included) and required env.
pub async fn templates(State(shim): State<Arc<Shim>>, headers: HeaderMap) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let opts = shim.org_templates.clone();
    let list = tokio::task::spawn_blocking(move || orgtemplate::list_templates_with(&opts))
        .await
        .map_err(|_| ShimError::Unavailable("the template listing failed; see the operator log"))?;
    Ok(axum::Json(list).into_response())
}

/// `POST /org/import {dir | template, mode, force, name}`.
pub async fn import(State(shim): State<Arc<Shim>>, headers: HeaderMap, body: Body) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let m = input::object(body, false).await?;
    let f = Fields(&m);
    let dir = f.str("dir", 128)?;
    let template = f.text("template", input::MAX_BODY)?;
    let mode = match f.str("mode", 16)?.as_deref() {
        None | Some("") | Some("merge") => OrgImportMode::Merge,
        Some("reconcile") => OrgImportMode::Reconcile,
        Some(_) => {
            return Err(ShimError::bad(
                "field `mode` must be `merge` or `reconcile`",
            ));
        }
    };
    let force = f.bool("force")?.unwrap_or(false);
    let explicit_name = f.str("name", 63)?;
    let source = match (&dir, &template) {
        (Some(d), None) => {
            check_dir(d)?;
            Source::Dir(d.clone())
        }
        (None, Some(t)) => Source::Inline(t.clone()),
        _ => return Err(ShimError::bad("give exactly one of `dir` or `template`")),
    };

    // Load the template now: a broken one is refused before any record exists.
    let opts = shim.org_templates.clone();
    let loaded = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || orgtemplate::load_plan(&opts, &source))
            .await
            .map_err(|_| {
                ShimError::Unavailable("loading the template failed; see the operator log")
            })?
    };
    let plan = match loaded {
        Ok(p) => p,
        Err(e) if e.kind == orgtemplate::ErrorKind::NotFound && dir.is_some() => {
            return Err(ShimError::NotFound("template"));
        }
        Err(e) => {
            return Err(ShimError::Body(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": format!("the template is invalid: {e}"), "reason": e.category()}),
            ));
        }
    };
    let ns = shim.namespace.clone();
    if !force {
        let available: BTreeSet<String> = global_env(&shim.client, &ns).await?;
        let pre = orgtemplate::preflight(&plan, &available);
        if !pre.ok() {
            return Err(ShimError::Body(
                StatusCode::PRECONDITION_FAILED,
                json!({
                    "error": "missing required env",
                    "missing_env": pre.missing_env,
                    "required_env": pre.required_env,
                }),
            ));
        }
    }

    let hint = explicit_name
        .clone()
        .or_else(|| dir.clone())
        .unwrap_or_else(|| plan.name.clone());
    let Some(name) = record_name(&hint) else {
        return Err(ShimError::bad(
            "the import needs a `name` (letters and digits) for its OrgImport record",
        ));
    };
    let record = OrgImport::new(
        &name,
        OrgImportSpec {
            source: OrgImportSource {
                dir,
                template,
                git: None,
            },
            mode,
            force,
            // Never a policy: the record gets the operator's template policy defaults, and
            // only the admin raises them, on the record itself (ADR 0039). This route takes
            // the admin token anyway; it has no way to carry a policy.
            policy: None,
            ..Default::default()
        },
    );
    let api: Api<OrgImport> = Api::namespaced(shim.client.clone(), &ns);
    let existed = api.get_opt(&name).await?.is_some();
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&record),
        )
        .await?;
    shim.audit
        .record(
            "org.import.requested",
            &ns,
            &name,
            json!({"mode": if mode == OrgImportMode::Reconcile { "reconcile" } else { "merge" }, "force": force, "desired": plan.workspaces.len()}),
        )
        .await;
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        code,
        axum::Json(json!({
            "status": "importing",
            "name": applied.name_any(),
            "namespace": ns,
            "org": plan.name,
            "mode": if mode == OrgImportMode::Reconcile { "reconcile" } else { "merge" },
            "desired": plan.workspaces.len(),
            "skipped": plan.skipped,
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_single_safe_components() {
        for ok in ["research-lab", "a.b_c", "Team1"] {
            assert!(check_dir(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "..",
            "/abs",
            "a b",
            "a;b",
            &"x".repeat(129),
        ] {
            assert!(check_dir(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_names_are_dns_labels() {
        assert_eq!(record_name("Research Lab").as_deref(), Some("research-lab"));
        assert_eq!(record_name("a__b..c").as_deref(), Some("a-b-c"));
        assert_eq!(record_name("---"), None);
        assert_eq!(record_name(&"x".repeat(100)).map(|n| n.len()), Some(63));
    }
}
