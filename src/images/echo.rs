//! Runtime images built locally, without a registry or network (ADR 0033): the built-in
//! `echo` image is a `FROM scratch` image holding the operator's own binary at `/molecule` plus the
//! shared libraries `ldd` reports, tagged by a hash of their content so an unchanged binary is
//! never rebuilt.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::archive::TarBuilder;
use crate::backends::BackendError;
use crate::backends::docker::map_error;

/// Repository of the built-in echo image.
pub const ECHO_REPOSITORY: &str = "molecule-local/echo";
/// Entrypoint of the built-in echo image.
pub const ECHO_ENTRYPOINT: &[&str] = &["/molecule", "agent"];
/// Label carried by every image built here.
pub const LABEL_MANAGED_IMAGE: &str = "molecule.platform.managed-image";
/// Where the binary lands inside the image.
pub const BINARY_PATH: &str = "/molecule";

const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const CONTEXT_ROOT: &str = "rootfs";

/// The tag [`ensure_echo_image`] builds for `binary` (runs `ldd` and hashes the files; blocking).
pub fn content_tag(binary: &Path) -> Result<String, BackendError> {
    Ok(Recipe::resolve(binary, ECHO_REPOSITORY, ECHO_ENTRYPOINT, None)?.tag)
}

/// [`content_tag`], remembering the hash in `memo_dir` (see [`ensure_echo_image_memo`]).
pub fn content_tag_memo(binary: &Path, memo_dir: &Path) -> Result<String, BackendError> {
    Ok(Recipe::resolve(binary, ECHO_REPOSITORY, ECHO_ENTRYPOINT, Some(memo_dir))?.tag)
}

/// Ensures the built-in echo image for `binary` exists locally and returns its tag.
pub async fn ensure_echo_image(docker: &Docker, binary: &Path) -> Result<String, BackendError> {
    ensure_image_for(docker, binary, ECHO_REPOSITORY, ECHO_ENTRYPOINT).await
}

/// [`ensure_echo_image`], remembering the content hash in `memo_dir` under the files'
/// identities (path, size, modification time, inode): a restart with the same binary does not
/// read it again (a 250 MB binary took about 170 ms of CPU per start; ADR 0033).
pub async fn ensure_echo_image_memo(
    docker: &Docker,
    binary: &Path,
    memo_dir: &Path,
) -> Result<String, BackendError> {
    ensure_image(
        docker,
        binary,
        ECHO_REPOSITORY,
        ECHO_ENTRYPOINT,
        Some(memo_dir.to_path_buf()),
    )
    .await
}

/// Removes the echo images of earlier operator binaries: every other tag of
/// [`ECHO_REPOSITORY`] with the managed-image label that no container uses (without `force`
/// the engine refuses an image a container, running or stopped, was created from). An operator
/// whose image went this way under it builds it again on its next start. Returns the removed
/// tags.
pub async fn prune_superseded(docker: &Docker, keep: &str) -> Vec<String> {
    let filters = std::collections::HashMap::from([
        ("reference", vec![ECHO_REPOSITORY.to_string()]),
        ("label", vec![format!("{LABEL_MANAGED_IMAGE}=true")]),
    ]);
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let Ok(images) = docker.list_images(Some(options)).await else {
        return vec![];
    };
    let own = format!("{ECHO_REPOSITORY}:");
    let mut removed = vec![];
    for tag in images
        .iter()
        .flat_map(|i| i.repo_tags.iter())
        .filter(|t| t.starts_with(&own) && t.as_str() != keep)
    {
        match docker
            .remove_image(
                tag,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            Ok(_) => removed.push(tag.clone()),
            Err(e) => tracing::debug!(image = %tag, error = %e, "superseded echo image kept"),
        }
    }
    removed
}

