//! The plugin directory format and manifest integrity.
//!
//! ```text
//! plugin.yaml                 name, version, description, runtimes, skills
//! skills/<skill>/SKILL.md     one directory per skill, each with a SKILL.md
//! rules/*.md                  rules
//! hooks/*                     hooks (scripts; loaded at session start)
//! commands/*.md               slash commands
//! settings-fragment.json      a JSON object merged into the runtime's settings
//! manifest.json               optional: {"files": {"<path>": "<sha256 hex>", …}} over every
//!                             other file; any mismatch, missing or extra file is refused
//! ```
//!
//! Other files (README.md, LICENSE, …) are carried along. `.complete` is reserved for the
//! install marker.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::tree::PluginTree;
use super::{MARKER, Refusal};

pub const PLUGIN_YAML: &str = "plugin.yaml";
pub const MANIFEST_JSON: &str = "manifest.json";
pub const SETTINGS_FRAGMENT: &str = "settings-fragment.json";
/// Largest accepted plugin.yaml / manifest.json.
const MAX_META_BYTES: usize = 256 * 1024;

/// `plugin.yaml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct PluginMeta {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Runtimes the plugin supports (empty: any).
    #[serde(default)]
    pub runtimes: Vec<String>,
    /// Skills the plugin declares; each needs `skills/<skill>/SKILL.md`.
    #[serde(default)]
    pub skills: Vec<String>,
}

fn invalid(why: impl Into<String>) -> Refusal {
    Refusal::new("InvalidPlugin", why)
}

/// Validates a fetched plugin and returns its metadata. `expected_name` (the `local://` name)
/// must equal `plugin.yaml`'s name when given.
pub fn validate(tree: &PluginTree, expected_name: Option<&str>) -> Result<PluginMeta, Refusal> {
    let yaml = tree.get(PLUGIN_YAML).ok_or_else(|| {
        Refusal::new(
            "MissingPluginYaml",
            "the plugin has no plugin.yaml at its root",
        )
    })?;
    if yaml.content.len() > MAX_META_BYTES {
        return Err(invalid("plugin.yaml is larger than 256 KiB"));
    }
    let meta: PluginMeta = crate::yaml::from_slice(&yaml.content).map_err(|e| {
        invalid(format!(
            "plugin.yaml is not valid: {}",
            super::source::shorten(&e.to_string(), 200)
        ))
    })?;
    super::source::check_name(&meta.name)
        .map_err(|r| invalid(format!("plugin.yaml: {}", r.message)))?;
    if let Some(expected) = expected_name
        && expected != meta.name
    {
        return Err(invalid(format!(
            "plugin.yaml names the plugin {:?}, but the source names it {expected:?}",
            meta.name
        )));
    }
    if tree.get(MARKER).is_some() {
        return Err(invalid(".complete is reserved for the install marker"));
    }
    let mut skill_dirs = BTreeSet::new();
    for f in tree.files() {
        let parts: Vec<&str> = f.path.split('/').collect();
        match parts.as_slice() {
            ["skills", skill, rest @ ..] if !rest.is_empty() => {
                skill_dirs.insert(skill.to_string());
            }
            ["skills", _] => {
                return Err(invalid(format!(
                    "{}: skills/ holds one directory per skill",
                    f.path
                )));
            }
            ["rules", rest @ ..] | ["commands", rest @ ..]
                if !f.path.ends_with(".md") || rest.is_empty() =>
            {
                return Err(invalid(format!(
                    "{}: rules and commands are .md files",
                    f.path
                )));
            }
            _ => {}
        }
    }
    for skill in &skill_dirs {
        if tree.get(&format!("skills/{skill}/SKILL.md")).is_none() {
            return Err(invalid(format!("skills/{skill}/ has no SKILL.md")));
        }
    }
    for skill in &meta.skills {
        if !skill_dirs.contains(skill) {
            return Err(invalid(format!(
                "plugin.yaml declares skill {:?} but skills/{}/SKILL.md is missing",
                super::source::shorten(skill, 64),
                super::source::shorten(skill, 64)
            )));
        }
    }
    if let Some(f) = tree.get(SETTINGS_FRAGMENT) {
        match serde_json::from_slice::<serde_json::Value>(&f.content) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => return Err(invalid("settings-fragment.json must be a JSON object")),
        }
    }
    check_integrity(tree)?;
    Ok(meta)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    files: BTreeMap<String, String>,
}

