//! What an org template may ask of the host (ADR 0039): a maximum tier and the host directories
//! a `workspace_dir` may name, with a stricter limit for content that came from git (a git
//! source or an `!external` subtree). System directories are refused whatever the policy says.
//!
//! Pure: [`check`] takes the plan, the effective [`Policy`] and a resolver for symlinks (the
//! controller passes `std::fs::canonicalize`; the unit tests a table), and returns one
//! [`Refusal`] per refused workspace. A refused workspace takes its subtree with it (a child
//! cannot be created under a parent that does not exist); the rest of the org is imported.

use std::path::{Component, Path, PathBuf};

use super::{DesiredWorkspace, Plan};

/// The tier a workspace runs at when its template says nothing (the Workspace controller's
/// default).
pub const DEFAULT_TIER: i32 = 2;
/// `--template-max-tier` default.
pub const DEFAULT_MAX_TIER: i32 = 3;
/// `--template-git-max-tier` default.
pub const DEFAULT_GIT_MAX_TIER: i32 = 2;

/// Top-level directories a workspace may never mount, nor anything inside them (`lib*` too).
const SYSTEM_TOP: &[&str] = &[
    "etc", "proc", "sys", "dev", "boot", "root", "run", "usr", "bin", "sbin",
];
/// Deeper system paths: refused, inside them and any ancestor of them (so `/var` is refused
/// because it holds the Docker socket).
const SYSTEM_DEEP: &[&str] = &[
    "/var/run",
    "/var/run/docker.sock",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/kubelet",
];

/// Errors of this module: a bad policy value (a flag or a record's `spec.policy`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a tier limit must be 1, 2, 3 or 4, got {0}")]
    Tier(i64),
    #[error("an allowed workspace_dir root must be an absolute path without `..`: {0:?}")]
    RootNotAbsolute(String),
    #[error("{0:?} cannot be an allowed workspace_dir root: it is or holds a system directory")]
    RootIsSystem(String),
}

/// The effective limits of one import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Highest tier any workspace of the template may ask for.
    pub max_tier: i32,
    /// Highest tier a workspace defined in git (a git source, an `!external`) may ask for; the
    /// effective limit is the smaller of this and `max_tier`.
    pub git_max_tier: i32,
    /// Host directories (and their subdirectories) a `workspace_dir` may name; empty: none.
    pub workspace_dir_roots: Vec<PathBuf>,
    /// The same for workspaces defined in git; empty: none.
    pub git_workspace_dir_roots: Vec<PathBuf>,
    /// Refused like the system directories: the data dir, the template root.
    pub protected: Vec<PathBuf>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_tier: DEFAULT_MAX_TIER,
            git_max_tier: DEFAULT_GIT_MAX_TIER,
            workspace_dir_roots: vec![],
            git_workspace_dir_roots: vec![],
            protected: vec![],
        }
    }
}

/// Overrides of a record's `spec.policy`; `None` keeps the operator default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub max_tier: Option<i32>,
    pub git_max_tier: Option<i32>,
    pub workspace_dir_roots: Option<Vec<String>>,
    pub git_workspace_dir_roots: Option<Vec<String>>,
}

impl Policy {
    /// The policy of one import: these defaults with the record's overrides. The record is
    /// written with the admin token only, so an override may raise a limit (ADR 0039).
    pub fn with(&self, o: &Overrides) -> Result<Policy, PolicyError> {
        let mut p = self.clone();
        if let Some(t) = o.max_tier {
            p.max_tier = tier_limit(i64::from(t))?;
        }
        if let Some(t) = o.git_max_tier {
            p.git_max_tier = tier_limit(i64::from(t))?;
        }
        if let Some(r) = &o.workspace_dir_roots {
            p.workspace_dir_roots = roots(r, &p.protected)?;
        }
        if let Some(r) = &o.git_workspace_dir_roots {
            p.git_workspace_dir_roots = roots(r, &p.protected)?;
        }
        Ok(p)
    }
}

