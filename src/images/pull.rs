//! Registry mode (ADR 0030): resolve a runtime's image to a registry digest and pull it,
//! with the credentials of the runtime's Secret.

use super::*;

impl Images {
    pub(super) async fn ensure_registry(
        &self,
        runtime: &str,
        image: &ImageRef,
        creds: Option<&Credentials>,
        purpose: Purpose,
    ) -> Result<Resolved, ImageError> {
        let reference = image.canonical();
        let present = self.local_id(&reference).await?.is_some();
        let want_pull = purpose == Purpose::Refresh || image.is_moving() || !present;
        let mut note = None;
        if want_pull {
            match self.pull(runtime, image, creds).await {
                Ok(()) => {}
                Err(e) if present && purpose == Purpose::Start => {
                    tracing::warn!(runtime, image = %reference, error = %e, "re-pull failed; starting from the cached image");
                    note = Some(format!(
                        "re-pulling {reference} failed ({}); started from the cached image",
                        e.category()
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        let inspect = match self.docker.inspect_image(&reference).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(ImageError::Missing(reference));
            }
            Err(e) => return Err(map_error("inspect image", e).into()),
        };
        let repo = image.repository();
        let digest = inspect
            .repo_digests
            .unwrap_or_default()
            .iter()
            .find_map(|d| {
                d.split_once('@')
                    .filter(|(r, _)| *r == repo)
                    .map(|(_, d)| d.to_string())
            })
            .or(inspect.id);
        Ok(Resolved {
            image: reference,
            fingerprint: digest.clone().unwrap_or_default(),
            digest,
            source: ImageSource::Registry,
            built_from_sha: None,
            available: true,
            note,
        })
    }

    /// Pulls `image` (with the platform override and credentials), bounded by the build timeout.
    pub(super) async fn pull(
        &self,
        runtime: &str,
        image: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<(), ImageError> {
        let reference = image.canonical();
        let tag = image
            .digest
            .clone()
            .or_else(|| image.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let mut options = CreateImageOptionsBuilder::default()
            .from_image(&image.repository())
            .tag(&tag);
        if let Some(p) = &self.settings.platform {
            options = options.platform(p);
        }
        let credentials = creds.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(image.registry_host()),
            ..Default::default()
        });
        let t = Instant::now();
        tracing::info!(runtime, image = %reference, platform = ?self.settings.platform, "pulling");
        let drain = async {
            let mut stream = self
                .docker
                .create_image(Some(options.build()), None, credentials);
            // Progress lines at most every few seconds (ADR 0043).
            let mut progress = progress::PullProgress::default();
            let mut ticker = progress::Ticker::new(progress::EVERY);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail {
                            let msg = detail.message.unwrap_or_default();
                            return Err(pull_failed(&reference, &msg));
                        }
                        let detail = info.progress_detail.as_ref();
                        progress.observe(
                            info.id.as_deref(),
                            info.status.as_deref(),
                            detail.and_then(|d| d.current),
                            detail.and_then(|d| d.total),
                        );
                        if ticker.due(Instant::now()) {
                            let p = progress.snapshot();
                            tracing::info!(
                                runtime,
                                image = %reference,
                                layers_done = p.layers_done,
                                layers = p.layers,
                                bytes_done = p.bytes_done,
                                bytes_total = p.bytes_total,
                                secs = t.elapsed().as_secs(),
                                "pulling: progress"
                            );
                        }
                    }
                    Err(DockerError::DockerStreamError { error }) => {
                        return Err(pull_failed(&reference, &error));
                    }
                    Err(DockerError::DockerResponseServerError { message, .. }) => {
                        return Err(pull_failed(&reference, &message));
                    }
                    Err(e) => return Err(ImageError::Engine(map_error("pull image", e))),
                }
            }
            Ok(())
        };
        let result = match tokio::time::timeout(self.settings.build_timeout, drain).await {
            Ok(r) => r,
            Err(_) => Err(ImageError::PullFailed {
                image: reference.clone(),
                detail: format!(
                    "did not finish within {}s",
                    self.settings.build_timeout.as_secs()
                ),
                transient: true,
            }),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.inc(
            "molecule_image_pulls_total",
            &[("runtime", runtime), ("result", outcome)],
        );
        match &result {
            Ok(()) => {
                tracing::info!(runtime, image = %reference, ms = t.elapsed().as_millis() as u64, "pulled")
            }
            Err(e) => {
                tracing::warn!(runtime, image = %reference, ms = t.elapsed().as_millis() as u64, error = %e, "pull failed")
            }
        }
        result
    }

    /// Pull credentials from the runtime's Secret.
    pub(super) async fn credentials(
        &self,
        spec: &RuntimeSpec,
        image: &ImageRef,
    ) -> Result<Option<Credentials>, ImageError> {
        let Some(r) = &spec.pull_secret else {
            return Ok(None);
        };
        let ns = r.namespace.clone().unwrap_or_else(|| "default".into());
        let what = format!("{ns}/{}", r.name);
        let api: kube::Api<Secret> = kube::Api::namespaced(self.client.clone(), &ns);
        let secret = api
            .get_opt(&r.name)
            .await?
            .ok_or_else(|| ImageError::PullSecret {
                secret: what.clone(),
                detail: "not found".into(),
            })?;
        credentials_from_secret(&secret, &image.registry_host())
            .map(Some)
            .map_err(|detail| ImageError::PullSecret {
                secret: what,
                detail,
            })
    }

    /// The template commit (one capped `ls-remote`), as an [`ImageError`].
    pub(super) async fn head(
        &self,
        runtime: &str,
        repo: &str,
        git_ref: &str,
    ) -> Result<String, ImageError> {
        let r = git::head_sha(
            repo,
            git_ref,
            self.settings.template_token.as_deref(),
            &self.masker,
            self.settings.lookup_timeout,
        )
        .await;
        self.metrics.inc(
            "molecule_image_lookups_total",
            &[
                ("runtime", runtime),
                ("result", if r.is_ok() { "ok" } else { "error" }),
            ],
        );
        r.map_err(|source| match source {
            GitError::NotFound { repo } => ImageError::NotMirrored {
                runtime: runtime.to_string(),
                repo,
            },
            source => ImageError::Git {
                runtime: runtime.to_string(),
                source,
            },
        })
    }
}

pub(super) fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(super) fn pull_failed(image: &str, message: &str) -> ImageError {
    let lower = message.to_ascii_lowercase();
    let permanent = [
        "not found",
        "manifest unknown",
        "unauthorized",
        "denied",
        "no matching manifest",
        "invalid reference",
    ]
    .iter()
    .any(|m| lower.contains(m));
    ImageError::PullFailed {
        image: image.to_string(),
        detail: message.trim().chars().take(300).collect(),
        transient: !permanent,
    }
}

/// Reads registry credentials from a Secret: a `kubernetes.io/dockerconfigjson` entry for
/// `host`, or plain `username`/`password` keys.
pub fn credentials_from_secret(secret: &Secret, host: &str) -> Result<Credentials, String> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .or_else(|| secret.string_data.as_ref().and_then(|s| s.get(k).cloned()))
    };
    if let Some(cfg) = text(".dockerconfigjson") {
        let v: serde_json::Value =
            serde_json::from_str(&cfg).map_err(|_| ".dockerconfigjson is not JSON".to_string())?;
        let auths = v
            .get("auths")
            .and_then(|a| a.as_object())
            .ok_or_else(|| ".dockerconfigjson has no auths".to_string())?;
        let entry = auths
            .iter()
            .find(|(k, _)| {
                let k = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                k.split('/').next() == Some(host)
            })
            .map(|(_, v)| v)
            .ok_or_else(|| format!(".dockerconfigjson has no entry for {host}"))?;
        let field = |k: &str| entry.get(k).and_then(|x| x.as_str()).map(str::to_string);
        if let (Some(u), Some(p)) = (field("username"), field("password")) {
            return Ok(Credentials {
                username: u,
                password: p,
            });
        }
        if let Some(auth) = field("auth") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("the auth of {host} is not base64 user:password"))?;
            if let Some((u, p)) = decoded.split_once(':') {
                return Ok(Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                });
            }
        }
        return Err(format!("the entry for {host} has no username/password"));
    }
    match (text("username"), text("password")) {
        (Some(username), Some(password)) => Ok(Credentials { username, password }),
        _ => Err("needs keys username and password, or .dockerconfigjson".into()),
    }
}
