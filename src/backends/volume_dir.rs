//! Direct writes of config files into a local volume's directory (ADR 0034).
//!
//! When the operator shares a host with the Docker engine, a `local` volume is a plain directory
//! (`/var/lib/docker/volumes/<name>/_data`). Writing the files there, before the container's
//! first start, gives the container exactly what the archive API would have extracted (same
//! paths, modes and 0:0 ownership as seen from inside the container), without the engine
//! mounting the container's root filesystem and re-executing itself to untar.
//!
//! The directory may hold what an earlier container of the workspace left there, so nothing in
//! it is trusted: no symlink is ever followed, no file with more than one hard link is written
//! (it would change the file's other name, possibly outside the volume), and anything that is
//! not a plain directory or file where one is expected is a [`Refusal`]. The caller then uses
//! the archive API, which resolves paths inside the container's own view. Only called while no
//! container of the workspace is running.
//!
//! Every component is opened relative to its parent's descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (ADR 0039), so a symlink swapped in between
//! a check and a use is refused by the kernel. A kernel without `openat2` (ENOSYS, before 5.6)
//! gets the path-based checks: every component checked with `lstat`, the final open with
//! `O_NOFOLLOW`.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// One file to write: path relative to the volume root (already validated), mode, content.
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub content: Vec<u8>,
}

/// Why the directory could not be written; the caller falls back to the archive API.
#[derive(Debug)]
pub struct Refusal {
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
pub fn write(root: &Path, entries: &[Entry]) -> Result<(), Refusal> {
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
    match beneath::write(root, entries, owner) {
        Err(beneath::Error::Unsupported) => {
            tracing::debug!("openat2 is not available; writing the volume with path checks");
        }
        other => return other.map_err(beneath::Error::refusal),
    }
    write_by_path(root, entries, owner)
}

/// The path-based writer of kernels without `openat2`.
fn write_by_path(root: &Path, entries: &[Entry], owner: (u32, u32)) -> Result<(), Refusal> {
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
        Ok(m) if m.file_type().is_file() && m.nlink() > 1 => {
            return Err(Refusal::at(path, HARD_LINKED));
        }
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => return Err(Refusal::at(path, "exists and is not a regular file")),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Refusal::at(path, e)),
    }
    // Opened without truncating: a file with another hard link must stay untouched.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Refusal::at(path, e))?;
    fill(f, path, entry, owner)
}

/// Why a file is refused: writing it would also change its other names.
const HARD_LINKED: &str = "has more than one hard link";

/// Writes an open file: checks it is a regular file with one link, truncates it (so an old
/// secret is gone before the mode changes; 0600 until then), then owner, mode and content.
fn fill(mut f: File, path: &Path, entry: &Entry, owner: (u32, u32)) -> Result<(), Refusal> {
    let m = f.metadata().map_err(|e| Refusal::at(path, e))?;
    if !m.file_type().is_file() {
        return Err(Refusal::at(path, "exists and is not a regular file"));
    }
    if m.nlink() > 1 {
        return Err(Refusal::at(path, HARD_LINKED));
    }
    f.set_len(0).map_err(|e| Refusal::at(path, e))?;
    // Ownership before the mode: chown clears set-id bits.
    std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))
        .map_err(|e| Refusal::at(path, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o7777))
        .map_err(|e| Refusal::at(path, e))?;
    f.write_all(&entry.content)
        .map_err(|e| Refusal::at(path, e))
}

/// The descriptor-relative writer: each component opened with `openat2` beneath its parent,
/// never through a symlink (ADR 0039).
mod beneath {
    use super::*;

    pub(super) enum Error {
        /// The kernel has no `openat2` (ENOSYS): nothing was written.
        Unsupported,
        Refused(Refusal),
    }

    impl Error {
        pub(super) fn refusal(self) -> Refusal {
            match self {
                Error::Refused(r) => r,
                Error::Unsupported => Refusal {
                    unreachable: false,
                    reason: "openat2 is not available".into(),
                },
            }
        }
    }

    fn resolve() -> ResolveFlags {
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS
    }