/// A tier limit, 1-4.
pub fn tier_limit(t: i64) -> Result<i32, PolicyError> {
    match t {
        1..=4 => Ok(t as i32),
        _ => Err(PolicyError::Tier(t)),
    }
}

/// A comma list of roots (a flag): empty entries dropped.
pub fn parse_roots(list: &str) -> Result<Vec<PathBuf>, PolicyError> {
    let items: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    roots(&items, &[])
}

fn roots(items: &[String], protected: &[PathBuf]) -> Result<Vec<PathBuf>, PolicyError> {
    items
        .iter()
        .map(|s| {
            let p = normalize_abs(s).ok_or_else(|| PolicyError::RootNotAbsolute(s.clone()))?;
            if is_system(&p, protected) {
                return Err(PolicyError::RootIsSystem(s.clone()));
            }
            Ok(p)
        })
        .collect()
}

/// An absolute path, lexically normalised (`.` and repeated `/` dropped); None when relative
/// or holding `..`.
fn normalize_abs(s: &str) -> Option<PathBuf> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether `p` (absolute, normalised) is a system directory, inside one, or holds one.
pub fn is_system(p: &Path, protected: &[PathBuf]) -> bool {
    let mut comps = p.components().skip(1);
    let Some(Component::Normal(top)) = comps.next() else {
        return true; // `/` itself holds everything
    };
    let top = top.to_string_lossy();
    if SYSTEM_TOP.contains(&top.as_ref()) || top.starts_with("lib") {
        return true;
    }
    SYSTEM_DEEP
        .iter()
        .map(PathBuf::from)
        .chain(protected.iter().cloned())
        .any(|s| p.starts_with(&s) || s.starts_with(p))
}

/// The field a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Tier,
    WorkspaceDir,
    /// An ancestor was refused.
    Parent,
}

impl Field {
    /// The condition reason of a refusal of this field.
    pub fn reason(self) -> &'static str {
        match self {
            Field::Tier => "TierAbovePolicy",
            Field::WorkspaceDir => "WorkspaceDirRefused",
            Field::Parent => "ParentRefused",
        }
    }
}

/// One refused workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The workspace's tree key (slugs joined by `/`).
    pub key: String,
    pub field: Field,
    /// E.g. "workspace `dev-lead`: tier 4 exceeds maxTier 3".
    pub message: String,
}

/// The refusals of `plan` under `policy`, in tree order; a refused workspace's descendants are
/// refused too (field [`Field::Parent`]). `resolve` canonicalises a host path when it exists.
pub fn check(
    policy: &Policy,
    plan: &Plan,
    resolve: impl Fn(&Path) -> Option<PathBuf>,
) -> Vec<Refusal> {
    let mut out: Vec<Refusal> = vec![];
    for w in &plan.workspaces {
        let under_refused = out
            .iter()
            .find(|r| w.key.starts_with(&format!("{}/", r.key)));
        if let Some(r) = under_refused {
            let message = format!(
                "workspace `{}`: its ancestor `{}` was refused",
                w.key, r.key
            );
            out.push(Refusal {
                key: w.key.clone(),
                field: Field::Parent,
                message,
            });
            continue;
        }
        if let Some(r) = check_workspace(policy, w, &resolve) {
            out.push(r);
        }
    }
    out
}

