//! The agent's configuration: the operator-generated `config.yaml`, its environment overrides,
//! and the bearer token file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use super::DEFAULT_HEARTBEAT_SECONDS;
use crate::net::http::Url;

/// Why the configuration or the token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `config.yaml` is not valid YAML of the expected shape.
    #[error("cannot parse the agent configuration: {0}")]
    Parse(#[from] crate::yaml::Error),
    /// Neither the file nor `WORKSPACE_ID` gives a workspace id.
    #[error("workspace_id is missing (set it in config.yaml or WORKSPACE_ID)")]
    MissingWorkspaceId,
    /// Neither the file nor `PLATFORM_URL` gives a platform URL.
    #[error("platform_url is missing (set it in config.yaml or PLATFORM_URL)")]
    MissingPlatformUrl,
    /// The platform URL is not a plain `http://host[:port][/path]` URL.
    #[error("invalid platform_url: {0}")]
    PlatformUrl(String),
    /// `heartbeat_seconds` / `HEARTBEAT_SECONDS` is not a positive integer.
    #[error("invalid heartbeat period {0:?}: expected a positive number of seconds")]
    HeartbeatSeconds(String),
    /// `agent_card` is present but not a mapping.
    #[error("agent_card must be a mapping")]
    AgentCard,
    /// The token file is unusable (its content is never included).
    #[error("token file {}: {reason}", path.display())]
    Token { path: PathBuf, reason: &'static str },
}

/// `config.yaml` as written by the operator; unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    workspace_id: Option<String>,
    name: Option<String>,
    /// The role, in the original platform's shape (ADR 0048).
    description: Option<String>,
    role: Option<String>,
    initial_prompt: Option<String>,
    idle_prompt: Option<String>,
    idle_interval_seconds: Option<u64>,
    runtime: Option<String>,
    platform_url: Option<String>,
    agent_url: Option<String>,
    heartbeat_seconds: Option<u64>,
    agent_card: Option<Value>,
}

/// The resolved agent configuration (file + environment overrides + defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Workspace id (`workspace_id` / `WORKSPACE_ID`).
    pub workspace_id: String,
    /// Display name; defaults to the workspace id.
    pub name: String,
    /// Free-form role, if any.
    pub role: Option<String>,
    /// Runtime name; defaults to `echo`.
    pub runtime: String,
    /// Base URL of the platform, without a trailing slash (`platform_url` / `PLATFORM_URL`).
    pub platform_url: String,
    /// URL other agents use to reach this one; `None` = `http://<hostname>:<listen port>`.
    pub agent_url: Option<String>,
    /// Heartbeat period (`heartbeat_seconds` / `HEARTBEAT_SECONDS`), at least 1.
    pub heartbeat_seconds: u64,
    /// The A2A agent card served and registered.
    pub agent_card: Value,
    /// Sent to itself once as its first message (ADR 0048).
    pub initial_prompt: Option<String>,
    /// Sent to itself after `idle_interval` without work.
    pub idle_prompt: Option<String>,
    pub idle_interval: std::time::Duration,
}

/// `idle_interval_seconds` when config.yaml has an idle prompt but no interval.
pub const DEFAULT_IDLE_INTERVAL_SECONDS: u64 = 600;

