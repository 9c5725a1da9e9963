//! A Docker Registry HTTP API v2 on 127.0.0.1, enough for `docker pull` and for the operator's
//! digest polling: `GET /v2/` (401 + Bearer challenge), the token endpoint (Basic credentials
//! checked when configured), `HEAD`/`GET /v2/<name>/manifests/<tag|digest>` with
//! `Docker-Content-Digest`, and `GET /v2/<name>/blobs/<digest>`. Images are schema-2 manifests
//! built from `docker save` output; variants differ only in a config label, so a new digest
//! costs nothing to pull. Per repository, the fake can hang or fail pulls.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::http::{Reply, Request, serve};

pub const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What a repository does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    Normal,
    /// Every request about it hangs.
    Hang,
    /// Manifest HEADs answer (polling sees digests) but GETs of manifests fail with 500 (pulls
    /// fail).
    FailPulls,
}

#[derive(Default)]
struct State {
    creds: Option<(String, String)>,
    tokens: HashSet<String>,
    /// repo → tag → digest
    tags: HashMap<String, HashMap<String, String>>,
    /// digest → manifest bytes
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Arc<Vec<u8>>>,
    behavior: HashMap<String, Behavior>,
    /// (method, repo, reference, from the Docker engine) → count
    manifest_requests: HashMap<(String, String, String, bool), usize>,
    token_grants: usize,
    token_refusals: usize,
    unauthenticated: usize,
}

/// A running fake registry.
#[derive(Clone)]
pub struct FakeRegistry {
    pub addr: String,
    state: Arc<Mutex<State>>,
}

/// An image as `docker save` wrote it: config JSON and layer tars.
#[derive(Clone)]
pub struct SavedImage {
    pub config: Value,
    pub layers: Vec<Arc<Vec<u8>>>,
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

impl SavedImage {
    /// Parses `docker save` output of one image.
    pub fn from_docker_save(tar: &[u8]) -> SavedImage {
        let files = super::tar::files(tar);
        let manifest: Value =
            serde_json::from_slice(files.get("manifest.json").expect("manifest.json"))
                .expect("manifest json");
        let entry = &manifest[0];
        let config_path = entry["Config"].as_str().expect("Config");
        let config: Value =
            serde_json::from_slice(files.get(config_path).expect("config")).expect("config json");
        let layers = entry["Layers"]
            .as_array()
            .expect("Layers")
            .iter()
            .map(|l| {
                Arc::new(
                    files
                        .get(l.as_str().expect("layer"))
                        .expect("layer")
                        .clone(),
                )
            })
            .collect();
        SavedImage { config, layers }
    }
}

impl FakeRegistry {
    /// Starts the registry; with `creds`, the token endpoint requires them (Basic).
    pub fn start(creds: Option<(&str, &str)>) -> FakeRegistry {
        let state = Arc::new(Mutex::new(State {
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            ..Default::default()
        }));
        let addr_cell: Arc<Mutex<String>> = Arc::default();
        let (st, ac) = (state.clone(), addr_cell.clone());
        let addr = serve(Arc::new(move |req: &Request| {
            let addr = ac.lock().unwrap().clone();
            handle(&st, &addr, req)
        }));
        *addr_cell.lock().unwrap() = addr.clone();
        FakeRegistry { addr, state }
    }

