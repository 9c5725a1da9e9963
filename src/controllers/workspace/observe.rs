//! Observe: the Workspace controller's reads before it decides — the record as it is now
//! (ADR 0028), the runtime it names (ADR 0030), the namespace's Secrets and what runs on the
//! backend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::validate::{Permanent, permanent, unresolved};
use super::{BUILTIN_RUNTIMES, Context, WorkspaceError, env, wref};
use crate::backends::WorkspaceRef;
use crate::resources::{Backend, Runtime, Workspace, WorkspaceStatus};

/// One pass over one record: what was read, and the status being built.
pub(super) struct Pass {
    pub ws: Arc<Workspace>,
    pub w: WorkspaceRef,
    /// `spec.backend`, or the operator's default.
    pub kind: Backend,
    pub generation: i64,
    /// The pass's clock, as RFC 3339 (conditions) and seconds (timeouts).
    pub now: String,
    pub now_s: i64,
    /// The status as read; `next` starts from it.
    pub before: WorkspaceStatus,
    pub next: WorkspaceStatus,
}

/// The record `cached` stands for, as it is now; `None` when it is gone, re-created (its own
/// events follow) or being deleted (the deletion's watch event runs cleanup). Decided from the
/// API, not the watch cache: a reconcile queued by a Docker event can run before the cache has
/// this controller's previous status write, and a stale `containerId` would make a fresh
/// container look unrecorded and get replaced.
pub(super) async fn record(
    ctx: &Context,
    cached: &Workspace,
) -> Result<Option<Pass>, WorkspaceError> {
    let w = wref(cached)?;
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &w.namespace);
    let ws = match crate::controllers::report::fresh(&api, cached).await? {
        Some(fresh) if fresh.metadata.deletion_timestamp.is_none() => Arc::new(fresh),
        _ => return Ok(None),
    };
    let generation = ws.metadata.generation.unwrap_or(1);
    let before = ws.status.clone().unwrap_or_default();
    let mut next = before.clone();
    next.observed_generation = Some(generation);
    // The Tier column shows what the workspace runs with (ADR 0048).
    next.tier = Some(ws.spec.tier.unwrap_or(2));
    Ok(Some(Pass {
        kind: ctx.backends.kind_of(ws.spec.backend),
        w,
        ws,
        generation,
        now: crate::util::now_rfc3339(),
        now_s: jiff::Timestamp::now().as_second(),
        before,
        next,
    }))
}

/// What the record asks the backend to run.
pub(super) enum Target {
    External,
    /// A container (or instance) from the image `want` resolves to when it is provisioned;
    /// `key` stands for that image in the desired hash (the explicit image, the echo tag, or
    /// the runtime name — a runtime's new image reaches running workspaces through a roll, one
    /// at a time, not through every workspace noticing at once).
    Image {
        want: ImageWant,
        key: String,
    },
}

/// Where a workspace's image comes from.
pub(super) enum ImageWant {
    /// `spec.image`.
    Explicit(String),
    /// The runtime's resolution (through the Runtime record, if any).
    Runtime {
        name: String,
        record: Option<Box<Runtime>>,
    },
    /// The control plane picks the machine image by runtime name (and `spec.image`, if set):
    /// nothing is pulled or built here.
    ControlPlane(Option<String>),
    /// A reference the cluster pulls (the kubernetes backend, ADR 0057): nothing is pulled or
    /// built here.
    Reference(String),
}

/// What a workspace's Runtime record asks of it.
pub(super) struct RuntimeNeeds {
    /// Env names every workspace of the runtime must have, checked before anything is created.
    pub required_env: Vec<String>,
    /// The runtime's own provision timeout (e.g. hermes 30 min), overriding the default.
    pub provision_timeout: Option<Duration>,
}

/// The Secrets the workspace's env reads ([`env::referenced_secrets`]), as text; one that does
/// not exist is absent. Fetched by name: a namespace may hold a Secret per workspace (the
/// kubernetes backend's, ADR 0057), so listing them all on every pass would grow with the team.
/// A name no Secret can have (`../x`, `a?b`, empty) is absent without a request: the client
/// puts names into the URL path as they are.
pub(super) async fn load_secrets(
    client: &Client,
    ns: &str,
    names: &std::collections::BTreeSet<String>,
) -> Result<env::Secrets, WorkspaceError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let possible = names
        .iter()
        .filter(|n| crate::apiserver::validation::validate_dns1123_subdomain(n).is_none());
    let found = futures::future::try_join_all(possible.map(|n| api.get_opt(n))).await?;
    let mut out = env::Secrets::new();
    for s in found.into_iter().flatten() {
        let mut kv = BTreeMap::new();
        for (k, v) in s.data.unwrap_or_default() {
            if let Ok(text) = String::from_utf8(v.0) {
                kv.insert(k, text);
            }
        }
        out.insert(s.metadata.name.unwrap_or_default(), kv);
    }
    Ok(out)
}

