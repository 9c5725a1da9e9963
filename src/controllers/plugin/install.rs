//! Installing a fetched plugin into a running workspace container (ADR 0015), through the backend:
//! the new version is uploaded whole with the archive API into
//! `/configs/plugins/.staging/<name>.<stamp>/` (stage), then one exec recovers leftovers and
//! hashes the staged and live trees (prepare), the pure classifier decides, and one more exec
//! snapshots, renames and marks (swap) — or discards the stage when nothing changed.
//!
//! The steps run as the operator's own binary (`/molecule plugin-fs …`, present in the
//! `FROM scratch` echo image) or, in images without it, as the POSIX `sh` script of
//! [`crate::plugins::shell`]; which one is probed once per container.

use std::time::{Duration, Instant};

use crate::backends::{BackendError, ConfigFile, WorkspaceBackend, WorkspaceRef};
use crate::plugins::fs::{self, Layout, Report};
use crate::plugins::{Change, PluginTree, classify, shell, tree};

/// How the steps run inside the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `/molecule plugin-fs` (the echo image).
    Binary,
    /// `sh -c SCRIPT` (runtime images with a shell).
    Shell,
}

/// Durations of the in-container steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub stage: Duration,
    pub prepare: Duration,
    pub swap: Duration,
}

/// A finished install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub change: Change,
    /// Digest of the tree now live (as hashed inside the container).
    pub digest: String,
    /// The swap happened but `.complete` could not be written.
    pub marker_missing: bool,
    pub timings: Timings,
}

/// A step that failed; live content is intact or restored (see `restored`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailed {
    /// `StageFailed`, `SnapshotFailed`, `SwapFailed`, `UninstallFailed`, `HelperFailed`.
    pub reason: &'static str,
    pub message: String,
}

/// Why an install did not finish.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{}: {}", .0.reason, .0.message)]
    Step(StepFailed),
}