    /// Pushes `image` as `repo:tag`, with `variant` written into a config label (a different
    /// variant is a different manifest digest); returns the manifest digest.
    pub fn push(&self, repo: &str, tag: &str, image: &SavedImage, variant: &str) -> String {
        let mut config = image.config.clone();
        config["config"]["Labels"]["molecule.test/variant"] = json!(variant);
        let config_bytes = serde_json::to_vec(&config).expect("config");
        let config_digest = sha(&config_bytes);
        let mut st = self.state.lock().unwrap();
        let layers: Vec<Value> = image
            .layers
            .iter()
            .map(|l| {
                let d = sha(l);
                st.blobs.insert(d.clone(), l.clone());
                json!({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": l.len(), "digest": d})
            })
            .collect();
        st.blobs
            .insert(config_digest.clone(), Arc::new(config_bytes.clone()));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config_bytes.len(), "digest": config_digest},
            "layers": layers,
        }))
        .expect("manifest");
        let digest = sha(&manifest);
        st.manifests.insert(digest.clone(), manifest);
        st.tags
            .entry(repo.to_string())
            .or_default()
            .insert(tag.to_string(), digest.clone());
        digest
    }

    pub fn set_behavior(&self, repo: &str, b: Behavior) {
        self.state
            .lock()
            .unwrap()
            .behavior
            .insert(repo.to_string(), b);
    }

    /// How many `method` requests for `repo`'s manifest `reference` arrived (from anyone).
    pub fn manifest_requests(&self, method: &str, repo: &str, reference: &str) -> usize {
        let st = self.state.lock().unwrap();
        [true, false]
            .iter()
            .map(|e| {
                st.manifest_requests
                    .get(&(method.into(), repo.into(), reference.into(), *e))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// How many manifest requests (HEAD or GET) for `repo:reference` the Docker engine made —
    /// each pull makes at least one.
    pub fn engine_pulls(&self, repo: &str, reference: &str) -> usize {
        let st = self.state.lock().unwrap();
        ["HEAD", "GET"]
            .iter()
            .map(|m| {
                st.manifest_requests
                    .get(&(m.to_string(), repo.into(), reference.into(), true))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// (tokens granted, token requests refused, unauthenticated resource requests).
    pub fn auth_counts(&self) -> (usize, usize, usize) {
        let st = self.state.lock().unwrap();
        (st.token_grants, st.token_refusals, st.unauthenticated)
    }
}

fn challenge(addr: &str, scope: Option<&str>) -> Reply {
    let mut v = format!("Bearer realm=\"http://{addr}/token\",service=\"fake-registry\"");
    if let Some(s) = scope {
        v.push_str(&format!(",scope=\"{s}\""));
    }
    Reply::new(
        401,
        &[
            ("WWW-Authenticate", v.as_str()),
            ("Content-Type", "application/json"),
        ],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    )
}

fn errors(status: u16, code: &str) -> Reply {
    Reply::new(
        status,
        &[("Content-Type", "application/json")],
        format!(r#"{{"errors":[{{"code":"{code}","message":"{code}"}}]}}"#),
    )
}

fn handle(state: &Arc<Mutex<State>>, addr: &str, req: &Request) -> Reply {
    if req.path == "/token" {
        let mut st = state.lock().unwrap();
        if let Some((u, p)) = st.creds.clone() {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            );
            if req.header("authorization") != Some(want.as_str()) {
                st.token_refusals += 1;
                return errors(401, "UNAUTHORIZED");
            }
        }
        st.token_grants += 1;
        let token = format!("tok-{}-{}", st.token_grants, rand_hex());
        st.tokens.insert(token.clone());
        return Reply::new(
            200,
            &[("Content-Type", "application/json")],
            serde_json::to_vec(&json!({"token": token, "access_token": token, "expires_in": 300}))
                .expect("json"),
        );
    }
    let authed = {
        let st = state.lock().unwrap();
        req.header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| st.tokens.contains(t))
    };
    if req.path == "/v2/" || req.path == "/v2" {
        if !authed {
            return challenge(addr, None);
        }
        return Reply::new(200, &[("Content-Type", "application/json")], "{}");
    }
    let Some(rest) = req.path.strip_prefix("/v2/") else {
        return errors(404, "NOT_FOUND");
    };
    let (repo, kind, reference) = if let Some((r, x)) = rest.rsplit_once("/manifests/") {
        (r.to_string(), "manifests", x.to_string())
    } else if let Some((r, x)) = rest.rsplit_once("/blobs/") {
        (r.to_string(), "blobs", x.to_string())
    } else {
        return errors(404, "NOT_FOUND");
    };
    let behavior = state
        .lock()
        .unwrap()
        .behavior
        .get(&repo)
        .copied()
        .unwrap_or(Behavior::Normal);
    if behavior == Behavior::Hang {
        return Reply::Hang;
    }
    if !authed {
        state.lock().unwrap().unauthenticated += 1;
        return challenge(addr, Some(&format!("repository:{repo}:pull")));
    }
    let mut st = state.lock().unwrap();
    if kind == "manifests" {
        let engine = req
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("docker/"));
        *st.manifest_requests
            .entry((req.method.clone(), repo.clone(), reference.clone(), engine))
            .or_default() += 1;
        if behavior == Behavior::FailPulls && req.method == "GET" {
            return errors(500, "UNKNOWN");
        }
        let digest = if reference.starts_with("sha256:") {
            Some(reference.clone())
        } else {
            st.tags.get(&repo).and_then(|t| t.get(&reference)).cloned()
        };
        let Some(body) = digest.as_ref().and_then(|d| st.manifests.get(d)).cloned() else {
            return errors(404, "MANIFEST_UNKNOWN");
        };
        let digest = digest.unwrap_or_default();
        return Reply::new(
            200,
            &[
                ("Content-Type", MANIFEST_V2),
                ("Docker-Content-Digest", digest.as_str()),
            ],
            body,
        );
    }
    if behavior == Behavior::FailPulls {
        return errors(500, "UNKNOWN");
    }
    match st.blobs.get(&reference) {
        Some(b) => Reply::new(
            200,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Docker-Content-Digest", reference.as_str()),
            ],
            b.as_ref().clone(),
        ),
        None => errors(404, "BLOB_UNKNOWN"),
    }
}

fn rand_hex() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hex::encode(&Sha256::digest(nanos.to_be_bytes())[..6])
}