/// The refusal of one workspace, if any (tier first, then workspace_dir).
pub fn check_workspace(
    policy: &Policy,
    w: &DesiredWorkspace,
    resolve: &impl Fn(&Path) -> Option<PathBuf>,
) -> Option<Refusal> {
    let refuse = |field, why: String| {
        Some(Refusal {
            key: w.key.clone(),
            field,
            message: format!("workspace `{}`: {why}", w.key),
        })
    };
    let tier = w.tier.unwrap_or(DEFAULT_TIER);
    let shown = if w.tier.is_some() {
        format!("tier {tier}")
    } else {
        format!("tier {tier} (the default)")
    };
    if tier > policy.max_tier {
        return refuse(
            Field::Tier,
            format!("{shown} exceeds maxTier {}", policy.max_tier),
        );
    }
    if w.from_git && tier > policy.git_max_tier {
        return refuse(
            Field::Tier,
            format!(
                "{shown} exceeds gitMaxTier {} (defined in git)",
                policy.git_max_tier
            ),
        );
    }
    let dir = w.workspace_dir.as_deref()?;
    let (roots, which) = if w.from_git {
        (&policy.git_workspace_dir_roots, "gitWorkspaceDirRoots")
    } else {
        (&policy.workspace_dir_roots, "workspaceDirRoots")
    };
    let Some(p) = normalize_abs(dir) else {
        return refuse(
            Field::WorkspaceDir,
            format!("workspace_dir {dir:?} must be an absolute path without `..`"),
        );
    };
    if is_system(&p, &policy.protected) {
        return refuse(
            Field::WorkspaceDir,
            format!("workspace_dir {dir:?} is or holds a system directory"),
        );
    }
    if !roots.iter().any(|r| p.starts_with(r)) {
        return refuse(Field::WorkspaceDir, not_allowed(dir, roots, which));
    }
    // The host resolves symlinks when it mounts: the target must pass too.
    if let Some(real) = resolve(&p).filter(|real| *real != p) {
        if is_system(&real, &policy.protected) {
            return refuse(
                Field::WorkspaceDir,
                format!("workspace_dir {dir:?} resolves (through a symlink) to a system directory"),
            );
        }
        let inside = roots
            .iter()
            .any(|r| real.starts_with(r) || resolve(r).is_some_and(|rr| real.starts_with(rr)));
        if !inside {
            return refuse(
                Field::WorkspaceDir,
                format!("workspace_dir {dir:?} resolves (through a symlink) outside {which}"),
            );
        }
    }
    None
}