    /// A refusal of `path`, expected to be a directory (`dir`) or a regular file.
    fn refused(path: &Path, e: Errno, dir: bool) -> Error {
        let what = if dir { "a directory" } else { "a regular file" };
        let why = match e {
            Errno::LOOP | Errno::XDEV => {
                format!("exists and is not {what} (a symlink, never followed)")
            }
            Errno::NOTDIR | Errno::NXIO => format!("exists and is not {what}"),
            other => std::io::Error::from(other).to_string(),
        };
        Error::Refused(Refusal::at(path, why))
    }

    /// A directory component beneath `dir`, created (0755, `owner`) when missing.
    fn subdir(dir: &OwnedFd, name: &str, path: &Path, owner: (u32, u32)) -> Result<OwnedFd, Error> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(refused(path, e, true)),
        }
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(refused(path, e, true)),
        }
        let fd = rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve())
            .map_err(|e| refused(path, e, true))?;
        let f = File::from(fd);
        std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))
            .map_err(|e| Error::Refused(Refusal::at(path, e)))?;
        // The process umask may have narrowed the mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::Refused(Refusal::at(path, e)))?;
        Ok(OwnedFd::from(f))
    }

    pub(super) fn write(root: &Path, entries: &[Entry], owner: (u32, u32)) -> Result<(), Error> {
        let unreachable = |e: Errno| {
            Error::Refused(Refusal {
                unreachable: true,
                reason: format!("{}: {}", root.display(), std::io::Error::from(e)),
            })
        };
        let root_fd = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(unreachable)?;
        // Probe before anything is written: the fallback must start from a clean slate.
        match rustix::fs::openat2(
            &root_fd,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        ) {
            Err(Errno::NOSYS) => return Err(Error::Unsupported),
            Err(e) => return Err(unreachable(e)),
            Ok(_) => {}
        }
        for entry in entries {
            let parts: Vec<&str> = entry.path.split('/').collect();
            let Some((name, parents)) = parts.split_last() else {
                continue;
            };
            let mut path = root.to_path_buf();
            let mut dir: Option<OwnedFd> = None;
            for part in parents {
                path.push(part);
                let next = subdir(dir.as_ref().unwrap_or(&root_fd), part, &path, owner)?;
                dir = Some(next);
            }
            path.push(name);
            let parent = dir.as_ref().unwrap_or(&root_fd);
            // Refuse what is there before opening it (a FIFO would block, a device act).
            match rustix::fs::statat(parent, *name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    let ft = FileType::from_raw_mode(st.st_mode as _);
                    if ft == FileType::Symlink {
                        return Err(refused(&path, Errno::LOOP, false));
                    }
                    if ft != FileType::RegularFile {
                        return Err(refused(&path, Errno::NXIO, false));
                    }
                    if st.st_nlink > 1 {
                        return Err(Error::Refused(Refusal::at(&path, HARD_LINKED)));
                    }
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(refused(&path, e, false)),
            }
            let fd = rustix::fs::openat2(
                parent,
                *name,
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::CLOEXEC
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK,
                Mode::from_raw_mode(0o600),
                resolve(),
            )
            .map_err(|e| refused(&path, e, false))?;
            fill(File::from(fd), &path, entry, owner).map_err(Error::Refused)?;
        }
        Ok(())
    }
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
    fn hard_linked_files_are_refused_on_both_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(tmp.path().join("victim"), "keep").unwrap();
        std::fs::hard_link(tmp.path().join("victim"), root.join("config.yaml")).unwrap();
        let owner = {
            let m = std::fs::metadata(&root).unwrap();
            (m.uid(), m.gid())
        };
        let entries = [entry("config.yaml", 0o644, b"a: 1")];
        let err = write(&root, &entries).unwrap_err();
        assert!(err.reason.contains("hard link"), "{}", err.reason);
        let err = write_by_path(&root, &entries, owner).unwrap_err();
        assert!(err.reason.contains("hard link"), "{}", err.reason);
        assert_eq!(std::fs::read(tmp.path().join("victim")).unwrap(), b"keep");
        // The path-based writer refuses symlinks too.
        std::os::unix::fs::symlink(tmp.path().join("victim"), root.join("tok")).unwrap();
        assert!(write_by_path(&root, &[entry("tok", 0o600, b"x")], owner).is_err());
        assert_eq!(std::fs::read(tmp.path().join("victim")).unwrap(), b"keep");
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