/// Verifies `manifest.json` (when present) against the tree: every other file listed with its
/// sha256, nothing missing, nothing extra.
pub fn check_integrity(tree: &PluginTree) -> Result<(), Refusal> {
    let Some(m) = tree.get(MANIFEST_JSON) else {
        return Ok(());
    };
    let mismatch = |why: String| Refusal::new("IntegrityMismatch", why);
    if m.content.len() > MAX_META_BYTES * 16 {
        return Err(mismatch("manifest.json is larger than 4 MiB".into()));
    }
    let manifest: Manifest = serde_json::from_slice(&m.content).map_err(|_| {
        mismatch("manifest.json is not {\"files\": {\"<path>\": \"<sha256>\"}}".into())
    })?;
    let actual = tree.hashes();
    for (path, hash) in &actual {
        if path == MANIFEST_JSON {
            continue;
        }
        match manifest.files.get(path) {
            None => return Err(mismatch(format!("{path} is not listed in manifest.json"))),
            Some(want) if !want.eq_ignore_ascii_case(hash) => {
                return Err(mismatch(format!(
                    "{path}: sha256 does not match manifest.json"
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(missing) = manifest.files.keys().find(|p| !actual.contains_key(*p)) {
        return Err(mismatch(format!(
            "{} is listed in manifest.json but missing",
            super::source::shorten(missing, 120)
        )));
    }
    Ok(())
}

/// The `manifest.json` content for a tree (every file but the manifest itself).
pub fn manifest_for(tree: &PluginTree) -> String {
    let files: BTreeMap<String, String> = tree
        .hashes()
        .into_iter()
        .filter(|(p, _)| p != MANIFEST_JSON)
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "files": files })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::tree::Limits;

    fn tree(files: &[(&str, &str)]) -> PluginTree {
        let mut t = PluginTree::default();
        for (p, c) in files {
            t.insert(p, 0o644, c.as_bytes().to_vec(), &Limits::default())
                .unwrap();
        }
        t
    }

    const YAML: &str =
        "name: hello\nversion: 1.0.0\ndescription: d\nruntimes: [echo]\nskills: [greet]\n";

    #[test]
    fn a_valid_plugin() {
        let t = tree(&[
            ("plugin.yaml", YAML),
            ("skills/greet/SKILL.md", "# Greet"),
            ("rules/be-nice.md", "x"),
            ("hooks/on-start.sh", "#!/bin/sh"),
            ("commands/hi.md", "x"),
            ("settings-fragment.json", "{\"a\":1}"),
            ("README.md", "x"),
        ]);
        let m = validate(&t, Some("hello")).unwrap();
        assert_eq!(m.name, "hello");
        assert_eq!(m.version.as_deref(), Some("1.0.0"));
        assert_eq!(m.runtimes, vec!["echo"]);
    }

    #[test]
    fn format_errors() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("skills/greet/SKILL.md", "x")], "MissingPluginYaml"),
            (vec![("plugin.yaml", "name: [")], "InvalidPlugin"),
            (vec![("plugin.yaml", "name: ../x")], "InvalidPlugin"),
            (vec![("plugin.yaml", "name: a;b")], "InvalidPlugin"),
            (vec![("plugin.yaml", "name: other")], "InvalidPlugin"),
            (
                vec![("plugin.yaml", "name: hello\nskills: [greet]")],
                "InvalidPlugin",
            ),
            (
                vec![("plugin.yaml", "name: hello"), ("skills/x/notes.md", "x")],
                "InvalidPlugin",
            ),
            (
                vec![("plugin.yaml", "name: hello"), ("skills/SKILL.md", "x")],
                "InvalidPlugin",
            ),
            (
                vec![("plugin.yaml", "name: hello"), ("rules/a.txt", "x")],
                "InvalidPlugin",
            ),
            (
                vec![
                    ("plugin.yaml", "name: hello"),
                    ("settings-fragment.json", "[1]"),
                ],
                "InvalidPlugin",
            ),
            (
                vec![("plugin.yaml", "name: hello"), (".complete", "")],
                "InvalidPlugin",
            ),
        ];
        for (files, reason) in cases {
            let r = validate(&tree(&files), Some("hello")).unwrap_err();
            assert_eq!(r.reason, reason, "{files:?}: {}", r.message);
        }
    }

    #[test]
    fn manifest_integrity() {
        let mut t = tree(&[("plugin.yaml", "name: hello"), ("rules/a.md", "x")]);
        let good = manifest_for(&t);
        t.insert(
            MANIFEST_JSON,
            0o644,
            good.clone().into_bytes(),
            &Limits::default(),
        )
        .unwrap();
        assert!(validate(&t, None).is_ok());

        let mut tampered = t.clone();
        tampered
            .insert("rules/a.md", 0o644, b"y".to_vec(), &Limits::default())
            .unwrap();
        let r = validate(&tampered, None).unwrap_err();
        assert_eq!(r.reason, "IntegrityMismatch");
        assert!(r.message.contains("rules/a.md"), "{}", r.message);

        let mut extra = t.clone();
        extra
            .insert("rules/b.md", 0o644, b"z".to_vec(), &Limits::default())
            .unwrap();
        assert_eq!(
            validate(&extra, None).unwrap_err().reason,
            "IntegrityMismatch"
        );

        let mut listed = tree(&[("plugin.yaml", "name: hello")]);
        listed
            .insert(MANIFEST_JSON, 0o644, good.into_bytes(), &Limits::default())
            .unwrap();
        assert_eq!(
            validate(&listed, None).unwrap_err().reason,
            "IntegrityMismatch"
        );

        let mut junk = tree(&[("plugin.yaml", "name: hello")]);
        junk.insert(MANIFEST_JSON, 0o644, b"{}".to_vec(), &Limits::default())
            .unwrap();
        assert_eq!(
            validate(&junk, None).unwrap_err().reason,
            "IntegrityMismatch"
        );
    }
}