fn not_allowed(dir: &str, roots: &[PathBuf], which: &str) -> String {
    if roots.is_empty() {
        format!("workspace_dir {dir:?} is not allowed ({which} is empty: no host directories)")
    } else {
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        format!(
            "workspace_dir {dir:?} is not under {which} ({})",
            list.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::Tree;
    use super::super::{Source, load_plan};
    use super::*;

    fn plan(yaml: &str) -> Plan {
        let t = Tree::new(&[]);
        load_plan(&t.options(), &Source::Inline(yaml.into())).expect("plan")
    }

    fn none(_: &Path) -> Option<PathBuf> {
        None
    }

    fn messages(r: &[Refusal]) -> Vec<&str> {
        r.iter().map(|r| r.message.as_str()).collect()
    }

    #[test]
    fn tiers_above_the_limit_are_refused_with_their_subtree() {
        let p = plan(
            "workspaces:\n  - name: Dev Lead\n    tier: 4\n    children:\n      - name: QA\n  - name: Ok\n    tier: 3\n",
        );
        let r = check(&Policy::default(), &p, none);
        assert_eq!(
            messages(&r),
            [
                "workspace `dev-lead`: tier 4 exceeds maxTier 3",
                "workspace `dev-lead/qa`: its ancestor `dev-lead` was refused",
            ]
        );
        assert_eq!(r[0].field, Field::Tier);
        assert_eq!(r[1].field, Field::Parent);
        let raised = Policy::default()
            .with(&Overrides {
                max_tier: Some(4),
                ..Default::default()
            })
            .expect("valid");
        assert!(check(&raised, &p, none).is_empty());
        // The default tier counts when a limit is below it.
        let low = Policy {
            max_tier: 1,
            ..Policy::default()
        };
        let r = check(&low, &plan("workspaces:\n  - name: a\n"), none);
        assert_eq!(
            messages(&r),
            ["workspace `a`: tier 2 (the default) exceeds maxTier 1"]
        );
    }

    #[test]
    fn git_content_gets_the_git_limit() {
        let mut p = plan("workspaces:\n  - name: a\n    tier: 3\n");
        assert!(check(&Policy::default(), &p, none).is_empty());
        p.workspaces[0].from_git = true;
        assert_eq!(
            messages(&check(&Policy::default(), &p, none)),
            ["workspace `a`: tier 3 exceeds gitMaxTier 2 (defined in git)"]
        );
        let bad = Overrides {
            git_max_tier: Some(5),
            ..Default::default()
        };
        assert_eq!(Policy::default().with(&bad), Err(PolicyError::Tier(5)));
    }

    #[test]
    fn system_dirs_are_always_refused() {
        let protected = vec![PathBuf::from("/home/u/.local/share/molecule")];
        for bad in [
            "/",
            "/etc",
            "/etc/ssh",
            "/proc/1",
            "/sys",
            "/dev",
            "/boot",
            "/root",
            "/run",
            "/var/run/docker.sock",
            "/var",
            "/var/lib",
            "/usr/local",
            "/bin",
            "/sbin",
            "/lib",
            "/lib64",
            "/home/u",
            "/home/u/.local/share/molecule/org-templates",
        ] {
            assert!(is_system(&PathBuf::from(bad), &protected), "{bad}");
        }
        for ok in ["/srv/work", "/home/v", "/tmp/x", "/var/tmp/x", "/opt/team"] {
            assert!(!is_system(&PathBuf::from(ok), &protected), "{ok}");
        }
        // Not even a policy naming `/` as a root allows them.
        assert_eq!(
            parse_roots("/srv, /"),
            Err(PolicyError::RootIsSystem("/".into()))
        );
        assert_eq!(
            parse_roots("srv"),
            Err(PolicyError::RootNotAbsolute("srv".into()))
        );
        assert_eq!(
            parse_roots(" /srv/work/ ,,/opt/./t"),
            Ok(vec![PathBuf::from("/srv/work"), PathBuf::from("/opt/t")])
        );
    }

    #[test]
    fn workspace_dirs_must_be_under_an_allowed_root() {
        let yaml = |d: &str| {
            format!(
                "workspaces:\n  - name: a\n    workspace_dir: {d}\n    workspace_access: read_write\n"
            )
        };
        let policy = Policy {
            workspace_dir_roots: vec![PathBuf::from("/srv/work")],
            ..Policy::default()
        };
        let msg = |d: &str, pol: &Policy| {
            check(pol, &plan(&yaml(d)), none)
                .first()
                .map(|r| r.message.clone())
        };
        assert_eq!(msg("/srv/work/a", &policy), None);
        // `/`, relative paths and `..` never reach the policy: the template is refused first
        // (ADR 0047); the policy check still refuses them on its own.
        let mut root = plan(&yaml("/srv/work/a"));
        root.workspaces[0].workspace_dir = Some("/".into());
        assert_eq!(
            check(&policy, &root, none)[0].message,
            "workspace `a`: workspace_dir \"/\" is or holds a system directory"
        );
        root.workspaces[0].workspace_dir = Some("rel/dir".into());
        assert!(check(&policy, &root, none)[0].message.contains("absolute"));
        assert_eq!(
            msg("/srv/other", &policy).as_deref(),
            Some(
                "workspace `a`: workspace_dir \"/srv/other\" is not under workspaceDirRoots (/srv/work)"
            )
        );
        // The default: no host directories at all.
        assert!(
            msg("/srv/work/a", &Policy::default())
                .is_some_and(|m| m.contains("workspaceDirRoots is empty"))
        );
        // Git content uses its own (empty) list.
        let mut p = plan(&yaml("/srv/work/a"));
        p.workspaces[0].from_git = true;
        let r = check(&policy, &p, none);
        assert!(r[0].message.contains("gitWorkspaceDirRoots"), "{r:?}");
        // A symlink under a root that leads to a system dir is refused, without naming it.
        let resolve = |p: &Path| (p == Path::new("/srv/work/link")).then(|| PathBuf::from("/etc"));
        let r = check(&policy, &plan(&yaml("/srv/work/link")), resolve);
        assert_eq!(r[0].field, Field::WorkspaceDir);
        assert!(r[0].message.contains("through a symlink"), "{r:?}");
        assert!(!r[0].message.contains("/etc"), "{r:?}");
    }
}
