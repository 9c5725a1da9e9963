//! `.env` layering and the env preflight.
//!
//! A workspace's env, lowest first: the persona env `$MOLECULE_PERSONA_ROOT/<files_dir>/env`
//! (only when files_dir is a safe slug), the org root `.env`, then `<files_dir>/.env`. Values are
//! secrets: errors name the file and line, never a value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{
    Confinement, EnvMap, ErrorKind, MAX_AUX_FILE_BYTES, Options, Plan, TemplateError, confined,
    slash,
};

/// The result of the env preflight, as the original's 412 reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preflight {
    /// Every requirement of the spawning workspaces (`NAME` or `A|B`), sorted.
    pub required_env: Vec<String>,
    /// The requirements some workspace cannot satisfy, sorted.
    pub missing_env: Vec<String>,
    /// Every recommendation (`recommended_env`), sorted: warn-only.
    pub recommended_env: Vec<String>,
    /// The recommendations some workspace cannot satisfy, sorted.
    pub missing_recommended: Vec<String>,
}

impl Preflight {
    pub fn ok(&self) -> bool {
        self.missing_env.is_empty()
    }
}

/// Checks every spawning workspace's requirements against `available` (names with a non-empty
/// value in the namespace's global secrets) and the workspace's own layered env.
pub fn preflight(plan: &Plan, available: &BTreeSet<String>) -> Preflight {
    let mut missing = BTreeSet::new();
    let mut missing_recommended = BTreeSet::new();
    for w in &plan.workspaces {
        let has = |n: &str| available.contains(n) || w.env.0.get(n).is_some_and(|v| !v.is_empty());
        for r in &w.required_env {
            if !r.satisfied_by(has) {
                missing.insert(r.render());
            }
        }
        for r in &w.recommended_env {
            if !r.satisfied_by(has) {
                missing_recommended.insert(r.render());
            }
        }
    }
    Preflight {
        required_env: plan.required_env(),
        missing_env: missing.into_iter().collect(),
        recommended_env: plan.recommended_env(),
        missing_recommended: missing_recommended.into_iter().collect(),
    }
}

/// A safe persona key: `[A-Za-z0-9_-]+`.
fn safe_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `KEY=VALUE` lines (`export ` prefix, `#` comments, quoted values).
pub(crate) fn parse_env(text: &str, name: &str) -> Result<BTreeMap<String, String>, TemplateError> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let at = format!("line {}", i + 1);
        let Some((k, v)) = line.split_once('=') else {
            return Err(TemplateError::new(
                ErrorKind::EnvFile,
                name,
                at,
                "expected KEY=VALUE",
            ));
        };
        let k = k.trim();
        if !valid_key(k) {
            return Err(TemplateError::new(
                ErrorKind::EnvFile,
                name,
                at,
                "the key must be letters, digits and underscores",
            ));
        }
        let v = v.trim();
        let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
            v[1..v.len() - 1]
                .replace("\\n", "\n")
                .replace("\\\"", "\"")
                .replace("\\\\", "\\")
        } else if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
            v[1..v.len() - 1].to_string()
        } else {
            // An unquoted value ends at ` #` (an inline comment).
            v.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

fn read_env(path: &Path, name: &str) -> Result<BTreeMap<String, String>, TemplateError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        _ => return Ok(BTreeMap::new()),
    };
    if meta.len() > MAX_AUX_FILE_BYTES {
        return Err(TemplateError::new(
            ErrorKind::TooLarge,
            name,
            "",
            format!("larger than {MAX_AUX_FILE_BYTES} bytes"),
        ));
    }
    // The size is enforced again while reading: the file may have grown since (ADR 0039).
    let bytes = super::read_limited(path, MAX_AUX_FILE_BYTES).map_err(|e| match e {
        super::ReadError::TooLarge(_) => TemplateError::new(
            ErrorKind::TooLarge,
            name,
            "",
            format!("larger than {MAX_AUX_FILE_BYTES} bytes"),
        ),
        super::ReadError::Io(_) => {
            TemplateError::new(ErrorKind::EnvFile, name, "", "not readable UTF-8 text")
        }
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| TemplateError::new(ErrorKind::EnvFile, name, "", "not readable UTF-8 text"))?;
    parse_env(&text, name)
}

/// An env file under the template root, confined like files_dir; missing is empty.
fn read_confined(opts: &Options, rel: &Path) -> Result<BTreeMap<String, String>, TemplateError> {
    let name = slash(rel);
    match confined(&opts.root, rel) {
        Ok(p) => read_env(&p, &name),
        Err(Confinement::Missing) => Ok(BTreeMap::new()),
        Err(Confinement::Escapes) => Err(TemplateError::new(
            ErrorKind::EnvFile,
            name,
            "",
            "resolves (through a symlink) outside the template root",
        )),
    }
}

/// The org root `.env` (read once per plan; every workspace shares it).
pub(crate) fn org_root(
    opts: &Options,
    org_dir_rel: &Path,
) -> Result<BTreeMap<String, String>, TemplateError> {
    read_confined(opts, &org_dir_rel.join(".env"))
}