impl AgentConfig {
    /// Parses `config.yaml` text, applying overrides from `env` (`WORKSPACE_ID`, `PLATFORM_URL`,
    /// `HEARTBEAT_SECONDS`; empty values count as unset).
    pub fn from_yaml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            crate::yaml::from_str(text)?
        };
        let env = |key: &str| {
            env(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let non_empty =
            |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());

        let workspace_id = env("WORKSPACE_ID")
            .or_else(|| non_empty(file.workspace_id))
            .ok_or(ConfigError::MissingWorkspaceId)?;
        let platform_url = env("PLATFORM_URL")
            .or_else(|| non_empty(file.platform_url))
            .ok_or(ConfigError::MissingPlatformUrl)?;
        check_platform_url(&platform_url)?;
        let platform_url = platform_url.trim_end_matches('/').to_string();

        let heartbeat_seconds = match env("HEARTBEAT_SECONDS") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| ConfigError::HeartbeatSeconds(v.clone()))?,
            None => file.heartbeat_seconds.unwrap_or(DEFAULT_HEARTBEAT_SECONDS),
        };
        if heartbeat_seconds == 0 {
            return Err(ConfigError::HeartbeatSeconds("0".to_string()));
        }

        let name = non_empty(file.name).unwrap_or_else(|| workspace_id.clone());
        let agent_card = match file.agent_card {
            None | Some(Value::Null) => json!({
                "name": name,
                "description": "Echo agent",
                "skills": [{"id": "echo", "name": "Echo"}],
            }),
            Some(card @ Value::Object(_)) => card,
            Some(_) => return Err(ConfigError::AgentCard),
        };

        let idle_seconds = file
            .idle_interval_seconds
            .unwrap_or(DEFAULT_IDLE_INTERVAL_SECONDS)
            .max(1);
        let prompt = |p: Option<String>| p.filter(|t| !t.trim().is_empty());
        Ok(Self {
            workspace_id,
            name,
            role: non_empty(file.description).or(non_empty(file.role)),
            initial_prompt: prompt(file.initial_prompt),
            idle_prompt: prompt(file.idle_prompt),
            idle_interval: std::time::Duration::from_secs(idle_seconds),
            runtime: non_empty(file.runtime).unwrap_or_else(|| "echo".to_string()),
            platform_url,
            agent_url: non_empty(file.agent_url),
            heartbeat_seconds,
            agent_card,
        })
    }

    /// Reads and parses `path` (see [`AgentConfig::from_yaml`]).
    pub async fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_yaml(&text, env)
    }
}

/// Reads the bearer token from `path`, trimming surrounding whitespace.
///
/// Fails if the file is unreadable, empty, or the token contains control characters (it goes
/// into an HTTP header verbatim).
pub async fn read_token(path: &Path) -> Result<String, ConfigError> {
    let raw = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let token = raw.trim();
    let fail = |reason| ConfigError::Token {
        path: path.to_path_buf(),
        reason,
    };
    if token.is_empty() {
        return Err(fail("the token is empty"));
    }
    if token.chars().any(char::is_control) {
        return Err(fail("the token contains control characters"));
    }
    Ok(token.to_string())
}

