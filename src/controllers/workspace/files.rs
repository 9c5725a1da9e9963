//! The files a workspace gets under /configs before its first start (ADR 0034): the generated
//! `config.yaml`, inline files from the spec, and a `filesDir` under the template root — confined
//! to that root, with symlinks resolved at the root and never followed outside it. Pure apart from
//! reading files.

use std::path::{Path, PathBuf};

use crate::backends::files_dir::DirError;
use crate::backends::{ConfigFile, normalize_line_endings, validate_file_path};
use crate::resources::Workspace;

/// Largest single config file.
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// Largest total of a workspace's config files.
pub const MAX_TOTAL_BYTES: usize = 4 * 1024 * 1024;
/// Most files from one filesDir.
pub const MAX_FILES: usize = 1000;

/// Why the config files cannot be built. Messages never echo user-supplied paths beyond the
/// relative name inside the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilesError {
    #[error("inline file {0:?} has an invalid path: {1}")]
    BadPath(String, String),
    #[error("config file {0:?} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge(String),
    #[error("config files exceed {MAX_TOTAL_BYTES} bytes in total")]
    TotalTooLarge,
    #[error("filesDir must be a relative path inside the template root")]
    Escapes,
    #[error("filesDir was not found under the template root")]
    NotFound,
    #[error("filesDir holds more than {MAX_FILES} files")]
    TooMany,
    #[error("config.yaml and .auth_token are generated and cannot be supplied")]
    Reserved,
    #[error("{0}")]
    BadSetting(String),
}

/// The generated config.yaml (ADR 0048), as the config file every agent reads; the spec's
/// prompts and routing are checked first.
pub fn agent_config(
    ws: &Workspace,
    uid: &str,
    platform_url: &str,
    heartbeat_seconds: u64,
) -> Result<ConfigFile, FilesError> {
    super::config_yaml::check(ws)?;
    let agent = super::config_yaml::AgentSettings {
        platform_url,
        heartbeat_seconds,
    };
    Ok(ConfigFile {
        path: "config.yaml".into(),
        content: super::config_yaml::render(ws, uid, &agent).into_bytes(),
        mode: 0o644,
    })
}

fn check_total(files: &[ConfigFile]) -> Result<(), FilesError> {
    if files.iter().map(|f| f.content.len()).sum::<usize>() > MAX_TOTAL_BYTES {
        Err(FilesError::TotalTooLarge)
    } else {
        Ok(())
    }
}

/// Inline files from the spec, validated.
pub fn inline_files(ws: &Workspace) -> Result<Vec<ConfigFile>, FilesError> {
    let mut out = vec![];
    if let Some(files) = &ws.spec.files {
        for (path, content) in &files.inline {
            validate_file_path(path).map_err(|why| FilesError::BadPath(path.clone(), why))?;
            if matches!(path.as_str(), "config.yaml" | ".auth_token") {
                return Err(FilesError::Reserved);
            }
            if content.len() > MAX_FILE_BYTES {
                return Err(FilesError::TooLarge(path.clone()));
            }
            out.push(ConfigFile {
                path: path.clone(),
                content: normalize_line_endings(path, content.as_bytes()),
                mode: 0o644,
            });
        }
    }
    check_total(&out)?;
    Ok(out)
}

/// Resolves `files_dir` under `root` (`backends::files_dir::resolve`).
pub fn resolve_files_dir(root: &Path, files_dir: &str) -> Result<PathBuf, FilesError> {
    crate::backends::files_dir::resolve(root, files_dir).map_err(FilesError::from)
}

/// Reads every regular file under `dir` (`backends::files_dir::read`), within the limits.
pub fn read_files_dir(dir: &Path) -> Result<Vec<ConfigFile>, FilesError> {
    let out = crate::backends::files_dir::read(dir, MAX_FILE_BYTES, MAX_FILES)?;
    check_total(&out)?;
    Ok(out)
}