/// Ensures a `FROM scratch` image with `binary` at `/molecule`, its shared libraries at their
/// host paths, `entrypoint`, `EXPOSE 8000` and the managed-image label exists, tagged
/// `<repo>:<first 12 hex of the content hash>`; returns the tag. A present tag is a cache hit.
pub async fn ensure_image_for(
    docker: &Docker,
    binary: &Path,
    repo: &str,
    entrypoint: &[&str],
) -> Result<String, BackendError> {
    ensure_image(docker, binary, repo, entrypoint, None).await
}

async fn ensure_image(
    docker: &Docker,
    binary: &Path,
    repo: &str,
    entrypoint: &[&str],
    memo: Option<PathBuf>,
) -> Result<String, BackendError> {
    let binary_owned = binary.to_path_buf();
    let repo_owned = repo.to_string();
    let entry: Vec<String> = entrypoint.iter().map(|s| s.to_string()).collect();
    let recipe = tokio::task::spawn_blocking(move || {
        let entry: Vec<&str> = entry.iter().map(String::as_str).collect();
        Recipe::resolve(&binary_owned, &repo_owned, &entry, memo.as_deref())
    })
    .await
    .map_err(|e| BackendError::Permanent(format!("resolving image contents: {e}")))??;

    match docker.inspect_image(&recipe.tag).await {
        Ok(_) => {
            tracing::debug!(image = %recipe.tag, "local image present");
            return Ok(recipe.tag);
        }
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(map_error("inspect image", e)),
    }

    let tag = recipe.tag.clone();
    let context = tokio::task::spawn_blocking(move || recipe.build_context())
        .await
        .map_err(|e| BackendError::Permanent(format!("building image context: {e}")))??;
    tracing::info!(image = %tag, bytes = context.len(), "building local image");

    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tag)
        .rm(true)
        .forcerm(true)
        // Our own tag is the cache. Builder-cache layers would be shared with other images of
        // the same content, and removing one of those mid-build breaks the other build.
        .nocache(true)
        .build();
    let drain = async {
        let mut stream =
            docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        return Err(BackendError::Permanent(format!(
                            "building {tag}: {}",
                            detail.message.unwrap_or_default()
                        )));
                    }
                    if let Some(line) = info.stream.as_deref().map(str::trim)
                        && !line.is_empty()
                    {
                        tracing::debug!(image = %tag, "{line}");
                    }
                }
                Err(DockerError::DockerStreamError { error }) => {
                    return Err(BackendError::Permanent(format!("building {tag}: {error}")));
                }
                Err(e) => return Err(map_error("build image", e)),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BUILD_TIMEOUT, drain).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(BackendError::Transient(format!(
                "building {tag} took longer than {}s",
                BUILD_TIMEOUT.as_secs()
            )));
        }
    }
    match docker.inspect_image(&tag).await {
        Ok(_) => Ok(tag),
        Err(e) => Err(map_error("inspect built image", e)),
    }
}

/// What goes into one image: the files (host path → same path inside, the binary → /molecule),
/// the Dockerfile, and the tag derived from all of it.
struct Recipe {
    binary: PathBuf,
    libraries: Vec<PathBuf>,
    dockerfile: String,
    tag: String,
}

impl Recipe {
    /// `memo`: a directory where the content hash is remembered under the files' identities.
    fn resolve(
        binary: &Path,
        repo: &str,
        entrypoint: &[&str],
        memo: Option<&Path>,
    ) -> Result<Self, BackendError> {
        let libraries = shared_libraries(binary)?;
        let dockerfile = dockerfile(entrypoint)?;
        let key = memo.and_then(|_| identity_key(&dockerfile, binary, &libraries));
        let remembered = match (memo, &key) {
            (Some(dir), Some(key)) => memo_read(dir, key),
            _ => None,
        };
        let digest = match remembered {
            Some(d) => d,
            None => {
                let mut h = Sha256::new();
                h.update(dockerfile.as_bytes());
                hash_file(&mut h, BINARY_PATH, binary)?;
                for lib in &libraries {
                    hash_file(&mut h, &lib.to_string_lossy(), lib)?;
                }
                let digest = hex::encode(h.finalize());
                if let (Some(dir), Some(key)) = (memo, &key) {
                    memo_write(dir, key, &digest);
                }
                digest
            }
        };
        Ok(Self {
            binary: binary.to_path_buf(),
            libraries,
            dockerfile,
            tag: format!("{repo}:{}", &digest[..12]),
        })
    }

