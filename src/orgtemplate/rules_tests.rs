//! The template rules of ADR 0047, one test per rule: prompt files per files_dir,
//! `workspace_dir` expansion and checks, `workspace_access`, the top level, channels,
//! schedules, and the 41-workspace fixture under `tests/fixtures/org-templates`.

use std::path::Path;

use super::fixtures::Tree;
use super::{ErrorKind, ExternalConfig, Options, Plan, Pos, Source, TemplateError, load_plan};

fn plan_of(files: &[(&str, &str)]) -> Result<Plan, TemplateError> {
    Tree::new(files).plan("org")
}

fn line_of(e: &TemplateError) -> Option<u32> {
    e.pos.map(|Pos { line, .. }| line)
}

#[test]
fn prompt_files_resolve_in_the_workspace_files_dir_and_defaults_in_the_org_root() {
    let t = Tree::new(&[
        (
            "org/org.yaml",
            "defaults:\n  idle_prompt_file: prompts/idle.md\nworkspaces:\n  - !include teams/dev.yaml\n  - name: Bare\n    initial_prompt_file: prompts/bare.md\n",
        ),
        (
            "org/teams/dev.yaml",
            "name: Dev\nfiles_dir: roles/dev\ninitial_prompt_file: start.md\nidle_prompt_file: idle.md\nschedules:\n  - {name: standup, cron_expr: \"0 9 * * 1-5\", prompt_file: schedules/standup.md}\nchildren:\n  - name: Child\n    files_dir: roles/child\n",
        ),
        ("org/prompts/idle.md", "org idle"),
        ("org/prompts/bare.md", "bare start"),
        ("org/roles/dev/start.md", "dev start"),
        ("org/roles/dev/idle.md", "dev idle"),
        ("org/roles/dev/schedules/standup.md", "post the standup"),
        ("org/roles/child/x", ""),
    ]);
    let p = t.plan("org").expect("plan");
    let by = |n: &str| p.workspaces.iter().find(|w| w.display_name == n).expect(n);
    let dev = by("Dev");
    assert_eq!(dev.initial_prompt.as_deref(), Some("dev start"));
    assert_eq!(dev.idle_prompt.as_deref(), Some("dev idle"));
    assert_eq!(dev.schedules[0].prompt, "post the standup");
    // Inherited from defaults: relative to the org root, whatever the child's files_dir.
    assert_eq!(by("Child").idle_prompt.as_deref(), Some("org idle"));
    // No files_dir: the org root.
    assert_eq!(by("Bare").initial_prompt.as_deref(), Some("bare start"));

    // The old reading (relative to the org root) no longer finds a role's own prompt.
    t.write(
        "org/teams/dev.yaml",
        "name: Dev\nfiles_dir: roles/dev\ninitial_prompt_file: roles/dev/start.md\n",
    );
    let e = t.plan("org").expect_err("not in files_dir");
    assert_eq!(e.kind, ErrorKind::Include);
    assert_eq!(
        (e.file.as_str(), e.path.as_str(), line_of(&e)),
        ("org/teams/dev.yaml", "initial_prompt_file", Some(3))
    );
    assert!(e.message.contains("was not found"), "{e}");

    // A prompt file outside the root: refused with its place, nothing read.
    std::fs::write(t.outside().join("secret.md"), "leak").expect("w");
    t.write(
        "org/teams/dev.yaml",
        "name: Dev\nfiles_dir: roles/dev\nschedules:\n  - cron_expr: \"@daily\"\n    prompt_file: ../../../../secret.md\n",
    );
    let e = t.plan("org").expect_err("outside");
    assert_eq!(
        (e.kind, e.path.as_str(), line_of(&e)),
        (ErrorKind::Include, "schedules[0].prompt_file", Some(5))
    );
    assert!(e.message.contains("escapes the template root"), "{e}");
    assert!(!e.to_string().contains("leak"));
}

const DIR_TREE: &str = "workspaces:\n  - name: A\n    files_dir: a\n    workspace_dir: ${WORKSPACE_DIR}/a\n    workspace_access: read_write\n";