impl From<DirError> for FilesError {
    fn from(e: DirError) -> Self {
        match e {
            DirError::Escapes => FilesError::Escapes,
            DirError::NotFound => FilesError::NotFound,
            DirError::TooMany => FilesError::TooMany,
            DirError::TooLarge(rel) => FilesError::TooLarge(rel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ConfigFiles, WorkspaceSpec};

    fn ws_with_inline(files: &[(&str, &str)]) -> Workspace {
        Workspace::new(
            "a",
            WorkspaceSpec {
                files: Some(ConfigFiles {
                    files_dir: None,
                    inline: files
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
                ..Default::default()
            },
        )
    }

    #[test]
    fn inline_files_are_validated_and_normalised() {
        let f = inline_files(&ws_with_inline(&[
            ("skills/run.sh", "echo hi\r\n"),
            ("notes.txt", "a\r\n"),
        ]))
        .expect("ok");
        assert_eq!(
            f.iter()
                .find(|x| x.path == "skills/run.sh")
                .map(|x| x.content.clone()),
            Some(b"echo hi\n".to_vec())
        );
        assert_eq!(
            f.iter()
                .find(|x| x.path == "notes.txt")
                .map(|x| x.content.clone()),
            Some(b"a\r\n".to_vec())
        );
        assert!(matches!(
            inline_files(&ws_with_inline(&[("../etc/passwd", "x")])),
            Err(FilesError::BadPath(..))
        ));
        assert!(matches!(
            inline_files(&ws_with_inline(&[("/abs", "x")])),
            Err(FilesError::BadPath(..))
        ));
        assert_eq!(
            inline_files(&ws_with_inline(&[(".auth_token", "x")])),
            Err(FilesError::Reserved)
        );
        let big = "x".repeat(MAX_FILE_BYTES + 1);
        assert_eq!(
            inline_files(&ws_with_inline(&[("big.md", &big)])),
            Err(FilesError::TooLarge("big.md".into()))
        );
    }

    #[test]
    fn files_dir_is_confined_to_the_root() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("templates");
        std::fs::create_dir_all(root.join("team/alice/skills")).expect("dirs");
        std::fs::write(root.join("team/alice/skills/SKILL.md"), "skill\r\n").expect("w");
        std::fs::write(tmp.path().join("secret.txt"), "outside").expect("w");
        std::os::unix::fs::symlink(
            tmp.path().join("secret.txt"),
            root.join("team/alice/leak.txt"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink(tmp.path(), root.join("escape")).expect("symlink");
        std::os::unix::fs::symlink(root.join("team/alice"), root.join("alias")).expect("symlink");
        let dir = resolve_files_dir(&root, "team/alice").expect("resolve");
        let files = read_files_dir(&dir).expect("read");
        assert_eq!(files.len(), 1, "the symlink to a file outside is skipped");
        assert_eq!(files[0].path, "skills/SKILL.md");
        assert_eq!(files[0].content, b"skill\n");
        assert_eq!(
            resolve_files_dir(&root, "../secret.txt"),
            Err(FilesError::Escapes)
        );
        assert_eq!(resolve_files_dir(&root, "/etc"), Err(FilesError::Escapes));
        assert_eq!(resolve_files_dir(&root, "escape"), Err(FilesError::Escapes));
        assert_eq!(
            resolve_files_dir(&root, "missing"),
            Err(FilesError::NotFound)
        );
        // A dir that is itself a symlink inside the root still ships its content.
        assert_eq!(
            read_files_dir(&resolve_files_dir(&root, "alias").expect("alias"))
                .expect("read")
                .len(),
            1
        );
        // A root that is itself a symlink works.
        std::os::unix::fs::symlink(&root, tmp.path().join("root-link")).expect("symlink");
        assert!(resolve_files_dir(&tmp.path().join("root-link"), "team/alice").is_ok());
    }
}
