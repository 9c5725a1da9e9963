//! The workspace token store (ADR 0049). A workspace may hold several live bearer tokens: the
//! one the Workspace controller issues with every provision (`status.tokenHash`) and further
//! ones minted in development mode (`status.extraTokens`). Only sha256 digests are on record.
//!
//! Every further token is bound to the `tokenHash` current when it was minted; it is live only
//! while that is still the current one. The controller issues a new token on every provision,
//! so a restart (or a re-provision of any kind) revokes them all without anyone having to
//! clear the list, and deleting the record deletes them with it. Nothing here needs the
//! controller's cooperation: the rule is evaluated wherever a token is checked.
//!
//! Every route that accepts a workspace token checks it through [`accepts`]; the shim's index
//! of token owners is built from [`live_hashes`].

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::resources::{ExtraToken, Workspace, WorkspaceStatus};

/// Most further tokens a workspace holds; minting one more drops the oldest.
pub const MAX_EXTRA: usize = 32;

/// How often a mint is retried when the record changed under it.
const MINT_ATTEMPTS: usize = 5;

/// The `tokenHash` further tokens are bound to ("" before the first provision).
fn epoch(st: &WorkspaceStatus) -> &str {
    st.token_hash.as_deref().unwrap_or("")
}

/// The further tokens that are still live: bound to the current `tokenHash`.
pub fn live_extra(st: &WorkspaceStatus) -> impl Iterator<Item = &ExtraToken> {
    let now = epoch(st);
    st.extra_tokens.iter().filter(move |t| t.bound_to == now)
}

/// Every live token digest (hex) of a workspace: its own token and the live further ones.
pub fn live_hashes(st: &WorkspaceStatus) -> Vec<String> {
    st.token_hash
        .iter()
        .cloned()
        .chain(live_extra(st).map(|t| t.hash.clone()))
        .collect()
}

/// Whether `token` is a live token of a workspace with status `st` (constant time per digest).
pub fn accepts(st: Option<&WorkspaceStatus>, token: &str) -> bool {
    let Some(st) = st else { return false };
    let presented = crate::tokens::digest(token);
    // Every digest is compared, so the time taken does not say which one matched.
    live_hashes(st).iter().fold(false, |hit, recorded| {
        let same = hex::decode(recorded)
            .map(|r| crate::tokens::same_digest(&presented, &r))
            .unwrap_or(false);
        hit | same
    })
}

/// Whether `token` is a live token of `ws`.
pub fn accepts_workspace(ws: &Workspace, token: &str) -> bool {
    accepts(ws.status.as_ref(), token)
}

/// The `extraTokens` list after minting `hash`: the live ones (dead ones are dropped), then the
/// new one, at most [`MAX_EXTRA`] (the oldest go first).
pub fn with_minted(st: &WorkspaceStatus, hash: String) -> Vec<ExtraToken> {
    let mut out: Vec<ExtraToken> = live_extra(st).cloned().collect();
    out.push(ExtraToken {
        hash,
        bound_to: epoch(st).to_string(),
    });
    let drop = out.len().saturating_sub(MAX_EXTRA);
    out.drain(..drop);
    out
}

/// Why a mint did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the workspace does not exist")]
    NotFound,
    #[error("the workspace is being deleted")]
    Deleting,
    #[error("the workspace kept changing; retry")]
    Contended,
    #[error("the API server: {0}")]
    Api(#[from] kube::Error),
}

/// Mints a further token for `ws` and returns it. The write carries the resourceVersion it
/// read, so a concurrent mint or a token rotation by the controller makes it re-read and
/// bind to the newest `tokenHash` instead of being lost or outliving a restart.
pub async fn mint(client: &kube::Client, ws: &Workspace) -> Result<String, MintError> {
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ws.namespace().unwrap_or_default());
    let name = ws.name_any();
    for _ in 0..MINT_ATTEMPTS {
        let Some(fresh) = api.get_opt(&name).await? else {
            return Err(MintError::NotFound);
        };
        if fresh.uid() != ws.uid() {
            return Err(MintError::NotFound);
        }
        if fresh.metadata.deletion_timestamp.is_some() {
            return Err(MintError::Deleting);
        }
        let token = crate::util::random_token();
        let st = fresh.status.clone().unwrap_or_default();
        let list = with_minted(&st, crate::tokens::digest_hex(&token));
        let body = json!({
            "metadata": {"resourceVersion": fresh.resource_version()},
            "status": {"extraTokens": list},
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => return Ok(token),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Err(MintError::NotFound),
            Err(e) => return Err(e.into()),
        }
    }
    Err(MintError::Contended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::digest_hex;

    fn status(primary: Option<&str>, extra: &[(&str, &str)]) -> WorkspaceStatus {
        WorkspaceStatus {
            token_hash: primary.map(digest_hex),
            extra_tokens: extra
                .iter()
                .map(|(t, bound)| ExtraToken {
                    hash: digest_hex(t),
                    bound_to: if bound.is_empty() {
                        String::new()
                    } else {
                        digest_hex(bound)
                    },
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_own_token_and_extra_tokens_bound_to_it_are_live() {
        let st = status(Some("p1"), &[("t1", "p1"), ("t2", "p1"), ("old", "p0")]);
        assert!(accepts(Some(&st), "p1"));
        assert!(accepts(Some(&st), "t1"));
        assert!(accepts(Some(&st), "t2"));
        assert!(!accepts(Some(&st), "old"), "bound to an earlier token");
        assert!(!accepts(Some(&st), "p0"));
        assert!(!accepts(Some(&st), ""));
        assert!(!accepts(None, "p1"));
        assert_eq!(live_hashes(&st).len(), 3);
    }

    #[test]
    fn a_new_own_token_revokes_every_extra_token() {
        let mut st = status(Some("p1"), &[("t1", "p1")]);
        st.token_hash = Some(digest_hex("p2"));
        assert!(!accepts(Some(&st), "t1"));
        assert_eq!(live_hashes(&st), vec![digest_hex("p2")]);
    }

    #[test]
    fn before_the_first_provision_extra_tokens_bind_to_nothing_and_die_with_it() {
        let mut st = status(None, &[("t1", "")]);
        assert!(accepts(Some(&st), "t1"));
        st.token_hash = Some(digest_hex("p1"));
        assert!(!accepts(Some(&st), "t1"));
    }

    #[test]
    fn minting_drops_dead_tokens_and_keeps_the_newest() {
        let st = status(Some("p1"), &[("t1", "p1"), ("old", "p0")]);
        let list = with_minted(&st, digest_hex("t2"));
        assert_eq!(
            list.iter().map(|t| t.hash.clone()).collect::<Vec<_>>(),
            vec![digest_hex("t1"), digest_hex("t2")]
        );
        assert!(list.iter().all(|t| t.bound_to == digest_hex("p1")));
        let mut st = status(Some("p1"), &[]);
        for i in 0..(MAX_EXTRA + 3) {
            st.extra_tokens = with_minted(&st, digest_hex(&format!("t{i}")));
        }
        assert_eq!(st.extra_tokens.len(), MAX_EXTRA);
        assert!(!accepts(Some(&st), "t0"), "the oldest went first");
        assert!(accepts(Some(&st), &format!("t{}", MAX_EXTRA + 2)));
    }
}