#[test]
fn workspace_dir_expands_org_env_then_workspace_env_then_the_process_env() {
    let t = Tree::new(&[
        ("org/org.yaml", DIR_TREE),
        ("org/.env", "WORKSPACE_DIR=/srv/org\n"),
        ("org/a/.env", "OTHER=1\n"),
    ]);
    let p = t.plan("org").expect("plan");
    assert_eq!(p.workspaces[0].workspace_dir.as_deref(), Some("/srv/org/a"));
    assert_eq!(
        p.workspaces[0].workspace_access.as_deref(),
        Some("read-write")
    );
    // The workspace's own .env wins over the org's.
    t.write("org/a/.env", "WORKSPACE_DIR=/srv/own\n");
    let p = t.plan("org").expect("plan");
    assert_eq!(p.workspaces[0].workspace_dir.as_deref(), Some("/srv/own/a"));
    // The process env comes last, when the loader is allowed to read it.
    t.write("org/org.yaml", "workspaces:\n  - name: A\n    workspace_dir: ${CARGO_MANIFEST_DIR}\n    workspace_access: read_only\n");
    let mut opts = t.options();
    assert!(!opts.process_env);
    let e = load_plan(&opts, &Source::Dir("org".into())).expect_err("not without process env");
    assert_eq!(e.kind, ErrorKind::UnresolvedVariable, "{e}");
    opts.process_env = true;
    let p = load_plan(&opts, &Source::Dir("org".into())).expect("process env");
    assert_eq!(
        p.workspaces[0].workspace_dir.as_deref(),
        Some(env!("CARGO_MANIFEST_DIR"))
    );
}

