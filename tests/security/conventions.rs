//! Operator conventions (ADR 0043): JSON log lines, shell completions, `MOLECULE_*`
//! environment names in `--help` without secret values, and old names kept as warned fallbacks.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

fn molecule() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_molecule"));
    for k in [
        "DATABASE_URL",
        "MOLECULE_DATABASE_URL",
        "IMAGE_AUTO_REFRESH",
        "MOLECULE_IMAGE_AUTO_REFRESH",
        "POD_NAMESPACE",
        "MOLECULE_POD_NAMESPACE",
        "MOLECULE_LOG_FORMAT",
        "MOLECULE_LOG",
        "RUST_LOG",
        "MOLECULE_SECRET_KEY",
        "MOLECULE_INSTANCE",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("RUST_BACKTRACE", "0").stdin(Stdio::null());
    cmd
}

#[test]
fn log_format_json_writes_parseable_lines_with_the_fixed_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = molecule()
        .args(["--log-format", "json", "serve", "--controllers", "none"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn molecule serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = vec![];
    let mut found = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&line);
        seen.push(line);
        if let Ok(v) = parsed
            && v["message"] == "molecule API server ready"
        {
            found = Some(v);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let v = found.unwrap_or_else(|| panic!("no JSON ready line in {seen:#?}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["target"], "molecule::serve", "{v}");
    assert_eq!(v["fields"]["store"], "sqlite", "{v}");
    assert!(v["timestamp"].as_str().is_some_and(|t| t.len() > 10), "{v}");
    for line in &seen {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "every stderr line is JSON: {line}"
        );
    }
}

#[test]
fn completions_print_a_script_naming_the_subcommands() {
    let out = molecule()
        .args(["completions", "bash"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("serve") && script.contains("operator"),
        "{script}"
    );
    assert!(script.contains("complete"), "{script}");
}

#[test]
fn help_names_only_molecule_env_vars_and_hides_secret_values() {
    let secrets = [
        ("MOLECULE_GITEA_TOKEN", "gitea-token-5d1f"),
        ("MOLECULE_CP_SHARED_SECRET", "cp-shared-7a2c"),
        ("MOLECULE_CP_ADMIN_TOKEN", "cp-admin-9e4b"),
        ("MOLECULE_DATABASE_URL", "postgres://u:dbpass-3f8a@h/db"),
        (
            "MOLECULE_SECRET_KEY",
            "c2VjcmV0LWtleS0xMjM0NTY3ODkwMTIzNDU2Nzg5MDEy",
        ),
    ];
    for sub in ["serve", "operator"] {
        let out = molecule()
            .envs(secrets.iter().copied())
            .args([sub, "--help"])
            .output()
            .expect("run");
        assert!(out.status.success(), "{out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for (name, value) in secrets {
            // `operator` keeps no secrets at rest, so it has no secret key.
            if sub == "serve" || name != "MOLECULE_SECRET_KEY" {
                assert!(help.contains(name), "{sub} --help names {name}: {help}");
            }
            assert!(
                !help.contains(value),
                "{sub} --help shows the value of {name}"
            );
        }
        for name in [
            "MOLECULE_LOG_FORMAT",
            "MOLECULE_IMAGE_AUTO_REFRESH",
            "MOLECULE_EXTERNAL_REPO_ALLOWLIST",
            "MOLECULE_PERSONA_ROOT",
        ] {
            assert!(help.contains(name), "{sub} --help names {name}: {help}");
        }
        let names: Vec<&str> = help
            .split("[env: ")
            .skip(1)
            .map(|rest| rest.split(['=', ']']).next().unwrap_or(""))
            .collect();
        assert!(!names.is_empty(), "{help}");
        for n in names {
            assert!(
                n.starts_with("MOLECULE_"),
                "{sub}: env var {n} lacks the prefix"
            );
        }
    }
    let serve = molecule().args(["serve", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&serve.stdout);
    for name in ["MOLECULE_ENV", "MOLECULE_ADMIN_ROUTES"] {
        assert!(help.contains(name), "serve --help names {name}: {help}");
    }
}

#[test]
fn an_old_env_name_still_works_and_warns_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |env: &[(&str, &str)]| {
        molecule()
            .envs(env.iter().copied())
            .args(["serve", "--controllers", "none"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .expect("run")
    };
    // Only the old name: it is read (the bogus URL stops the start) and warned about once.
    let out = run(&[("DATABASE_URL", "mysql://old-name.invalid/x")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("\"mysql\""), "the old name was read: {err}");
    assert_eq!(
        err.matches("DATABASE_URL is deprecated").count(),
        1,
        "one warning: {err}"
    );
    assert!(err.contains("MOLECULE_DATABASE_URL"), "{err}");
    // Both names: the new one wins and nothing is warned about.
    let out = run(&[
        ("DATABASE_URL", "mysql://old-name.invalid/x"),
        ("MOLECULE_DATABASE_URL", "oracle://new-name.invalid/x"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"oracle\""), "the new name wins: {err}");
    assert!(!err.contains("deprecated"), "{err}");
}