/// The platform is spoken to over plain `http://` only: the agent image is `FROM scratch`, with
/// no CA bundle to verify a server with.
fn check_platform_url(url: &str) -> Result<(), ConfigError> {
    let parsed = Url::parse(url).map_err(|e| ConfigError::PlatformUrl(e.to_string()))?;
    if parsed.https {
        return Err(ConfigError::PlatformUrl(
            "only plain http:// URLs are supported".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_env_overrides_and_unknown_keys() {
        let yaml = "workspace_id: ws-1\nplatform_url: http://172.18.0.1:8080/\nextra: {a: 1}\n";
        let cfg = AgentConfig::from_yaml(yaml, |_| None).unwrap();
        assert_eq!(cfg.workspace_id, "ws-1");
        assert_eq!(cfg.name, "ws-1");
        assert_eq!(cfg.runtime, "echo");
        assert_eq!(cfg.platform_url, "http://172.18.0.1:8080");
        assert_eq!(cfg.agent_url, None);
        assert_eq!(cfg.heartbeat_seconds, DEFAULT_HEARTBEAT_SECONDS);
        assert_eq!(cfg.agent_card["description"], "Echo agent");
        assert_eq!(cfg.agent_card["skills"][0]["id"], "echo");

        let env = |k: &str| match k {
            "WORKSPACE_ID" => Some("ws-env".to_string()),
            "PLATFORM_URL" => Some("http://platform:9000".to_string()),
            "HEARTBEAT_SECONDS" => Some("5".to_string()),
            _ => None,
        };
        let yaml = "workspace_id: ws-1\nname: alpha\nrole: researcher\nplatform_url: http://x:1\n\
                    heartbeat_seconds: 30\nagent_url: http://ws-3f2a:8000\n\
                    agent_card: {name: Alpha, description: Custom, skills: [{id: s}]}\n";
        let cfg = AgentConfig::from_yaml(yaml, env).unwrap();
        assert_eq!(cfg.workspace_id, "ws-env");
        assert_eq!(cfg.platform_url, "http://platform:9000");
        assert_eq!(cfg.heartbeat_seconds, 5);
        assert_eq!(cfg.name, "alpha");
        assert_eq!(cfg.role.as_deref(), Some("researcher"));
        assert_eq!(cfg.agent_url.as_deref(), Some("http://ws-3f2a:8000"));
        assert_eq!(
            cfg.agent_card,
            json!({"name": "Alpha", "description": "Custom", "skills": [{"id": "s"}]})
        );

        // The original's shape: the role is `description`; prompts and the idle interval.
        let original = "workspace_id: w\nplatform_url: http://x\nname: Alpha\ndescription: Lead\n\
                    version: 1.0.0\ntier: 2\nruntime_config: {timeout: 0}\n\
                    initial_prompt: |\n  hello\n  there\nidle_prompt: ping\nidle_interval_seconds: 7\n";
        let o = AgentConfig::from_yaml(original, |_| None).unwrap();
        assert_eq!(o.role.as_deref(), Some("Lead"));
        assert_eq!(o.initial_prompt.as_deref(), Some("hello\nthere\n"));
        assert_eq!(o.idle_prompt.as_deref(), Some("ping"));
        assert_eq!(o.idle_interval, std::time::Duration::from_secs(7));

        // Empty environment values do not override.
        let cfg = AgentConfig::from_yaml(yaml, |_| Some(String::new())).unwrap();
        assert_eq!(cfg.workspace_id, "ws-1");
    }

    #[test]
    fn config_errors() {
        let missing = AgentConfig::from_yaml("platform_url: http://x:1\n", |_| None);
        assert!(matches!(missing, Err(ConfigError::MissingWorkspaceId)));
        let missing = AgentConfig::from_yaml("workspace_id: w\n", |_| None);
        assert!(matches!(missing, Err(ConfigError::MissingPlatformUrl)));
        let https = AgentConfig::from_yaml("workspace_id: w\nplatform_url: https://x\n", |_| None);
        assert!(matches!(https, Err(ConfigError::PlatformUrl(_))));
        let zero = AgentConfig::from_yaml(
            "workspace_id: w\nplatform_url: http://x\nheartbeat_seconds: 0\n",
            |_| None,
        );
        assert!(matches!(zero, Err(ConfigError::HeartbeatSeconds(_))));
        let bad_env = AgentConfig::from_yaml("workspace_id: w\nplatform_url: http://x\n", |k| {
            (k == "HEARTBEAT_SECONDS").then(|| "soon".to_string())
        });
        assert!(matches!(bad_env, Err(ConfigError::HeartbeatSeconds(_))));
        let card = AgentConfig::from_yaml(
            "workspace_id: w\nplatform_url: http://x\nagent_card: [1]\n",
            |_| None,
        );
        assert!(matches!(card, Err(ConfigError::AgentCard)));
        assert!(matches!(
            AgentConfig::from_yaml("workspace_id: [", |_| None),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn the_platform_url_must_be_plain_http() {
        for ok in [
            "http://172.18.0.1:8080/",
            "HTTP://ws-3f2a9c1e7b4d",
            "http://[::1]:9000?x=1#frag",
        ] {
            assert!(check_platform_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://:80/",
            "http://x:0/",
            "http://x:99999/",
            "http://u:p@x/",
            "http://[::1/",
            "http://x/a b",
        ] {
            let e = check_platform_url(bad).expect_err(bad);
            assert!(matches!(e, ConfigError::PlatformUrl(_)), "{bad}");
            assert!(!e.to_string().contains("u:p"), "{e}");
        }
    }
}