/// The layered env of one workspace. `files_dir_raw` is files_dir as written (the persona
/// key); `files_dir_rel` is it resolved against the template root.
pub(crate) fn layered(
    opts: &Options,
    org_env: &BTreeMap<String, String>,
    files_dir_raw: Option<&str>,
    files_dir_rel: Option<&str>,
) -> Result<EnvMap, TemplateError> {
    let mut env = BTreeMap::new();
    if let (Some(root), Some(key)) = (&opts.persona_root, files_dir_raw)
        && safe_slug(key)
    {
        env.extend(read_env(
            &root.join(key).join("env"),
            &format!("persona env {key}"),
        )?);
    }
    env.extend(org_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(fd) = files_dir_rel {
        env.extend(read_confined(opts, &Path::new(fd).join(".env"))?);
    }
    Ok(EnvMap(env))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::Tree;
    use super::*;

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const TREE: &str = r#"
defaults:
  required_env: [ORG_TOKEN]
workspaces:
  - name: Lead
    required_env:
      - {any_of: [OPENAI_API_KEY, ANTHROPIC_API_KEY]}
  - name: Writer
    files_dir: writer
    required_env: [WRITER_KEY]
  - name: Idle
    spawning: false
    required_env: [NEVER_CHECKED]
"#;

    #[test]
    fn preflight_covers_names_groups_layers_and_spawning() {
        let t = Tree::new(&[
            ("org/org.yaml", TREE),
            ("org/writer/.env", "WRITER_KEY=from-files-dir\n"),
        ]);
        let p = t.plan("org").expect("plan");
        // Nothing available: the org-wide name and the group are missing; WRITER_KEY comes
        // from the writer's own .env; the non-spawning subtree is not checked.
        let f = preflight(&p, &names(&[]));
        assert_eq!(
            f.required_env,
            [
                "OPENAI_API_KEY|ANTHROPIC_API_KEY",
                "ORG_TOKEN",
                "WRITER_KEY"
            ]
        );
        assert_eq!(
            f.missing_env,
            ["OPENAI_API_KEY|ANTHROPIC_API_KEY", "ORG_TOKEN"]
        );
        assert!(!f.ok());
        // One member of the group is enough.
        let f = preflight(&p, &names(&["ORG_TOKEN", "ANTHROPIC_API_KEY"]));
        assert!(f.ok(), "{f:?}");
        // An org root .env satisfies every workspace.
        t.write("org/.env", "ORG_TOKEN=x\nOPENAI_API_KEY=y\n");
        let p = t.plan("org").expect("plan");
        assert!(preflight(&p, &names(&[])).ok());
        // An empty value does not count.
        t.write("org/.env", "ORG_TOKEN=\nOPENAI_API_KEY=y\n");
        let p = t.plan("org").expect("plan");
        assert_eq!(preflight(&p, &names(&[])).missing_env, ["ORG_TOKEN"]);
    }

    #[test]
    fn env_layers_persona_then_org_then_files_dir() {
        let t = Tree::new(&[
            (
                "org/org.yaml",
                "workspaces:\n  - name: Core\n    files_dir: core-lead\n  - name: Deep\n    files_dir: team/deep\n",
            ),
            ("org/.env", "A=org\nB=org\nC=org\n"),
            ("org/core-lead/.env", "export C=\"files dir\"\n# comment\n"),
            (
                "org/team/deep/.env",
                "D='quoted # kept'\nE=plain # comment\n",
            ),
        ]);
        let personas = t.outside().join("personas");
        std::fs::create_dir_all(personas.join("core-lead")).expect("mkdir");
        std::fs::write(
            personas.join("core-lead/env"),
            "A=persona\nB=persona\nP=persona\n",
        )
        .expect("w");
        let mut opts = t.options();
        opts.persona_root = Some(personas);
        let p =
            super::super::load_plan(&opts, &super::super::Source::Dir("org".into())).expect("plan");
        let core = &p.workspaces[0].env.0;
        assert_eq!(core["P"], "persona");
        assert_eq!(
            core["A"], "org",
            "the org root .env overrides the persona env"
        );
        assert_eq!(
            core["C"], "files dir",
            "files_dir/.env overrides the org root"
        );
        // A nested files_dir is not a safe persona key: no persona layer.
        let deep = &p.workspaces[1].env.0;
        assert!(!deep.contains_key("P"));
        assert_eq!(deep["D"], "quoted # kept");
        assert_eq!(deep["E"], "plain");
    }

    #[test]
    fn bad_env_files_name_the_line_not_the_value() {
        let e = parse_env("OK=1\nthis is secret-value\n", "org/.env").expect_err("bad");
        assert_eq!((e.file.as_str(), e.path.as_str()), ("org/.env", "line 2"));
        assert!(!e.to_string().contains("secret-value"), "{e}");
        let e = parse_env("1BAD=secret-value\n", "org/.env").expect_err("key");
        assert!(!e.to_string().contains("secret-value"), "{e}");
    }
}