    /// The in-memory build context: Dockerfile + rootfs/ with every file.
    fn build_context(&self) -> Result<Vec<u8>, BackendError> {
        let mut tar = TarBuilder::new(0);
        tar.file("Dockerfile", 0o644, self.dockerfile.as_bytes())?;
        let binary = stripped_or_original(&self.binary)?;
        tar.file(&format!("{CONTEXT_ROOT}{BINARY_PATH}"), 0o755, &binary)?;
        for lib in &self.libraries {
            // std::fs::read follows symlinks: the real content lands at the linked path.
            let bytes = std::fs::read(lib)
                .map_err(|e| BackendError::Permanent(format!("reading {}: {e}", lib.display())))?;
            tar.file(&format!("{CONTEXT_ROOT}{}", lib.display()), 0o755, &bytes)?;
        }
        Ok(tar.finish())
    }
}

fn dockerfile(entrypoint: &[&str]) -> Result<String, BackendError> {
    let entry = serde_json::to_string(entrypoint)
        .map_err(|e| BackendError::Permanent(format!("encoding entrypoint: {e}")))?;
    Ok(format!(
        "FROM scratch\nCOPY {CONTEXT_ROOT}/ /\nEXPOSE 8000\nLABEL {LABEL_MANAGED_IMAGE}=\"true\"\nENTRYPOINT {entry}\n"
    ))
}

/// File name of the content-hash memo: a dot name, which no runtime's clone directory in the
/// same build cache can have.
const MEMO_FILE: &str = ".echo-content-hash";

/// A hash of what identifies the recipe's files on this host without reading them: path, size,
/// modification time (ns), device and inode of each (symlinks followed), and the Dockerfile.
/// `None` when a file cannot be examined.
fn identity_key(dockerfile: &str, binary: &Path, libraries: &[PathBuf]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(dockerfile.as_bytes());
    for path in std::iter::once(binary).chain(libraries.iter().map(PathBuf::as_path)) {
        let m = std::fs::metadata(path).ok()?;
        h.update(path.to_string_lossy().as_bytes());
        h.update([0u8]);
        for n in [
            m.len() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.dev() as i64,
            m.ino() as i64,
        ] {
            h.update(n.to_be_bytes());
        }
    }
    Some(hex::encode(h.finalize()))
}

/// The digest remembered for `key`; anything unreadable or malformed is no memo.
fn memo_read(dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(MEMO_FILE)).ok()?;
    let (k, digest) = text.trim().split_once(' ')?;
    (k == key && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_string())
}

/// Remembers `digest` for `key` (written whole, then renamed); a failure only costs a re-read.
fn memo_write(dir: &Path, key: &str, digest: &str) {
    let tmp = dir.join(format!("{MEMO_FILE}.{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, format!("{key} {digest}\n")))
        .and_then(|_| std::fs::rename(&tmp, dir.join(MEMO_FILE)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(error = %e, "echo image: content hash not remembered");
    }
}

fn hash_file(h: &mut Sha256, in_image: &str, path: &Path) -> Result<(), BackendError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| BackendError::Permanent(format!("opening {}: {e}", path.display())))?;
    h.update(in_image.as_bytes());
    h.update([0u8]);
    let len = std::io::copy(&mut file, h)
        .map_err(|e| BackendError::Permanent(format!("reading {}: {e}", path.display())))?;
    h.update(len.to_be_bytes());
    Ok(())
}

/// The binary with debug info stripped when `strip` is available, else the original bytes.
fn stripped_or_original(binary: &Path) -> Result<Vec<u8>, BackendError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let out = std::env::temp_dir().join(format!("molecule-strip-{}-{nanos}", std::process::id()));
    let stripped = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .output();
    let result = match stripped {
        Ok(o) if o.status.success() => std::fs::read(&out).ok(),
        _ => None,
    };
    // Best effort: the file may not exist when strip failed.
    let _ = std::fs::remove_file(&out);
    match result {
        Some(bytes) => Ok(bytes),
        None => std::fs::read(binary)
            .map_err(|e| BackendError::Permanent(format!("reading {}: {e}", binary.display()))),
    }
}

