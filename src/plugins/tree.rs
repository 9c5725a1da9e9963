//! A plugin's files in memory, read under the staging limits: at most 100 MiB and
//! 10 000 regular files, safe relative paths only, symlinks and special files skipped, checked
//! before a byte is read so an oversized plugin is refused cheaply.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Refusal;

/// Largest staged plugin.
pub const MAX_STAGED_BYTES: u64 = 100 * 1024 * 1024;
/// Most files in one plugin.
pub const MAX_FILES: usize = 10_000;

/// Staging limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: MAX_STAGED_BYTES,
            max_files: MAX_FILES,
        }
    }
}

/// One regular file of a plugin.
#[derive(Clone, PartialEq, Eq)]
pub struct PluginFile {
    /// Relative, normalised path (see [`check_path`]).
    pub path: String,
    /// Permission bits (0644 or 0755).
    pub mode: u32,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for PluginFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("len", &self.content.len())
            .finish()
    }
}

/// A plugin's files, by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginTree {
    files: BTreeMap<String, PluginFile>,
    bytes: u64,
}

/// Checks a path inside a plugin: the config-file rules (relative, normalised, no `..`) plus no
/// control characters (paths travel through line-oriented tools in shell images).
pub fn check_path(p: &str) -> Result<(), String> {
    crate::backends::validate_file_path(p)?;
    if p.chars().any(char::is_control) {
        return Err(format!(
            "path {:?} contains a control character",
            super::source::shorten(p, 80)
        ));
    }
    Ok(())
}

fn too_large(limits: &Limits) -> Refusal {
    Refusal::new(
        "TooLarge",
        format!(
            "the plugin is larger than the staging limit of {} MiB",
            limits.max_bytes / (1024 * 1024)
        ),
    )
}

fn too_many(limits: &Limits) -> Refusal {
    Refusal::new(
        "TooLarge",
        format!("the plugin has more than {} files", limits.max_files),
    )
}

impl PluginTree {
    /// Accounts for a file of `len` bytes before it is read.
    pub fn reserve(&self, len: u64, limits: &Limits) -> Result<(), Refusal> {
        if self.files.len() >= limits.max_files {
            return Err(too_many(limits));
        }
        if self.bytes.saturating_add(len) > limits.max_bytes {
            return Err(too_large(limits));
        }
        Ok(())
    }

    /// Adds a file (replacing one at the same path).
    pub fn insert(
        &mut self,
        path: &str,
        mode: u32,
        content: Vec<u8>,
        limits: &Limits,
    ) -> Result<(), Refusal> {
        check_path(path).map_err(|e| Refusal::new("InvalidPlugin", e))?;
        if let Some(old) = self.files.remove(path) {
            self.bytes -= old.content.len() as u64;
        }
        self.reserve(content.len() as u64, limits)?;
        self.bytes += content.len() as u64;
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        self.files.insert(
            path.to_string(),
            PluginFile {
                path: path.to_string(),
                mode,
                content,
            },
        );
        Ok(())
    }

    /// Reads a plugin directory: regular files only (symlinks, sockets, devices are skipped, a
    /// `.git` directory at the root is ignored), sizes checked before reading.
    pub fn from_dir(root: &Path, limits: &Limits) -> Result<PluginTree, Refusal> {
        let mut tree = PluginTree::default();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read a plugin directory");
                Refusal::new("FetchFailed", "a directory of the plugin could not be read")
            })?;
            let mut names = vec![];
            for entry in entries {
                let entry = entry.map_err(|_| {
                    Refusal::new("FetchFailed", "a directory of the plugin could not be read")
                })?;
                names.push(entry);
            }
            names.sort_by_key(|e| e.file_name());
            for entry in names {
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(Refusal::new(
                        "InvalidPlugin",
                        "a file name of the plugin is not valid UTF-8",
                    ));
                };
                if prefix.is_empty() && name == ".git" {
                    continue;
                }
                let rel = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                let meta = entry.metadata().map_err(|_| {
                    Refusal::new("FetchFailed", "a file of the plugin could not be read")
                })?;
                let ft = meta.file_type();
                if ft.is_symlink() {
                    continue;
                }
                if ft.is_dir() {
                    check_path(&rel).map_err(|e| Refusal::new("InvalidPlugin", e))?;
                    stack.push((entry.path(), rel));
                } else if ft.is_file() {
                    tree.reserve(meta.len(), limits)?;
                    let content = std::fs::read(entry.path()).map_err(|_| {
                        Refusal::new("FetchFailed", "a file of the plugin could not be read")
                    })?;
                    #[cfg(unix)]
                    let mode = {
                        use std::os::unix::fs::PermissionsExt;
                        meta.permissions().mode()
                    };
                    #[cfg(not(unix))]
                    let mode = 0o644;
                    tree.insert(&rel, mode, content, limits)?;
                }
            }
        }
        Ok(tree)
    }

    /// Removes a file.
    pub fn remove(&mut self, path: &str) -> Option<PluginFile> {
        let f = self.files.remove(path)?;
        self.bytes -= f.content.len() as u64;
        Some(f)
    }

    pub fn get(&self, path: &str) -> Option<&PluginFile> {
        self.files.get(path)
    }

    pub fn files(&self) -> impl Iterator<Item = &PluginFile> {
        self.files.values()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Total content bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// sha256 (hex) of every file, by path.
    pub fn hashes(&self) -> BTreeMap<String, String> {
        self.files
            .values()
            .map(|f| (f.path.clone(), hex::encode(Sha256::digest(&f.content))))
            .collect()
    }
}

