//! Validate: what makes a Workspace record unusable as it stands. Each check returns a
//! [`Permanent`] problem, which fails the record (phase Failed, conditions, an Event) until
//! it changes; nothing is created for an invalid record.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::observe::Pass;
use super::{Context, env, files};
use crate::backends::{ConfigFile, Tier, WorkspaceBackend};
use crate::resources::{Backend, Workspace};

/// A permanent problem with the record: Failed until the record changes.
pub struct Permanent {
    pub reason: &'static str,
    pub message: String,
    /// The env names a Secret should hold (`status.missingEnv`).
    pub missing_env: Vec<String>,
    /// Something that may still appear (a Runtime record): Pending until the provision
    /// timeout, then Failed (ADR 0048).
    pub pending: bool,
}

/// A permanent problem without missing env.
pub fn permanent(reason: &'static str, message: impl Into<String>) -> Permanent {
    Permanent {
        reason,
        message: message.into(),
        missing_env: vec![],
        pending: false,
    }
}

/// A problem that may resolve without a change to the record: Pending until the provision
/// timeout.
pub fn unresolved(reason: &'static str, message: impl Into<String>) -> Permanent {
    Permanent {
        pending: true,
        ..permanent(reason, message)
    }
}

/// The backend `spec.backend` names, if this operator has it.
pub(super) fn backend(
    ctx: &Context,
    kind: Backend,
) -> Result<Arc<dyn WorkspaceBackend>, Permanent> {
    ctx.backends.get(kind).cloned().ok_or_else(|| match kind {
        Backend::Kubernetes => permanent(
            "KubernetesNotConfigured",
            "spec.backend is kubernetes but this process does not run the kubernetes backend: Pods are made by `molecule operator --kubernetes-backend` (or --default-backend kubernetes) against a cluster, not by `serve`",
        ),
        _ => permanent(
            "ControlPlaneNotConfigured",
            "spec.backend is controlPlane but this operator has no control plane configured (serve --control-plane-url)",
        ),
    })
}

/// Where and how big the workspace may run: no host directory on an instance, a tier of 1–4.
/// Tiers 3 and 4 are privileged Pods on Kubernetes: refused unless `allow_privileged`.
pub(super) fn placement(pass: &Pass, allow_privileged: bool) -> Result<Tier, Permanent> {
    if pass.kind != Backend::Docker && pass.ws.spec.workspace_dir.is_some() {
        return Err(permanent(
            "InvalidConfig",
            format!(
                "workspaceDir mounts a host directory and is not available with backend {}",
                super::kind_label(pass.kind)
            ),
        ));
    }
    let tier = pass.ws.spec.tier.unwrap_or(2);
    if pass.kind == Backend::Kubernetes && tier >= 3 && !allow_privileged {
        return Err(permanent(
            "TierNotAllowed",
            format!(
                "tier {tier} needs a privileged Pod, which this operator refuses; start it with --kubernetes-allow-privileged to allow tiers 3 and 4"
            ),
        ));
    }
    Tier::from_number(tier)
        .ok_or_else(|| permanent("InvalidConfig", "tier must be between 1 and 4"))
}

/// The user-supplied config files: `filesDir` (confined to the template root) plus inline files.
pub fn user_files(
    ws: &Workspace,
    template_root: &std::path::Path,
) -> Result<Vec<ConfigFile>, files::FilesError> {
    let mut out = match ws.spec.files.as_ref().and_then(|f| f.files_dir.as_deref()) {
        Some(dir) => files::read_files_dir(&files::resolve_files_dir(template_root, dir)?)?,
        None => vec![],
    };
    out.extend(files::inline_files(ws)?);
    Ok(out)
}

/// The container's env, or why it cannot be assembled (a missing Secret key: `MissingEnv`
/// with the names; anything else: `InvalidEnv`).
pub(super) fn env(
    pass: &Pass,
    secrets: &env::Secrets,
    platform_url: &str,
    tier: Tier,
    runtime_required: &[String],
) -> Result<BTreeMap<String, String>, Permanent> {
    let env_ctx = env::EnvContext {
        workspace: &pass.w.name,
        workspace_id: &pass.w.uid,
        platform_url,
        tier: tier.number(),
        runtime_required,
    };
    env::assemble(&pass.ws.spec, secrets, &env_ctx).map_err(|problems| env_problem(&problems))
}

fn env_problem(problems: &[env::EnvProblem]) -> Permanent {
    let missing = problems
        .iter()
        .find_map(|p| {
            if let env::EnvProblem::Missing(m) = p {
                Some(m.clone())
            } else {
                None
            }
        })
        .unwrap_or_default();
    let message = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let reason = if missing.is_empty() {
        "InvalidEnv"
    } else {
        "MissingEnv"
    };
    Permanent {
        reason,
        message,
        missing_env: missing,
        pending: false,
    }
}