#[test]
fn hostile_workspace_dirs_are_refused_with_file_and_line_and_no_value() {
    let cases = [
        (
            "relative/dir",
            ErrorKind::InvalidWorkspaceDir,
            "relative path",
        ),
        (
            "/srv/../etc",
            ErrorKind::InvalidWorkspaceDir,
            "contains `..`",
        ),
        ("/", ErrorKind::InvalidWorkspaceDir, "is `/`"),
        (
            "/etc/ssh",
            ErrorKind::InvalidWorkspaceDir,
            "system directory /etc",
        ),
        (
            "/var/lib/docker",
            ErrorKind::InvalidWorkspaceDir,
            "system directory /var",
        ),
        (
            "/usr",
            ErrorKind::InvalidWorkspaceDir,
            "system directory /usr",
        ),
        (
            "${SECRET_DIR}",
            ErrorKind::InvalidWorkspaceDir,
            "(after expansion) is a relative",
        ),
        (
            "${UNSET_BASE}/proj",
            ErrorKind::UnresolvedVariable,
            "${UNSET_BASE}",
        ),
        ("${UNCLOSED", ErrorKind::Invalid, "without a closing"),
    ];
    for (dir, kind, msg) in cases {
        let yaml = format!(
            "name: o\nworkspaces:\n  - name: Lead\n    children:\n      - name: A\n        workspace_dir: \"{dir}\"\n        workspace_access: read_write\n"
        );
        let e = plan_of(&[
            ("org/org.yaml", &yaml),
            ("org/.env", "SECRET_DIR=hunter2-value\n"),
        ])
        .expect_err(dir);
        assert_eq!(e.kind, kind, "{dir}: {e}");
        assert_eq!(
            (e.file.as_str(), e.path.as_str(), line_of(&e)),
            (
                "org/org.yaml",
                "workspaces[0].children[0].workspace_dir",
                Some(6)
            ),
            "{dir}"
        );
        assert!(e.message.contains(msg), "{dir}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    // Empty after expansion: no bind (with access none, the default).
    let p = plan_of(&[(
        "org/org.yaml",
        "workspaces:\n  - name: A\n    workspace_dir: ${WORKSPACE_DIR}\n",
    )])
    .expect("empty is no bind");
    assert_eq!(p.workspaces[0].workspace_dir, None);
}

#[test]
fn workspace_access_none_mounts_nothing_and_the_others_need_a_dir() {
    let yaml =
        |access: &str| format!("workspaces:\n  - name: A\n    workspace_dir: /srv/team\n{access}");
    for (access, dir, mode) in [
        ("", None, None),
        ("    workspace_access: none\n", None, None),
        (
            "    workspace_access: read_only\n",
            Some("/srv/team"),
            Some("read-only"),
        ),
        (
            "    workspace_access: read_write\n",
            Some("/srv/team"),
            Some("read-write"),
        ),
        (
            "    workspace_access: read-write\n",
            Some("/srv/team"),
            Some("read-write"),
        ),
    ] {
        let p = plan_of(&[("org/org.yaml", &yaml(access))]).expect(access);
        let w = &p.workspaces[0];
        assert_eq!(
            (w.workspace_dir.as_deref(), w.workspace_access.as_deref()),
            (dir, mode),
            "{access}"
        );
    }
    // Access `none` still checks the dir: a hostile value is never silently kept.
    let e = plan_of(&[(
        "org/org.yaml",
        "workspaces:\n  - name: A\n    workspace_dir: /etc\n",
    )])
    .expect_err("checked anyway");
    assert_eq!(e.kind, ErrorKind::InvalidWorkspaceDir);
    // read_only / read_write without a dir, or with one that expands to nothing.
    let e = plan_of(&[(
        "org/org.yaml",
        "workspaces:\n  - name: A\n    workspace_access: read_only\n",
    )])
    .expect_err("no dir");
    assert_eq!(
        (e.kind, e.path.as_str(), line_of(&e)),
        (
            ErrorKind::Invalid,
            "workspaces[0].workspace_access",
            Some(3)
        )
    );
    assert!(e.message.contains("read_only needs a workspace_dir"), "{e}");
    let e = plan_of(&[(
        "org/org.yaml",
        "workspaces:\n  - name: A\n    workspace_dir: ${NOT_SET_ANYWHERE}\n    workspace_access: read_write\n",
    )])
    .expect_err("expands to nothing");
    assert_eq!(e.kind, ErrorKind::UnresolvedVariable);
    assert!(e.message.contains("expands to nothing"), "{e}");
    let e = plan_of(&[(
        "org/org.yaml",
        "workspaces:\n  - name: A\n    workspace_access: write\n",
    )])
    .expect_err("bad value");
    assert!(e.message.contains("none, read_only or read_write"), "{e}");
}

#[test]
fn top_level_env_memories_and_schema_version() {
    let p = plan_of(&[
        (
            "org/org.yaml",
            "name: Top\ntemplate_schema_version: 1\nrequired_env: [ORG_KEY, {any_of: [A_KEY, B_KEY]}]\nrecommended_env: [NICE_TO_HAVE]\nglobal_memories:\n  - {content: We ship on Thursdays., scope: GLOBAL}\n  - content: No scope given\nsurprise: 1\nworkspaces:\n  - name: Lead\n    recommended_env: [LEAD_EXTRA]\n    children: [{name: Dev}]\n",
        ),
        ("org/.env", "B_KEY=from-env-file\n"),
    ])
    .expect("plan");
    for w in &p.workspaces {
        assert!(
            w.required_env
                .contains(&super::Requirement::Name("ORG_KEY".into())),
            "{}",
            w.key
        );
    }
    let pf = super::preflight(&p, &Default::default());
    assert_eq!(pf.missing_env, ["ORG_KEY"]);
    assert_eq!(pf.recommended_env, ["LEAD_EXTRA", "NICE_TO_HAVE"]);
    assert_eq!(pf.missing_recommended, ["LEAD_EXTRA", "NICE_TO_HAVE"]);
    let available = ["ORG_KEY".to_string()].into_iter().collect();
    assert!(
        super::preflight(&p, &available).ok(),
        "recommended env never blocks"
    );
    assert_eq!(
        p.global_memories,
        [
            super::GlobalMemory {
                content: "We ship on Thursdays.".into(),
                scope: "GLOBAL".into()
            },
            super::GlobalMemory {
                content: "No scope given".into(),
                scope: "GLOBAL".into()
            }
        ]
    );
    assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
    assert!(p.warnings[0].contains("template_schema_version is not used"));
    assert!(p.warnings[1].contains("unknown key \"surprise\""));
    let e = plan_of(&[(
        "org/org.yaml",
        "global_memories: [{scope: x}]\nworkspaces: []\n",
    )])
    .expect_err("no content");
    assert_eq!(e.path, "global_memories[0]");
}

const CHANNELS: &str = r##"workspaces:
  - name: Bot
    files_dir: bot
    channels:
      - type: telegram
        config:
          bot_token: "${TELEGRAM_BOT_TOKEN}"
          chat_id: "${CHAT_ID}"
        allowed_users: [1001, "1002"]
      - type: pager
        config: {x: "1"}
      - type: slack
        config: {channel: "#${UNSET_CHANNEL_VAR}"}
      - type: discord
        config: {token: "literal-secret-in-yaml"}
      - type: slack
        enabled: false
        config: {bot_token: "${CARGO_MANIFEST_DIR}"}
"##;

#[test]
fn channels_expand_carry_a_secret_reference_and_skip_what_cannot_resolve() {
    let t = Tree::new(&[
        ("org/org.yaml", CHANNELS),
        ("org/.env", "TELEGRAM_BOT_TOKEN=123:abc\n"),
        ("org/bot/.env", "CHAT_ID=-100\n"),
    ]);
    let mut opts = t.options();
    opts.process_env = true;
    let p = load_plan(&opts, &Source::Dir("org".into())).expect("plan");
    let w = &p.workspaces[0];
    assert_eq!(w.channels.len(), 1, "{:?}", w.channels_skipped);
    let c = &w.channels[0];
    assert_eq!(c.type_, "telegram");
    assert_eq!(c.config.get("chat_id").map(String::as_str), Some("-100"));
    assert!(
        !c.config.contains_key("bot_token"),
        "tokens never sit in config"
    );
    let sel = c.config_from.as_ref().expect("configFrom");
    assert_eq!(
        (sel.name.as_str(), sel.key.as_str()),
        ("", "TELEGRAM_BOT_TOKEN")
    );
    assert_eq!(c.allowed_users, ["1001", "1002"]);
    let skipped = &w.channels_skipped;
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(
        skipped[0].starts_with("org/org.yaml:10:")
            && skipped[0].contains("unknown adapter \"pager\""),
        "{}",
        skipped[0]
    );
    assert!(
        skipped[1].contains("${UNSET_CHANNEL_VAR}"),
        "{}",
        skipped[1]
    );
    assert!(skipped[2].contains("holds a secret"), "{}", skipped[2]);
    assert!(!skipped[2].contains("literal-secret"), "{}", skipped[2]);
    assert!(
        skipped[3].contains("only in the operator's environment"),
        "{}",
        skipped[3]
    );
    assert!(!format!("{skipped:?}").contains("123:abc"));
    // Skips are warnings of the plan too.
    assert_eq!(p.skipped_entries().count(), 4);
    assert!(p.warnings.iter().any(|w| w.contains("pager")));
    // A channel of the wrong shape fails the template, with its line.
    let e = plan_of(&[(
        "org/org.yaml",
        "workspaces:\n  - name: A\n    channels:\n      - type: telegram\n        config: [a, b]\n",
    )])
    .expect_err("config is a list");
    assert_eq!(
        (e.path.as_str(), line_of(&e)),
        ("workspaces[0].channels[0].config", Some(5))
    );
    let e = plan_of(&[(
        "org/org.yaml",
        "workspaces:\n  - name: A\n    channels: [{config: {}}]\n",
    )])
    .expect_err("no type");
    assert!(e.message.contains("needs a type"), "{e}");
}

#[test]
fn schedules_are_carried_and_bad_ones_skipped_with_their_place() {
    let p = plan_of(&[
        (
            "org/org.yaml",
            r#"workspaces:
  - name: Lead
    files_dir: lead
    schedules:
      - {name: standup, cron_expr: "30 9 * * MON-FRI", timezone: Europe/Berlin, prompt_file: standup.md}
      - {name: nightly, cron_expr: "0 2 * * *", prompt: "run the evals", enabled: false}
      - {name: broken, cron_expr: "61 * * * *", prompt: x}
      - {name: silent, cron_expr: "@hourly", prompt: "   "}
      - {name: standup, cron_expr: "@daily", prompt: again}
      - {cron_expr: "@weekly", prompt: unnamed}
      - {name: martian, cron_expr: "@daily", timezone: Mars/Olympus, prompt: x}
"#,
        ),
        ("org/lead/standup.md", "post the standup\n"),
    ])
    .expect("plan");
    let w = &p.workspaces[0];
    let names: Vec<&str> = w.schedules.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["standup", "nightly", "schedule-6"]);
    assert_eq!(w.schedules[0].prompt, "post the standup\n");
    assert_eq!(w.schedules[0].timezone.as_deref(), Some("Europe/Berlin"));
    assert!(!w.schedules[1].enabled);
    assert_eq!(w.schedules_skipped.len(), 4, "{:?}", w.schedules_skipped);
    assert!(
        w.schedules_skipped[3].contains("unknown time zone"),
        "{}",
        w.schedules_skipped[3]
    );
    assert!(
        w.schedules_skipped[0].starts_with("org/org.yaml:7:"),
        "{}",
        w.schedules_skipped[0]
    );
    assert!(w.schedules_skipped[0].contains("60") || w.schedules_skipped[0].contains("61"));
    assert!(w.schedules_skipped[1].contains("prompt is empty"));
    assert!(w.schedules_skipped[2].contains("same name"));
    let e = plan_of(&[(
        "org/org.yaml",
        "workspaces:\n  - name: A\n    schedules:\n      - {cron_expr: \"@daily\", prompt: x, every: 3}\n",
    )])
    .expect_err("unknown key");
    assert!(e.message.contains("unknown key \"every\""), "{e}");
}

/// The fixture of `tests/fixtures/org-templates`.
pub(crate) fn fixture_options() -> Options {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/org-templates");
    Options {
        external: ExternalConfig::for_root(&root),
        root,
        persona_root: None,
        process_env: false,
    }
}

#[test]
fn the_41_workspace_fixture_plans_on_four_levels() {
    let p = load_plan(&fixture_options(), &Source::Dir("acme".into())).expect("fixture");
    assert_eq!(p.workspaces.len(), 41);
    let depth = |k: &str| k.matches('/').count() + 1;
    assert_eq!(p.workspaces.iter().map(|w| depth(&w.key)).max(), Some(4));
    let ceo = &p.workspaces[0];
    assert_eq!(
        ceo.channels[0].config_from.as_ref().map(|s| s.key.as_str()),
        Some("TELEGRAM_BOT_TOKEN")
    );
    assert_eq!(
        ceo.schedules[0].prompt.lines().next(),
        Some("Write the weekly review: what shipped, what slipped, what is next.")
    );
    let eng = p
        .workspaces
        .iter()
        .find(|w| w.key == "ceo/engineering-lead")
        .expect("eng");
    assert_eq!(eng.channels[0].config["channel"], "#eng");
    assert!(
        eng.origin.starts_with("acme/teams/engineering.yaml"),
        "{}",
        eng.origin
    );
    for w in &p.workspaces {
        assert!(
            w.initial_prompt
                .as_deref()
                .is_some_and(|t| t.contains(&w.display_name)),
            "{}",
            w.key
        );
        assert_eq!(
            w.idle_prompt.as_deref(),
            Some("Anything waiting for you? Check your queue.\n")
        );
        assert!(w.env.0.contains_key("ROLE_SLUG"), "{}", w.key);
        assert_eq!(w.workspace_dir, None, "access none: no bind");
    }
    assert_eq!(p.skipped_entries().count(), 0);
    assert_eq!(p.global_memories.len(), 1);
}
