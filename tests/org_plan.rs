//! `molecule org plan DIR` (ADR 0047): the real binary on the 41-workspace fixture and on
//! broken templates. Offline: no server, no git.

use std::path::Path;
use std::process::Command;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/org-templates")
}

fn plan(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["org", "plan"])
        .args(args)
        .env_remove("ACME_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .expect("run molecule");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_fixture_prints_its_tree_counts_warnings_and_env() {
    let dir = fixture().join("acme");
    let (code, out, err) = plan(&[dir.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    let tree: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("- "))
        .collect();
    assert_eq!(tree.len(), 41, "{out}");
    assert!(
        out.starts_with("org \"Acme\"\n- CEO [ceo] runtime echo tier 2 parent -\n"),
        "{out}"
    );
    assert!(
        out.contains("      - Backend Dev [ceo/engineering-lead/platform-lead/backend-dev] runtime echo tier 2 parent ceo/engineering-lead/platform-lead\n"),
        "{out}"
    );
    assert!(
        out.contains("41 workspaces on 4 levels (41 in the tree, 0 left out by spawning: false)"),
        "{out}"
    );
    assert!(
        out.contains("5 schedules (0 skipped), 2 channels (0 skipped)"),
        "{out}"
    );
    assert!(out.contains("template_schema_version is not used"), "{out}");
    // ACME_API_KEY is satisfied by the org .env; the recommendation is not.
    assert!(
        out.contains("required env: ACME_API_KEY\nmissing env: (none)"),
        "{out}"
    );
    assert!(
        out.contains("missing recommended env: OPENAI_API_KEY|ANTHROPIC_API_KEY"),
        "{out}"
    );
    // With an explicit root the same dir gives the same tree.
    let (code, out2, _) = plan(&[
        dir.to_str().expect("utf8"),
        "--root",
        fixture().to_str().expect("utf8"),
    ]);
    assert_eq!((code, out2), (0, out));
}

#[test]
fn the_first_error_exits_non_zero_with_file_and_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let org = tmp.path().join("broken");
    std::fs::create_dir_all(org.join("teams")).expect("mkdir");
    std::fs::write(
        org.join("org.yaml"),
        "name: Broken\nworkspaces:\n  - !include teams/dev.yaml\n",
    )
    .expect("w");
    std::fs::write(
        org.join("teams/dev.yaml"),
        "name: Dev\nchildren:\n  - name: Ops\n    workspace_dir: /etc/ops\n    workspace_access: read_write\n",
    )
    .expect("w");
    let (code, out, err) = plan(&[org.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err.trim(),
        "error: broken/teams/dev.yaml:4:20: children[0].workspace_dir: workspace_dir \"/etc/ops\" is under the system directory /etc"
    );
    let (code, _, err) = plan(&[tmp.path().join("nope").to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the template directory was not found"),
        "{err}"
    );
}
