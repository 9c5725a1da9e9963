//! Local mode (ADR 0030): shallow-clone the template at its HEAD into the build cache and build
//! it through the Docker API, never leaving a half-built tag behind.

use super::*;

impl Images {
    pub(super) async fn ensure_local(
        &self,
        runtime: &str,
        repo: &str,
        git_ref: &str,
        previous: Option<&str>,
    ) -> Result<Resolved, ImageError> {
        let sha = match self.head(runtime, repo, git_ref).await {
            Ok(sha) => sha,
            Err(e) if e.is_transient() => {
                // The host is down: the last image built for this runtime still serves.
                if let Some(prev) =
                    previous.filter(|p| p.starts_with(&reference::local_repository(runtime)))
                    && let Some(id) = self.local_id(prev).await?
                {
                    tracing::warn!(runtime, image = %prev, error = %e, "template host unreachable; using the last built image");
                    return Ok(Resolved {
                        image: prev.to_string(),
                        digest: Some(id),
                        source: ImageSource::LocalBuild,
                        built_from_sha: None,
                        available: true,
                        fingerprint: prev.to_string(),
                        note: Some(format!(
                            "the template host is unreachable ({}); started from the last built image",
                            e.category()
                        )),
                    });
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let tag = reference::local_tag(runtime, &sha);
        if let Some(id) = self.local_id(&tag).await? {
            self.metrics
                .inc("molecule_image_cache_hits_total", &[("runtime", runtime)]);
            tracing::debug!(runtime, image = %tag, "local build cache hit");
            return Ok(Resolved {
                image: tag,
                digest: Some(id),
                source: ImageSource::LocalBuild,
                built_from_sha: Some(sha.clone()),
                available: true,
                fingerprint: sha,
                note: None,
            });
        }
        let (sha, tag, id) = self.clone_and_build(runtime, repo, git_ref, &sha).await?;
        Ok(Resolved {
            image: tag,
            digest: Some(id),
            source: ImageSource::LocalBuild,
            built_from_sha: Some(sha.clone()),
            available: true,
            fingerprint: sha,
            note: None,
        })
    }

    /// Shallow-clones `sha` into `<cache>/<runtime>/<sha12>` (unless a complete clone is there)
    /// and builds it; returns the commit actually built, its tag and the image id.
    pub(super) async fn clone_and_build(
        &self,
        runtime: &str,
        repo: &str,
        git_ref: &str,
        sha: &str,
    ) -> Result<(String, String, String), ImageError> {
        let dir = self.settings.build_cache.join(runtime);
        let git_err = |source: GitError| ImageError::Git {
            runtime: runtime.to_string(),
            source,
        };
        let io_err = |what: &str, e: std::io::Error| ImageError::BuildFailed {
            image: reference::local_tag(runtime, sha),
            detail: format!("{what}: {e}"),
        };
        create_private_dir(&dir).map_err(|e| io_err("creating the build cache", e))?;
        let mut sha = sha.to_string();
        let mut clone = dir.join(&sha[..12]);
        if !clone.join(".git").is_dir() {
            let tmp = dir.join(format!(
                ".tmp-{}-{}",
                &sha[..12],
                crate::util::random_suffix(6)
            ));
            let t = Instant::now();
            tracing::info!(runtime, repo = %git::display_url(repo), into = %tmp.display(), "local-build: cloning");
            let fetched = git::shallow_fetch(
                repo,
                &sha,
                git_ref,
                &tmp,
                self.settings.template_token.as_deref(),
                &self.masker,
                self.settings.build_timeout,
            )
            .await;
            let fetched = match fetched {
                Ok(f) => f,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    return Err(git_err(e));
                }
            };
            self.metrics
                .inc("molecule_image_clones_total", &[("runtime", runtime)]);
            if fetched != sha {
                // HEAD moved between the lookup and the fetch: build what was fetched.
                tracing::info!(runtime, looked_up = %sha, fetched = %fetched, "template moved during the clone; building the fetched commit");
                sha = fetched;
                clone = dir.join(&sha[..12]);
            }
            let _ = std::fs::remove_dir_all(&clone);
            std::fs::rename(&tmp, &clone).map_err(|e| io_err("moving the clone into place", e))?;
            tracing::info!(
                runtime,
                ms = t.elapsed().as_millis() as u64,
                "local-build: cloned"
            );
        }
        let tag = reference::local_tag(runtime, &sha);
        let context = git::archive(&clone, &sha, CONTEXT_CAP, self.settings.build_timeout)
            .await
            .map_err(git_err)?;
        let id = self.build(runtime, &sha, &tag, context).await?;
        prune_cache(&dir, &sha[..12]);
        Ok((sha, tag, id))
    }

    /// Builds `context` through the Docker API under a temporary tag and only then tags it
    /// `tag`, so a failed or interrupted build never leaves `tag` behind. No build args.
    pub(super) async fn build(
        &self,
        runtime: &str,
        sha: &str,
        tag: &str,
        context: Vec<u8>,
    ) -> Result<String, ImageError> {
        let repo = reference::local_repository(runtime);
        let prefix = format!("building-{}-", self.settings.instance);
        self.remove_tags(&repo, &prefix).await;
        let temp = format!("{repo}:{prefix}{}", crate::util::random_suffix(8));
        // No build-time labels: the classic builder turns them into an extra committed step
        // (seconds on some storage drivers); the tag already names the commit.
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(&temp)
            .rm(true)
            .forcerm(true);
        if let Some(p) = &self.settings.platform {
            options = options.platform(p);
        }
        let t = Instant::now();
        tracing::info!(runtime, image = %tag, commit = %sha, bytes = context.len(), "local-build: docker build");
        let drain = async {
            let mut stream = self.docker.build_image(
                options.build(),
                None,
                Some(bollard::body_full(context.into())),
            );
            // Progress lines at most every few seconds (ADR 0043).
            let mut ticker = progress::Ticker::new(progress::EVERY);
            let mut step: Option<String> = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail {
                            return Err(detail.message.unwrap_or_default());
                        }
                        if let Some(line) = info.stream.as_deref().map(str::trim)
                            && !line.is_empty()
                        {
                            tracing::debug!(runtime, "{}", self.mask(line));
                            if let Some(s) = progress::build_step(line) {
                                step = Some(s);
                            }
                        }
                        if let Some(s) = &step
                            && ticker.due(Instant::now())
                        {
                            tracing::info!(runtime, image = %tag, step = %s, secs = t.elapsed().as_secs(), "local-build: progress");
                        }
                    }
                    Err(DockerError::DockerStreamError { error }) => return Err(error),
                    Err(DockerError::DockerResponseServerError { message, .. }) => {
                        return Err(message);
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(self.settings.build_timeout, drain).await;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(msg)) => Some(self.mask(msg.trim())),
            Err(_) => Some(format!(
                "did not finish within {}s",
                self.settings.build_timeout.as_secs()
            )),
        };
        let result = match failure {
            Some(detail) => Err(ImageError::BuildFailed {
                image: tag.to_string(),
                detail: detail.chars().take(500).collect(),
            }),
            None => {
                let (final_repo, final_tag) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
                let tagged = self
                    .docker
                    .tag_image(
                        &temp,
                        Some(
                            TagImageOptionsBuilder::default()
                                .repo(final_repo)
                                .tag(final_tag)
                                .build(),
                        ),
                    )
                    .await;
                match tagged {
                    Ok(()) => match self.local_id(tag).await? {
                        Some(id) => Ok(id),
                        None => Err(ImageError::Missing(tag.to_string())),
                    },
                    Err(e) => Err(map_error("tag image", e).into()),
                }
            }
        };
        self.remove_tag(&temp).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.inc(
            "molecule_image_builds_total",
            &[("runtime", runtime), ("result", outcome)],
        );
        self.metrics.observe(
            "molecule_image_build_seconds",
            &[("runtime", runtime)],
            t.elapsed().as_secs_f64(),
        );
        match &result {
            Ok(_) => {
                tracing::info!(runtime, image = %tag, ms = t.elapsed().as_millis() as u64, "local-build: docker build done")
            }
            Err(e) => {
                tracing::warn!(runtime, image = %tag, ms = t.elapsed().as_millis() as u64, error = %e, "local-build: build failed")
            }
        }
        result
    }

    /// Removes one tag (never the image other tags keep).
    pub(super) async fn remove_tag(&self, tag: &str) {
        let options = RemoveImageOptionsBuilder::default().noprune(false).build();
        if let Err(e) = self.docker.remove_image(tag, Some(options), None).await
            && status_of(&e) != Some(404)
        {
            tracing::warn!(image = %tag, error = %e, "could not remove a temporary build tag");
        }
    }

    /// Removes this installation's leftover temporary build tags of `repo` (a crash mid-build).
    pub(super) async fn remove_tags(&self, repo: &str, tag_prefix: &str) {
        let filters = HashMap::from([("reference", vec![format!("{repo}:{tag_prefix}*")])]);
        let Ok(images) = self
            .docker
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
        else {
            return;
        };
        let own = format!("{repo}:{tag_prefix}");
        for t in images
            .iter()
            .flat_map(|i| i.repo_tags.iter())
            .filter(|t| t.starts_with(&own))
        {
            self.remove_tag(t).await;
        }
    }
}

pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Some(parent) = dir.parent() {
            let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700));
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Removes every clone of a runtime but `keep` (the cache invalidates when HEAD moves), and
/// temporary clones a crash left behind.
pub(super) fn prune_cache(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != keep {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
