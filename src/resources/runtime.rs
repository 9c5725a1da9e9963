//! `Runtime` (`rt`, cluster-scoped): which image a runtime resolves to, and why.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// An agent runtime and the image it runs.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "molecule.ai",
    version = "v1alpha1",
    kind = "Runtime",
    plural = "runtimes",
    shortname = "rt",
    category = "molecule",
    status = "RuntimeStatus",
    doc = "A Runtime names an agent runtime and says how its image is obtained (registry, local build or built in).",
    printcolumn(name = "Image", type_ = "string", json_path = ".status.resolvedImage"),
    printcolumn(name = "Source", type_ = "string", json_path = ".status.source"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.digest",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Image repository, e.g. `registry.example/workspace-template-langgraph` (registry mode).
    /// Without it, `MOLECULE_IMAGE_REGISTRY` gives `<registry>/workspace-template-<name>`, and
    /// with neither the image is built locally from the template repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Tag in registry mode (default `latest`). Moving tags (`latest`, `main`, ...) are re-pulled
    /// on every workspace start; pinned ones never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A pinned digest (`sha256:...`) wins over the tag (registry mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Pull credentials: a Secret of type `kubernetes.io/dockerconfigjson`, or one with
    /// `username` and `password` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<NamespacedSecretReference>,
    /// Build the image locally from a git repository (local-build mode), even when a registry
    /// is configured. The repository must start with the allowed template prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_build: Option<LocalBuildSource>,
    /// Poll the source (registry digest or template HEAD) and roll this runtime's workspaces
    /// onto a new image, one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_refresh: Option<AutoRefresh>,
    /// Env names every workspace of this runtime needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_env: Vec<String>,
    /// Override of the 10 minute provision timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub provision_timeout_seconds: Option<i64>,
}

/// A Secret in a given namespace (a Runtime is cluster-scoped).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct NamespacedSecretReference {
    /// Namespace of the Secret (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// A git repository to build the runtime image from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct LocalBuildSource {
    /// Repository URL; default `<template prefix><name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Branch, tag or `HEAD` (default).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

/// Source polling.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoRefresh {
    pub enabled: bool,
    /// Seconds between polls (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub interval_seconds: Option<i64>,
}

/// How the image was obtained.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    Registry,
    LocalBuild,
    Builtin,
}

impl ImageSource {
    /// The name used in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageSource::Registry => "registry",
            ImageSource::LocalBuild => "local-build",
            ImageSource::Builtin => "builtin",
        }
    }
}

/// Observed state of a runtime.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the source resolves), `ImageAvailable` (the image is on this engine) and, after
    /// a refresh, `RolledOut`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The image reference workspaces of this runtime start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_image: Option<String>,
    /// Registry mode: the manifest digest the reference points at; otherwise the local image id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSource>,
    /// Local-build mode: the template commit the image is built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from_sha: Option<String>,
    /// When the current resolution (image and digest) was first observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
}
