//! `${VAR}` expansion and the `workspace_dir` / `workspace_access` rules (ADR 0047).
//!
//! A variable is looked up in the workspace's layered env (the org `.env`, then its own
//! `.env`; the later wins), then in the process environment. The process environment is not
//! consulted for content that came from git, nor for the operator's own `MOLECULE_*`
//! settings: a template must not be able to read the operator's secrets into a spec.
//! Messages never show an expanded value, only the text as written and the variable names.

use std::path::{Component, Path};

use super::schema::Loc;
use super::{EnvMap, ErrorKind, TemplateError};

/// Top-level host directories a `workspace_dir` may never be, nor lie under.
pub const SYSTEM_DIRS: &[&str] = &[
    "/etc", "/var", "/proc", "/sys", "/dev", "/boot", "/sbin", "/bin", "/lib", "/usr",
];

/// Where variables come from for one workspace.
pub(crate) struct Lookup<'a> {
    pub env: &'a EnvMap,
    /// Whether the process environment is the last layer (not for git content).
    pub process: bool,
}

impl Lookup<'_> {
    /// The value of `name`, and whether it came from the template's `.env` files.
    pub fn get(&self, name: &str) -> Option<(String, bool)> {
        if let Some(v) = self.env.0.get(name) {
            return Some((v.clone(), true));
        }
        if self.process && !name.starts_with("MOLECULE_") {
            return std::env::var(name).ok().map(|v| (v, false));
        }
        None
    }
}

/// The result of expanding one string.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Expanded {
    pub value: String,
    /// Variables set nowhere, in order of appearance.
    pub unresolved: Vec<String>,
    /// Variables used, in order of appearance.
    pub used: Vec<String>,
}

/// Why a string could not be expanded at all.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadSyntax(pub String);

fn valid_var(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.len() <= 128
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Expands every `${NAME}` in `s`; an unresolved name expands to nothing and is listed. A
/// `$` not followed by `{` is kept as written.
pub(crate) fn expand(s: &str, lookup: &Lookup<'_>) -> Result<Expanded, BadSyntax> {
    let mut out = Expanded {
        value: String::with_capacity(s.len()),
        unresolved: vec![],
        used: vec![],
    };
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.value.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(BadSyntax("`${` without a closing `}`".into()));
        };
        let name = &after[..end];
        if !valid_var(name) {
            return Err(BadSyntax(format!(
                "`${{{name}}}` is not a variable name (letters, digits and `_`)"
            )));
        }
        out.used.push(name.to_string());
        match lookup.get(name) {
            Some((v, _)) => out.value.push_str(&v),
            None => out.unresolved.push(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.value.push_str(rest);
    Ok(out)
}

/// A workspace's host directory after expansion; None: no bind.
///
/// `access` is `none`, `read-only` or `read-write` (None: `none`). Only a bind that will
/// happen is returned, but the directory is checked whatever the access says.
pub(crate) fn workspace_dir(
    dir: Option<&(String, Loc)>,
    access: Option<&(String, Loc)>,
    lookup: &Lookup<'_>,
) -> Result<Option<String>, TemplateError> {
    let expanded = match dir {
        None => None,
        Some((raw, loc)) => checked_dir(raw, loc, lookup)?,
    };
    match access {
        None => Ok(None),
        Some((a, _)) if a == "none" => Ok(None),
        Some((a, loc)) => match (&expanded, dir) {
            (Some(d), _) => Ok(Some(d.clone())),
            (None, None) => Err(loc.err(
                ErrorKind::Invalid,
                format!("workspace_access {} needs a workspace_dir", a.replace('-', "_")),
            )),
            (None, Some((raw, _))) => Err(loc.err(
                ErrorKind::UnresolvedVariable,
                format!(
                    "workspace_access {} needs a workspace_dir, and {raw:?} expands to nothing \
                     (set its variables in the org .env, the workspace .env or the operator's environment)",
                    a.replace('-', "_")
                ),
            )),
        },
    }
}

/// `raw` expanded and checked: absolute, no `..`, not a system directory. Empty: None.
fn checked_dir(raw: &str, loc: &Loc, lookup: &Lookup<'_>) -> Result<Option<String>, TemplateError> {
    let e = expand(raw, lookup).map_err(|BadSyntax(why)| {
        loc.err(ErrorKind::Invalid, format!("workspace_dir {raw:?}: {why}"))
    })?;
    let value = e.value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if !e.unresolved.is_empty() {
        let names: Vec<String> = e.unresolved.iter().map(|n| format!("${{{n}}}")).collect();
        return Err(loc.err(
            ErrorKind::UnresolvedVariable,
            format!(
                "workspace_dir {raw:?} uses {}, set in neither the org .env, the workspace .env \
                 nor the operator's environment",
                names.join(", ")
            ),
        ));
    }
    // The expanded value is not shown: it may come from the environment.
    let shown = if e.used.is_empty() {
        format!("{raw:?}")
    } else {
        format!("{raw:?} (after expansion)")
    };
    let p = Path::new(value);
    if !p.is_absolute() {
        return Err(loc.err(
            ErrorKind::InvalidWorkspaceDir,
            format!("workspace_dir {shown} is a relative path; it must be absolute"),
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(loc.err(
            ErrorKind::InvalidWorkspaceDir,
            format!("workspace_dir {shown} contains `..`"),
        ));
    }
    if p.components().all(|c| c == Component::RootDir) {
        return Err(loc.err(
            ErrorKind::InvalidWorkspaceDir,
            format!("workspace_dir {shown} is `/`, which holds every system directory"),
        ));
    }
    if let Some(sys) = SYSTEM_DIRS.iter().find(|s| p.starts_with(s)) {
        return Err(loc.err(
            ErrorKind::InvalidWorkspaceDir,
            format!("workspace_dir {shown} is under the system directory {sys}"),
        ));
    }
    Ok(Some(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        EnvMap(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn expansion_layers_env_files_then_process_env() {
        let e = env(&[("A", "x"), ("EMPTY", "")]);
        let l = Lookup {
            env: &e,
            process: true,
        };
        let r = expand(
            "${A}/${EMPTY}/${CARGO_MANIFEST_DIR}/$HOME/${NOPE_NOT_SET_1}",
            &l,
        )
        .expect("ok");
        assert_eq!(r.value, format!("x//{}/$HOME/", env!("CARGO_MANIFEST_DIR")));
        assert_eq!(r.unresolved, ["NOPE_NOT_SET_1"]);
        assert_eq!(
            r.used,
            ["A", "EMPTY", "CARGO_MANIFEST_DIR", "NOPE_NOT_SET_1"]
        );
        // Git content does not see the process environment.
        let git = Lookup {
            env: &e,
            process: false,
        };
        let r = expand("${CARGO_MANIFEST_DIR}", &git).expect("ok");
        assert_eq!(r.unresolved, ["CARGO_MANIFEST_DIR"]);
        assert!(expand("${A", &l).is_err());
        assert!(expand("${A B}", &l).is_err());
    }
}
