//! Direct writes of config files into a local volume's directory (ADR 0034).
//!
//! When the operator shares a host with the Docker engine, a `local` volume is a plain directory
//! (`/var/lib/docker/volumes/<name>/_data`). Writing the files there, before the container's
//! first start, gives the container exactly what the archive API would have extracted (same
//! paths, modes and 0:0 ownership as seen from inside the container), without the engine
//! mounting the container's root filesystem and re-executing itself to untar.
//!
//! The directory may hold what an earlier container of the workspace left there, so nothing in
//! it is trusted: no symlink is ever followed (every component is checked with `lstat`, the final
//! open uses `O_NOFOLLOW`), and anything that is not a plain directory or file where one is
//! expected is a [`Refusal`]. The caller then uses the archive API, which resolves paths inside
//! the container's own view. Only called while no container of the workspace is running.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// One file to write: path relative to the volume root (already validated), mode, content.
pub(crate) struct Entry {
    pub path: String,
    pub mode: u32,
    pub content: Vec<u8>,
}

/// Why the directory could not be written; the caller falls back to the archive API.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The volume directory itself is unusable from this process (not on this host, no
    /// permission): later volumes will not be reachable either.
    pub unreachable: bool,
    pub reason: String,
}

impl Refusal {
    fn at(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self {
            unreachable: false,
            reason: format!("{}: {reason}", path.display()),
        }
    }
}

/// Writes `entries` under `root`: parents created 0755, files with their exact mode, all owned by
/// the owner of `root` (the container's root user, remapped or not). Later entries for the same
/// path were already dropped by the caller.
pub(crate) fn write(root: &Path, entries: &[Entry]) -> Result<(), Refusal> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| Refusal {
        unreachable: true,
        reason: format!("{}: {e}", root.display()),
    })?;
    if !meta.file_type().is_dir() {
        return Err(Refusal {
            unreachable: true,
            reason: format!("{} is not a directory", root.display()),
        });
    }
    let owner = (meta.uid(), meta.gid());
    for entry in entries {
        let parts: Vec<&str> = entry.path.split('/').collect();
        let Some((name, parents)) = parts.split_last() else {
            continue;
        };
        let mut dir = root.to_path_buf();
        for part in parents {
            dir.push(part);
            ensure_dir(&dir, owner)?;
        }
        write_file(&dir.join(name), entry, owner)?;
    }
    Ok(())
}

fn ensure_dir(dir: &Path, owner: (u32, u32)) -> Result<(), Refusal> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(Refusal::at(dir, "exists and is not a directory")),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(dir)
                .map_err(|e| Refusal::at(dir, e))?;
            std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1))
                .map_err(|e| Refusal::at(dir, e))?;
            // The process umask may have narrowed the mode.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Refusal::at(dir, e))
        }
        Err(e) => Err(Refusal::at(dir, e)),
    }
}

fn write_file(path: &Path, entry: &Entry, owner: (u32, u32)) -> Result<(), Refusal> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => return Err(Refusal::at(path, "exists and is not a regular file")),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Refusal::at(path, e)),
    }
    // Truncated on open, so an old secret is gone before the mode changes; 0600 until then.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Refusal::at(path, e))?;
    // Ownership before the mode: chown clears set-id bits.
    std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))
        .map_err(|e| Refusal::at(path, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o7777))
        .map_err(|e| Refusal::at(path, e))?;
    f.write_all(&entry.content)
        .map_err(|e| Refusal::at(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, mode: u32, content: &[u8]) -> Entry {
        Entry {
            path: path.to_string(),
            mode,
            content: content.to_vec(),
        }
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn writes_parents_modes_and_overwrites_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join(".auth_token"), "old-token-with-a-longer-body").unwrap();
        std::fs::set_permissions(
            root.join(".auth_token"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write(
            root,
            &[
                entry(".auth_token", 0o600, b"new"),
                entry("a/b/c.txt", 0o640, b"nested"),
                entry("run.sh", 0o755, b"echo hi\n"),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read(root.join(".auth_token")).unwrap(), b"new");
        assert_eq!(mode_of(&root.join(".auth_token")), 0o600);
        assert_eq!(std::fs::read(root.join("a/b/c.txt")).unwrap(), b"nested");
        assert_eq!(mode_of(&root.join("a/b/c.txt")), 0o640);
        assert_eq!(mode_of(&root.join("a")), 0o755);
        assert_eq!(mode_of(&root.join("a/b")), 0o755);
        assert_eq!(mode_of(&root.join("run.sh")), 0o755);
        let owner = std::fs::metadata(root).unwrap();
        let file = std::fs::metadata(root.join("a/b/c.txt")).unwrap();
        assert_eq!((file.uid(), file.gid()), (owner.uid(), owner.gid()));
    }

    #[test]
    fn symlinks_left_in_the_volume_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "keep").unwrap();

        // A symlinked file: refused, the target untouched.
        std::os::unix::fs::symlink(outside.join("victim"), root.join(".auth_token")).unwrap();
        let err = write(&root, &[entry(".auth_token", 0o600, b"tok")]).unwrap_err();
        assert!(!err.unreachable);
        assert!(err.reason.contains("not a regular file"), "{}", err.reason);
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");

        // A symlinked parent directory: refused, nothing created behind it.
        std::os::unix::fs::symlink(&outside, root.join("skills")).unwrap();
        let err = write(&root, &[entry("skills/x/SKILL.md", 0o644, b"x")]).unwrap_err();
        assert!(err.reason.contains("not a directory"), "{}", err.reason);
        assert!(!outside.join("x").exists());

        // A directory where a file goes: refused.
        std::fs::create_dir_all(root.join("config.yaml")).unwrap();
        assert!(write(&root, &[entry("config.yaml", 0o644, b"a: 1")]).is_err());
    }

    #[test]
    fn a_missing_or_non_directory_root_is_unreachable() {
        let tmp = tempfile::tempdir().unwrap();
        let err = write(&tmp.path().join("absent"), &[entry("f", 0o644, b"x")]).unwrap_err();
        assert!(err.unreachable, "{err:?}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        let err = write(&link, &[entry("f", 0o644, b"x")]).unwrap_err();
        assert!(err.unreachable, "{err:?}");
        assert!(!tmp.path().join("f").exists());
    }
}