/// The Runtime record `name`: from the process's Runtime cache where the controller has one
/// (ADR 0025), else read from the API. A record the cache has not seen yet is absent for this
/// pass; its arrival wakes the Workspaces that name it, which then resolve it.
async fn runtime_record(
    ctx: &Context,
    api: &Api<Runtime>,
    name: &str,
) -> Result<Option<Runtime>, kube::Error> {
    match &ctx.runtimes {
        Some(cache) => Ok(cache
            .get(&kube::runtime::reflector::ObjectRef::new(name))
            .map(|r| r.as_ref().clone())),
        None => api.get_opt(name).await,
    }
}

/// Resolves the runtime to an image (or none, for external agents).
pub(super) async fn target(
    ws: &Workspace,
    ctx: &Context,
    kind: Backend,
) -> Result<Result<(Target, RuntimeNeeds), Permanent>, WorkspaceError> {
    let runtime = ws.spec.runtime.as_deref().unwrap_or("echo");
    let runtimes: Api<Runtime> = Api::all(ctx.client.clone());
    // Only a possible object name is looked up: anything else (`../x`, spaces, ...) is simply
    // an unknown runtime, never part of an API path.
    let nameable = !runtime.is_empty()
        && runtime.len() <= 253
        && runtime
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let record = if nameable {
        runtime_record(ctx, &runtimes, runtime).await?
    } else {
        None
    };
    let required = RuntimeNeeds {
        required_env: record
            .as_ref()
            .map(|r| r.spec.required_env.clone())
            .unwrap_or_default(),
        provision_timeout: record
            .as_ref()
            .and_then(|r| r.spec.provision_timeout_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s as u64)),
    };
    if runtime == "external" {
        return Ok(Ok((Target::External, required)));
    }
    let explicit = ws.spec.image.clone().filter(|i| !i.is_empty());
    if kind == Backend::Kubernetes {
        let image = explicit.or_else(|| {
            record
                .as_ref()
                .and_then(|r| r.spec.image.clone())
                .filter(|i| !i.is_empty())
        });
        return Ok(match image {
            Some(img) => Ok((
                Target::Image {
                    want: ImageWant::Reference(img.clone()),
                    key: img,
                },
                required,
            )),
            None => Err(permanent(
                "ImageRequired",
                format!(
                    "runtime {:?} has no image the cluster can pull: on the kubernetes backend the operator neither builds nor pulls images, so set spec.image or give the Runtime record spec.image",
                    runtime.chars().take(80).collect::<String>()
                ),
            )),
        });
    }
    let is_builtin_echo = runtime == crate::images::plan::BUILTIN_ECHO
        && record
            .as_ref()
            .is_none_or(|r| r.spec.image.is_none() && r.spec.local_build.is_none());
    if kind == Backend::ControlPlane && (is_builtin_echo || record.is_some() || explicit.is_some())
    {
        let key = explicit
            .clone()
            .unwrap_or_else(|| format!("runtime:{runtime}"));
        return Ok(Ok((
            Target::Image {
                want: ImageWant::ControlPlane(explicit),
                key,
            },
            required,
        )));
    }
    if let Some(img) = explicit {
        return Ok(Ok((
            Target::Image {
                want: ImageWant::Explicit(img.clone()),
                key: img,
            },
            required,
        )));
    }
    if is_builtin_echo {
        return match ctx.images.echo_image().await {
            Ok(tag) => Ok(Ok((
                Target::Image {
                    want: ImageWant::Runtime {
                        name: runtime.to_string(),
                        record: record.map(Box::new),
                    },
                    key: tag,
                },
                required,
            ))),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => Ok(Err(permanent(
                "ImageBuildFailed",
                format!(
                    "the built-in echo image could not be built: {}",
                    e.category()
                ),
            ))),
        };
    }
    if record.is_some() {
        return Ok(Ok((
            Target::Image {
                want: ImageWant::Runtime {
                    name: runtime.to_string(),
                    record: record.map(Box::new),
                },
                key: format!("runtime:{runtime}"),
            },
            required,
        )));
    }
    let mut known: Vec<String> = BUILTIN_RUNTIMES.iter().map(|s| s.to_string()).collect();
    match &ctx.runtimes {
        Some(cache) => known.extend(cache.state().iter().map(|r| r.name_any())),
        None => {
            for r in runtimes.list(&ListParams::default()).await?.items {
                known.push(r.name_any());
            }
        }
    }
    known.sort();
    known.dedup();
    let shown: String = runtime.chars().take(80).collect();
    let why = format!(
        "unknown runtime {shown:?}; known runtimes: {}",
        known.join(", ")
    );
    // A Runtime record of that name may still be created: Pending until the provision
    // timeout. A name no record can have never resolves: Failed at once.
    if nameable {
        Ok(Err(unresolved("UnknownRuntime", why)))
    } else {
        Ok(Err(permanent("UnknownRuntime", why)))
    }
}
