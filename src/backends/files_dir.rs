//! Reading a workspace's `filesDir` (ADR 0034): a directory under the template root, confined to
//! it — symlinks resolved at the root and never followed inside — each file read with its size
//! enforced while reading. The Workspace controller builds the config volume from it; the REST
//! shim's bundle export carries its files (ADR 0055).

use std::path::{Component, Path, PathBuf};

use super::{ConfigFile, normalize_line_endings};

/// Why a `filesDir` cannot be read. Messages never echo paths outside the directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirError {
    #[error("filesDir must be a relative path inside the template root")]
    Escapes,
    #[error("filesDir was not found under the template root")]
    NotFound,
    #[error("filesDir holds too many files")]
    TooMany,
    #[error("config file {0:?} is too large")]
    TooLarge(String),
}

/// Resolves `files_dir` under `root`: relative, no `..`; the root itself may be a symlink and
/// the dir may be a symlink whose target stays inside the root.
pub fn resolve(root: &Path, files_dir: &str) -> Result<PathBuf, DirError> {
    let rel = Path::new(files_dir);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(DirError::Escapes);
    }
    let root = root.canonicalize().map_err(|_| DirError::NotFound)?;
    let dir = root
        .join(rel)
        .canonicalize()
        .map_err(|_| DirError::NotFound)?;
    if !dir.starts_with(&root) {
        return Err(DirError::Escapes);
    }
    if !dir.is_dir() {
        return Err(DirError::NotFound);
    }
    Ok(dir)
}

/// Reads every regular file under `dir` (symlinks inside are skipped, never followed; the
/// generated `config.yaml` and `.auth_token` are left out): at most `max_files` files of at most
/// `max_file` bytes each.
pub fn read(dir: &Path, max_file: usize, max_files: usize) -> Result<Vec<ConfigFile>, DirError> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .map_err(|_| DirError::NotFound)?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_symlink() {
                continue;
            }
            if ft.is_dir() {
                stack.push(p);
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let rel = p
                .strip_prefix(dir)
                .map_err(|_| DirError::Escapes)?
                .to_string_lossy()
                .replace('\\', "/");
            if matches!(rel.as_str(), "config.yaml" | ".auth_token") {
                continue;
            }
            // The limit holds while reading: a huge (or growing) file is never read whole
            // (ADR 0039).
            let content = match crate::orgtemplate::read_limited(&p, max_file as u64) {
                Ok(c) => c,
                Err(crate::orgtemplate::ReadError::TooLarge(_)) => {
                    return Err(DirError::TooLarge(rel));
                }
                Err(crate::orgtemplate::ReadError::Io(_)) => return Err(DirError::NotFound),
            };
            out.push(ConfigFile {
                content: normalize_line_endings(&rel, &content),
                path: rel,
                mode: 0o644,
            });
            if out.len() > max_files {
                return Err(DirError::TooMany);
            }
        }
    }
    Ok(out)
}
