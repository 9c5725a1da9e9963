//! A workspace's `channels:` (ADR 0047): `[{type, config {k: "${VAR}"}, allowed_users,
//! enabled}]`, expanded like `workspace_dir`.
//!
//! A value of the wrong type fails the template (with its file and line). A channel that
//! cannot be resolved — an unknown adapter, a variable set nowhere, a token not given as a
//! `${VAR}` of the template's `.env` files — is skipped and reported, the rest of the import
//! goes on. Tokens never land in `config`: a secret key (`*token*`, `*secret*`, `*password*`,
//! `*api_key*`, `webhook_url`) becomes `configFrom`, a reference to the workspace's env Secret
//! (which holds the layered `.env` values). Its `name` is left empty here; the importer fills
//! in the Secret's name.

use std::collections::BTreeMap;

use super::node::{Kind, Node};
use super::schema::Loc;
use super::vars::{self, Lookup};
use crate::resources::{ChannelSpec, SecretKeySelector};

/// Adapter types a channel may name.
pub const ADAPTERS: &[&str] = &["telegram", "slack", "discord", "lark"];

/// Whether a config key holds a secret.
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["token", "secret", "password", "api_key", "apikey"]
        .iter()
        .any(|s| k.contains(s))
        || k == "webhook_url"
}

fn scalar(v: &Node) -> Result<String, super::TemplateError> {
    match &v.kind {
        Kind::Bool(b) => Ok(b.to_string()),
        _ => {
            let s = v.string()?;
            if s.len() > 4096 || s.chars().any(char::is_control) {
                return Err(v.invalid("must be one line of at most 4096 bytes"));
            }
            Ok(s)
        }
    }
}

/// The channels to carry and the messages of those skipped.
pub(crate) fn resolve(
    items: &[Node],
    lookup: &Lookup<'_>,
) -> Result<(Vec<ChannelSpec>, Vec<String>), super::TemplateError> {
    let mut out = vec![];
    let mut skipped = vec![];
    for item in items {
        let mut kind = None;
        let mut config: Vec<(String, String, Loc)> = vec![];
        let mut allowed_users = vec![];
        let mut enabled = true;
        for (k, v) in item.map()? {
            match k.as_str() {
                "type" => kind = Some(scalar(v)?.trim().to_string()),
                "config" => {
                    if !v.is_null() {
                        for (ck, cv) in v.map()? {
                            config.push((ck.clone(), scalar(cv)?, Loc::of(cv)));
                        }
                    }
                }
                "allowed_users" => {
                    for u in v.seq()? {
                        allowed_users.push(scalar(u)?);
                    }
                }
                "enabled" => enabled = v.is_null() || v.bool()?,
                other => {
                    return Err(v.invalid(format!(
                        "unknown key {other:?} in a channel (type, config, allowed_users, enabled)"
                    )));
                }
            }
        }
        let Some(kind) = kind.filter(|k| !k.is_empty()) else {
            return Err(item.invalid("a channel needs a type"));
        };
        let loc = Loc::of(item);
        match channel(&kind, config, lookup) {
            Ok((config, config_from)) => out.push(ChannelSpec {
                type_: kind,
                config_from,
                config,
                allowed_users,
                enabled,
            }),
            Err(why) => skipped.push(format!("{}: channel {kind} skipped: {why}", loc.place())),
        }
    }
    Ok((out, skipped))
}

type Resolved = (BTreeMap<String, String>, Option<SecretKeySelector>);

fn channel(
    kind: &str,
    config: Vec<(String, String, Loc)>,
    lookup: &Lookup<'_>,
) -> Result<Resolved, String> {
    if !ADAPTERS.contains(&kind) {
        return Err(format!(
            "unknown adapter {kind:?} (known: {})",
            ADAPTERS.join(", ")
        ));
    }
    let mut plain = BTreeMap::new();
    let mut secret: Option<SecretKeySelector> = None;
    for (k, raw, _) in config {
        if is_secret_key(&k) {
            let var = raw
                .trim()
                .strip_prefix("${")
                .and_then(|r| r.strip_suffix('}'))
                .filter(|n| !n.contains(['$', '{', '}']));
            let Some(var) = var else {
                return Err(format!(
                    "config.{k} holds a secret: write it as \"${{VAR}}\" and set VAR in a .env file of the template"
                ));
            };
            match lookup.get(var) {
                Some((v, true)) if !v.is_empty() => {}
                Some((_, false)) => {
                    return Err(format!(
                        "config.{k} uses ${{{var}}}, which is only in the operator's environment; \
                         a secret must come from a .env file of the template"
                    ));
                }
                _ => {
                    return Err(format!(
                        "config.{k} uses ${{{var}}}, set in neither the org .env nor the workspace .env"
                    ));
                }
            }
            if secret.is_some() {
                return Err("more than one secret config key (a channel has one token)".into());
            }
            secret = Some(SecretKeySelector {
                name: String::new(),
                key: var.to_string(),
                optional: false,
            });
            continue;
        }
        let e = vars::expand(&raw, lookup)
            .map_err(|vars::BadSyntax(why)| format!("config.{k}: {why}"))?;
        if let Some(n) = e.unresolved.first() {
            return Err(format!(
                "config.{k} uses ${{{n}}}, set in neither the org .env, the workspace .env nor the operator's environment"
            ));
        }
        plain.insert(k, e.value);
    }
    Ok((plain, secret))
}