fn argv(method: Method, op: &str, l: &Layout, sha: &str, failpoints: bool) -> Vec<String> {
    match method {
        Method::Binary => {
            let mut v: Vec<String> = [
                crate::images::BINARY_PATH,
                "plugin-fs",
                op,
                fs::ROOT,
                &l.name,
                &l.stamp,
                sha,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if failpoints {
                v.push("--failpoints".into());
            }
            v
        }
        Method::Shell => shell::command(op, fs::ROOT, &l.name, &l.stamp, sha),
    }
}

async fn step(
    backend: &dyn WorkspaceBackend,
    w: &WorkspaceRef,
    method: Method,
    op: &str,
    l: &Layout,
    sha: &str,
    failpoints: bool,
) -> Result<Report, InstallError> {
    let out = backend
        .exec(w, &argv(method, op, l, sha, failpoints))
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = Report::parse(&stdout);
    if out.exit_code != 0 || report.result.is_empty() {
        tracing::warn!(workspace = %w.name, op, exit = out.exit_code, stderr = %String::from_utf8_lossy(&out.stderr).chars().take(500).collect::<String>(), "plugin step failed in the container");
        return Err(InstallError::Step(StepFailed {
            reason: "HelperFailed",
            message: format!(
                "the in-container {op} step exited with {} (see the operator log)",
                out.exit_code
            ),
        }));
    }
    if !out.stderr.is_empty() {
        tracing::warn!(workspace = %w.name, op, stderr = %String::from_utf8_lossy(&out.stderr).chars().take(500).collect::<String>(), "plugin step reported");
    }
    if !report.recovered.is_empty() {
        tracing::info!(workspace = %w.name, op, recovered = ?report.recovered, "recovered from an interrupted install");
    }
    Ok(report)
}

/// Which method works in the running container (`None`: neither the binary nor a usable shell).
pub async fn detect(
    backend: &dyn WorkspaceBackend,
    w: &WorkspaceRef,
) -> Result<Option<Method>, BackendError> {
    let probe = [crate::images::BINARY_PATH, "plugin-fs", "probe"].map(String::from);
    match backend.exec(w, &probe).await {
        Ok(o) if o.exit_code == 0 && o.stdout.starts_with(b"molecule-plugin-fs") => {
            return Ok(Some(Method::Binary));
        }
        Ok(_) => {}
        Err(e) if e.is_transient() => return Err(e),
        Err(_) => {}
    }
    let sh = [
        "sh",
        "-c",
        "command -v find >/dev/null && command -v sha256sum >/dev/null && command -v mv >/dev/null && echo ok",
    ]
    .map(String::from);
    match backend.exec(w, &sh).await {
        Ok(o) if o.exit_code == 0 && o.stdout.starts_with(b"ok") => Ok(Some(Method::Shell)),
        Ok(_) => Ok(None),
        Err(e) if e.is_transient() => Err(e),
        Err(_) => Ok(None),
    }
}

/// The files of `plugin` as config files under `dir` (relative to `/configs`).
pub fn files_under(plugin: &PluginTree, dir: &str) -> Vec<ConfigFile> {
    plugin
        .files()
        .map(|f| ConfigFile {
            path: format!("{dir}/{}", f.path),
            content: f.content.clone(),
            mode: f.mode,
        })
        .collect()
}

/// Stage → prepare → classify → swap (or discard when unchanged and marked).
pub async fn install(
    backend: &dyn WorkspaceBackend,
    w: &WorkspaceRef,
    method: Method,
    name: &str,
    sha: &str,
    plugin: &PluginTree,
    failpoints: bool,
) -> Result<Installed, InstallError> {
    let l = Layout::new(fs::ROOT, name, &fs::new_stamp()).map_err(|e| {
        InstallError::Step(StepFailed {
            reason: "StageFailed",
            message: e,
        })
    })?;
    let mut timings = Timings::default();
    let files = files_under(plugin, &l.staging_rel());
    let t = Instant::now();
    if let Err(e) = backend.write_files(w, &files).await {
        // Live is untouched; drop whatever part of the stage landed.
        let _ = step(backend, w, method, "discard", &l, "", false).await;
        return Err(e.into());
    }
    timings.stage = t.elapsed();

    let t = Instant::now();
    let prepared = match step(backend, w, method, "prepare", &l, "", failpoints).await {
        Ok(p) => p,
        Err(e) => {
            // The exec did not run (the container stopping under a restart): drop the stage
            // if the container still allows it; the next install or inspect heals it if not.
            let _ = step(backend, w, method, "discard", &l, "", false).await;
            return Err(e);
        }
    };
    timings.prepare = t.elapsed();
    let Some(staged) = prepared
        .staged
        .as_ref()
        .filter(|_| prepared.result == "prepared")
    else {
        return Err(InstallError::Step(StepFailed {
            reason: "StageFailed",
            message: prepared
                .error
                .unwrap_or_else(|| "the staged tree could not be read".into()),
        }));
    };
    if staged.len() != plugin.len() {
        let _ = step(backend, w, method, "discard", &l, "", false).await;
        return Err(InstallError::Step(StepFailed {
            reason: "StageFailed",
            message: format!(
                "{} of {} files arrived in the staging dir",
                staged.len(),
                plugin.len()
            ),
        }));
    }
    let digest = tree::tree_digest(staged);
    let change = classify(staged, prepared.live.as_ref());
    if change == Change::Unchanged && prepared.complete {
        step(backend, w, method, "discard", &l, "", false).await?;
        return Ok(Installed {
            change,
            digest,
            marker_missing: false,
            timings,
        });
    }
    let t = Instant::now();
    let swapped = step(backend, w, method, "swap", &l, sha, failpoints).await?;
    timings.swap = t.elapsed();
    match swapped.result.as_str() {
        "swapped" | "marker_failed" => Ok(Installed {
            change,
            digest,
            marker_missing: swapped.result == "marker_failed",
            timings,
        }),
        other => {
            let reason = match other {
                "snapshot_failed" => "SnapshotFailed",
                "swap_failed" => "SwapFailed",
                _ => "StageFailed",
            };
            Err(InstallError::Step(StepFailed {
                reason,
                message: swapped
                    .error
                    .unwrap_or_else(|| format!("the swap step reported {other}")),
            }))
        }
    }
}

/// The live tree of `name` (`None` when missing or unreadable) and whether it is marked.
pub async fn inspect(
    backend: &dyn WorkspaceBackend,
    w: &WorkspaceRef,
    method: Method,
    name: &str,
) -> Result<(Option<String>, bool), InstallError> {
    let l = Layout::new(fs::ROOT, name, &fs::new_stamp()).map_err(|e| {
        InstallError::Step(StepFailed {
            reason: "HelperFailed",
            message: e,
        })
    })?;
    let r = step(backend, w, method, "inspect", &l, "", false).await?;
    Ok((r.live.as_ref().map(tree::tree_digest), r.complete))
}

/// Removes `name` from the container (one rename out of sight, then delete).
pub async fn uninstall(
    backend: &dyn WorkspaceBackend,
    w: &WorkspaceRef,
    method: Method,
    name: &str,
) -> Result<(), InstallError> {
    let l = Layout::new(fs::ROOT, name, &fs::new_stamp()).map_err(|e| {
        InstallError::Step(StepFailed {
            reason: "UninstallFailed",
            message: e,
        })
    })?;
    let r = step(backend, w, method, "uninstall", &l, "", false).await?;
    if r.result != "uninstalled" {
        return Err(InstallError::Step(StepFailed {
            reason: "UninstallFailed",
            message: r
                .error
                .unwrap_or_else(|| "the plugin could not be removed".into()),
        }));
    }
    Ok(())
}

/// Uninstall without a running container: the archive API replaces the plugin directory with
/// an empty tombstone file (Docker's extraction removes a directory that a non-directory entry
/// replaces), so nothing of the plugin is left for a loader; the next install or recover
/// removes the tombstone.
pub async fn tombstone(
    backend: &dyn WorkspaceBackend,
    w: &WorkspaceRef,
    name: &str,
) -> Result<(), BackendError> {
    backend
        .write_files(
            w,
            &[ConfigFile {
                path: format!("plugins/{name}"),
                content: vec![],
                mode: 0o644,
            }],
        )
        .await
}