/// Absolute paths of the shared libraries (and loader) `binary` needs, from `ldd`.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, BackendError> {
    if !binary.is_file() {
        return Err(BackendError::Permanent(format!(
            "{} is not a file",
            binary.display()
        )));
    }
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| BackendError::Permanent(format!("running ldd: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(BackendError::Permanent(format!(
            "ldd {} failed: {}",
            binary.display(),
            stderr.trim()
        )));
    }
    parse_ldd(&stdout).map_err(BackendError::Permanent)
}

/// Parses `ldd` output: the `=> /path` entries and the loader line, deduplicated, in order.
pub(crate) fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs: Vec<PathBuf> = Vec::new();
    for line in output.lines().map(str::trim) {
        let path = if let Some((lib, target)) = line.split_once("=>") {
            let target = target.trim();
            if target.starts_with("not found") {
                return Err(format!("shared library {} not found", lib.trim()));
            }
            target.split_whitespace().next()
        } else {
            line.split_whitespace().next()
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let p = PathBuf::from(p);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{
        CreateContainerOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
        RemoveImageOptions, WaitContainerOptionsBuilder,
    };

    #[test]
    fn the_content_hash_is_remembered_under_the_files_identity() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("agent");
        std::fs::copy("/bin/sleep", &binary).unwrap();
        let memo = dir.path().join("cache");
        let entry = ["/molecule", "agent"];
        let plain = Recipe::resolve(&binary, "r", &entry, None).unwrap().tag;
        assert!(
            !memo.join(MEMO_FILE).exists(),
            "no memo without a directory"
        );
        assert_eq!(
            Recipe::resolve(&binary, "r", &entry, Some(&memo))
                .unwrap()
                .tag,
            plain
        );
        let text = std::fs::read_to_string(memo.join(MEMO_FILE)).unwrap();
        let (key, digest) = text.trim().split_once(' ').unwrap();
        assert_eq!(format!("r:{}", &digest[..12]), plain);
        // The memo is what a restart reads: a remembered digest is used as it is...
        let planted = format!("{key} {}\n", "ab".repeat(32));
        std::fs::write(memo.join(MEMO_FILE), planted).unwrap();
        let tag = Recipe::resolve(&binary, "r", &entry, Some(&memo))
            .unwrap()
            .tag;
        assert_eq!(tag, "r:abababababab");
        // ...until the file changes (size, time or inode), or the memo is malformed.
        std::fs::write(&binary, b"#!/bin/sh\n").unwrap();
        let changed = Recipe::resolve(&binary, "r", &entry, None).unwrap().tag;
        assert_ne!(changed, plain);
        assert_eq!(
            Recipe::resolve(&binary, "r", &entry, Some(&memo))
                .unwrap()
                .tag,
            changed
        );
        std::fs::write(memo.join(MEMO_FILE), "garbage").unwrap();
        assert_eq!(
            Recipe::resolve(&binary, "r", &entry, Some(&memo))
                .unwrap()
                .tag,
            changed
        );
    }

    #[test]
    fn ldd_output_is_parsed() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd4a5f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0000000000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f062cf65000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f062cf65000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f062d165000)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(
            parse_ldd("\tstatically linked\n").unwrap(),
            Vec::<PathBuf>::new()
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        // Old glibc prints the vdso with an empty target.
        assert_eq!(
            parse_ldd("\tlinux-gate.so.1 =>  (0x00007ffd)\n").unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn content_tag_is_stable_and_content_addressed() {
        let a = content_tag(Path::new("/bin/sleep")).unwrap();
        assert!(a.starts_with("molecule-local/echo:"), "{a}");
        assert_eq!(a.len(), "molecule-local/echo:".len() + 12);
        assert_eq!(a, content_tag(Path::new("/bin/sleep")).unwrap());
        assert_ne!(a, content_tag(Path::new("/usr/bin/env")).unwrap());
        assert!(content_tag(Path::new("/nonexistent/binary")).is_err());
    }

    #[test]
    fn dockerfile_has_entrypoint_expose_and_label() {
        let d = dockerfile(&["/molecule", "agent"]).unwrap();
        assert!(d.starts_with("FROM scratch\n"));
        assert!(d.contains("ENTRYPOINT [\"/molecule\",\"agent\"]"));
        assert!(d.contains("EXPOSE 8000"));
        assert!(d.contains("LABEL molecule.platform.managed-image=\"true\""));
    }

    fn run_id() -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut h = Sha256::new();
        h.update(std::process::id().to_be_bytes());
        h.update(nanos.to_be_bytes());
        hex::encode(&h.finalize()[..4])
    }

    /// Removes the test container and every image of the test repository.
    async fn cleanup(docker: &Docker, repo: &str, container: &str) {
        let _ = docker
            .remove_container(
                container,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
        let filters = std::collections::HashMap::from([("reference", vec![repo.to_string()])]);
        let images = docker
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        // By tag, never by id: identical content gives other tests' images the same id.
        let own = format!("{repo}:");
        for tag in images
            .iter()
            .flat_map(|i| i.repo_tags.iter())
            .filter(|t| t.starts_with(&own))
        {
            let _ = docker
                .remove_image(tag, None::<RemoveImageOptions>, None)
                .await;
        }
    }

    #[tokio::test]
    async fn builds_a_scratch_image_that_runs_and_caches() {
        let docker = Docker::connect_with_local_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        let id = run_id();
        let repo = format!("molecule-test-{id}/sleep");
        let container = format!("molecule-test-img-{id}");

        let (d, r, c) = (docker.clone(), repo.clone(), container.clone());
        let outcome = tokio::spawn(async move {
            let tag = ensure_image_for(&d, Path::new("/bin/sleep"), &r, &["/molecule", "1"])
                .await
                .unwrap();
            assert!(tag.starts_with(&format!("{r}:")));
            let first = d.inspect_image(&tag).await.unwrap();
            let cfg = first.config.clone().unwrap();
            let labels = cfg.labels.clone().unwrap_or_default();
            assert_eq!(
                labels.get(LABEL_MANAGED_IMAGE).map(String::as_str),
                Some("true")
            );
            assert_eq!(
                cfg.entrypoint,
                Some(vec!["/molecule".to_string(), "1".to_string()])
            );
            assert!(
                cfg.exposed_ports
                    .unwrap_or_default()
                    .contains(&"8000/tcp".to_string())
            );

            d.create_container(
                Some(CreateContainerOptionsBuilder::default().name(&c).build()),
                ContainerCreateBody {
                    image: Some(tag.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            d.start_container(&c, None).await.unwrap();
            let waited: Vec<_> = d
                .wait_container(
                    &c,
                    Some(
                        WaitContainerOptionsBuilder::default()
                            .condition("not-running")
                            .build(),
                    ),
                )
                .collect()
                .await;
            match waited.first() {
                Some(Ok(r)) => assert_eq!(r.status_code, 0),
                other => panic!("wait failed: {other:?}"),
            }

            // Cache hit: same tag, same image id, no rebuild.
            let again = ensure_image_for(&d, Path::new("/bin/sleep"), &r, &["/molecule", "1"])
                .await
                .unwrap();
            assert_eq!(again, tag);
            let second = d.inspect_image(&again).await.unwrap();
            assert_eq!(first.id, second.id);
            assert_eq!(first.created, second.created);
        })
        .await;

        cleanup(&docker, &repo, &container).await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}