/// A digest of a whole tree from its per-file hashes: sha256 over `path NUL hash LF`, in path
/// order, leaving out the `.complete` marker. Used as the "sha" of `local://` plugins and to
/// recognise an installed tree inside a container.
pub fn tree_digest(hashes: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (path, hash) in hashes {
        if path == super::MARKER {
            continue;
        }
        h.update(path.as_bytes());
        h.update([0]);
        h.update(hash.as_bytes());
        h.update([b'\n']);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_and_skips_links_and_git() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("skills/a")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/config"), "x").unwrap();
        std::fs::write(root.join("skills/a/SKILL.md"), "hi").unwrap();
        std::fs::write(root.join("plugin.yaml"), "name: a\n").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc/passwd", root.join("evil")).unwrap();
            std::os::unix::fs::symlink("/etc", root.join("evildir")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(root.join("hooks")).unwrap();
            std::fs::write(root.join("hooks/run.sh"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(
                root.join("hooks/run.sh"),
                std::fs::Permissions::from_mode(0o700),
            )
            .unwrap();
        }
        let t = PluginTree::from_dir(root, &Limits::default()).unwrap();
        let paths: Vec<&str> = t.files().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["hooks/run.sh", "plugin.yaml", "skills/a/SKILL.md"]
        );
        assert_eq!(t.get("hooks/run.sh").unwrap().mode, 0o755);
        assert_eq!(t.get("plugin.yaml").unwrap().mode, 0o644);
        assert_eq!(t.bytes(), 2 + 8 + 10);
        let h = t.hashes();
        assert_eq!(h.len(), 3);
        assert_eq!(
            tree_digest(&h),
            tree_digest(
                &PluginTree::from_dir(root, &Limits::default())
                    .unwrap()
                    .hashes()
            )
        );
    }

    #[test]
    fn limits_are_checked_before_reading() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![0u8; 600]).unwrap();
        std::fs::write(d.path().join("b"), vec![0u8; 600]).unwrap();
        let small = Limits {
            max_bytes: 1000,
            max_files: 10,
        };
        assert_eq!(
            PluginTree::from_dir(d.path(), &small).unwrap_err().reason,
            "TooLarge"
        );
        let few = Limits {
            max_bytes: 10_000,
            max_files: 1,
        };
        assert_eq!(
            PluginTree::from_dir(d.path(), &few).unwrap_err().reason,
            "TooLarge"
        );
        assert!(PluginTree::from_dir(d.path(), &Limits::default()).is_ok());
    }

    #[test]
    fn digest_ignores_the_marker_and_tracks_content() {
        let mut a = BTreeMap::new();
        a.insert("x".to_string(), "1".to_string());
        let mut b = a.clone();
        b.insert(crate::plugins::MARKER.to_string(), "zz".to_string());
        assert_eq!(tree_digest(&a), tree_digest(&b));
        b.insert("x".to_string(), "2".to_string());
        assert_ne!(tree_digest(&a), tree_digest(&b));
    }

    #[test]
    fn hostile_paths_are_refused() {
        let mut t = PluginTree::default();
        let l = Limits::default();
        for p in ["../x", "/abs", "a/../b", "a\nb", "a\tb"] {
            assert_eq!(
                t.insert(p, 0o644, vec![], &l).unwrap_err().reason,
                "InvalidPlugin",
                "{p:?}"
            );
        }
    }
}
