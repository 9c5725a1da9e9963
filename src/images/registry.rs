//! A small Docker Registry HTTP API v2 client (ADR 0032): the manifest digest of a reference
//! via `HEAD /v2/<name>/manifests/<ref>` and its `Docker-Content-Digest` header, answering a
//! `401` challenge through the token endpoint (`WWW-Authenticate: Bearer realm=…,service=…,
//! scope=…`) or with Basic credentials. Every call is bounded by one timeout; bodies are capped.
//! Loopback registries are spoken to over plain HTTP (as Docker does), all others over HTTPS.
//! Pull credentials go to a token realm only as [`realm_use`] decides (ADR 0040).

use std::time::Duration;

use base64::Engine;
use hyper::{Method, StatusCode};

use super::reference::{self, ImageRef};
use crate::net::http::{self, Response};

/// Largest accepted token-endpoint body.
pub const BODY_CAP: usize = 64 * 1024;

/// Manifest media types asked for: lists and indexes first, so the digest is the one a
/// multi-platform pull records.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

/// Registry credentials. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl Credentials {
    fn basic(&self) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// Errors of registry calls (never carrying credentials).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {host} did not answer within {secs}s")]
    Timeout { host: String, secs: u64 },
    #[error("registry {host} is unreachable: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("registry {host} refused the credentials ({detail})")]
    AuthFailed { host: String, detail: String },
    #[error("registry {host} has no manifest for {reference}")]
    ManifestUnknown { host: String, reference: String },
    #[error("registry {host} answered HTTP {code}")]
    Status { host: String, code: u16 },
    #[error("registry {host} answered without a valid Docker-Content-Digest header")]
    NoDigest { host: String },
    #[error("registry {host} sent a body larger than {cap} bytes")]
    TooLarge { host: String, cap: usize },
    #[error("registry {host}: {detail}")]
    Protocol { host: String, detail: String },
}

impl RegistryError {
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Timeout { .. } | RegistryError::Unreachable { .. } => true,
            RegistryError::Status { code, .. } => *code >= 500 || *code == 429,
            _ => false,
        }
    }
}

/// The client; cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    http: http::Client,
    timeout: Duration,
    /// Token realm hosts trusted with pull credentials besides each registry's own host
    /// (`--registry-realm-hosts`, ADR 0040).
    realm_hosts: Vec<String>,
}

/// What a Bearer challenge's token realm may receive (ADR 0040).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RealmUse {
    /// The pull credentials go with the token request.
    Credentials,
    /// The token is asked for anonymously: the realm is not trusted with credentials.
    Anonymous,
}

/// Realm hosts a registry declares by being what it is: Docker Hub's token service.
fn builtin_realms(registry_host: &str) -> &'static [&'static str] {
    match registry_host {
        "registry-1.docker.io" => &["auth.docker.io"],
        _ => &[],
    }
}

/// `host[:port]` lower-cased, the scheme's default port dropped.
fn authority_key(authority: &str, scheme: &str) -> String {
    let a = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    a.strip_suffix(default).map(str::to_string).unwrap_or(a)
}

/// Decides whether the token `realm` of a challenge from `registry_host` gets the pull
/// credentials: only over https, and only when the realm is the registry's own host (or its
/// built-in token service) or a declared realm host (`declared`, entries `host[:port]`). The
/// one plain-http case is a loopback registry's realm on that same host and port, which the
/// credentials already reach in the clear (loopback registries are spoken to over http, as
/// Docker does). Everything else is asked anonymously.
pub fn realm_use(registry_host: &str, realm: &str, declared: &[String]) -> RealmUse {
    let Some((realm_scheme, rest)) = realm.split_once("://") else {
        return RealmUse::Anonymous;
    };
    let realm_scheme = realm_scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return RealmUse::Anonymous;
    }
    let registry_scheme = scheme(registry_host);
    let realm_key = authority_key(authority, &realm_scheme);
    let same_host = realm_key == authority_key(registry_host, registry_scheme);
    match realm_scheme.as_str() {
        "https" => {
            let trusted = same_host
                || builtin_realms(registry_host)
                    .iter()
                    .any(|h| authority_key(h, "https") == realm_key)
                || declared
                    .iter()
                    .map(|d| d.trim())
                    .filter(|d| !d.is_empty())
                    .any(|d| authority_key(d, "https") == realm_key);
            if trusted {
                RealmUse::Credentials
            } else {
                RealmUse::Anonymous
            }
        }
        "http" if same_host && registry_scheme == "http" => RealmUse::Credentials,
        _ => RealmUse::Anonymous,
    }
}

impl RegistryClient {
    /// A client whose every operation finishes (or fails) within `timeout`.
    pub fn new(timeout: Duration) -> RegistryClient {
        RegistryClient {
            http: http::Client::new(http::Timeouts::uniform(timeout)),
            timeout,
            realm_hosts: Vec::new(),
        }
    }

    /// Trusts the token realms on `hosts` (`host[:port]`) with pull credentials.
    pub fn with_realm_hosts(mut self, hosts: Vec<String>) -> RegistryClient {
        self.realm_hosts = hosts;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The digest `image` (tag or digest) currently resolves to, from a manifest HEAD.
    pub async fn manifest_digest(
        &self,
        image: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let host = image.registry_host();
        match tokio::time::timeout(self.timeout, self.digest_inner(image, creds)).await {
            Ok(r) => r,
            Err(_) => Err(RegistryError::Timeout {
                host,
                secs: self.timeout.as_secs().max(1),
            }),
        }
    }

    async fn digest_inner(
        &self,
        image: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let host = image.registry_host();
        let path = image.api_path();
        let url = format!(
            "{}://{host}/v2/{path}/manifests/{}",
            scheme(&host),
            image.manifest_ref()
        );
        let first = self.call(Method::HEAD, &url, None, &host).await?;
        let resp = if first.status == 401 {
            let challenge = first.header("www-authenticate").unwrap_or("");
            let auth = self.authorize(challenge, creds, &path, &host).await?;
            let again = self.call(Method::HEAD, &url, Some(&auth), &host).await?;
            if again.status == 401 || again.status == 403 {
                return Err(RegistryError::AuthFailed {
                    host,
                    detail: format!("HTTP {} after authenticating", again.status),
                });
            }
            again
        } else {
            first
        };
        let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
        match status {
            StatusCode::OK => {
                let digest = resp
                    .header("docker-content-digest")
                    .map(str::trim)
                    .unwrap_or("");
                reference::validate_digest(digest)
                    .map(|()| digest.to_string())
                    .map_err(|_| RegistryError::NoDigest { host })
            }
            StatusCode::NOT_FOUND => Err(RegistryError::ManifestUnknown {
                host,
                reference: image.canonical(),
            }),
            StatusCode::FORBIDDEN => Err(RegistryError::AuthFailed {
                host,
                detail: "HTTP 403".into(),
            }),
            s => Err(RegistryError::Status {
                host,
                code: s.as_u16(),
            }),
        }
    }

    /// The `Authorization` header answering a challenge.
    async fn authorize(
        &self,
        challenge: &str,
        creds: Option<&Credentials>,
        path: &str,
        host: &str,
    ) -> Result<String, RegistryError> {
        let (scheme_name, params) =
            parse_challenge(challenge).ok_or_else(|| RegistryError::Protocol {
                host: host.to_string(),
                detail: "HTTP 401 without a usable WWW-Authenticate challenge".into(),
            })?;
        if scheme_name.eq_ignore_ascii_case("basic") {
            return creds
                .map(Credentials::basic)
                .ok_or_else(|| RegistryError::AuthFailed {
                    host: host.to_string(),
                    detail: "the registry wants credentials and no pull secret is set".into(),
                });
        }
        if !scheme_name.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::Protocol {
                host: host.to_string(),
                detail: format!("unsupported auth scheme {scheme_name:?}"),
            });
        }
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .filter(|r| r.starts_with("https://") || r.starts_with("http://"))
            .ok_or_else(|| RegistryError::Protocol {
                host: host.to_string(),
                detail: "the Bearer challenge has no http(s) realm".into(),
            })?;
        let scope = params
            .iter()
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| format!("repository:{path}:pull"));
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", &scope);
            q.finish()
        };
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{sep}{query}");
        let basic = match realm_use(host, &realm, &self.realm_hosts) {
            RealmUse::Credentials => creds.map(Credentials::basic),
            RealmUse::Anonymous => {
                if creds.is_some() {
                    tracing::warn!(registry = %host, "the token realm is not the registry's host or a declared realm host (--registry-realm-hosts), or is not https; asking it for a token without the pull credentials");
                }
                None
            }
        };
        let resp = self.call(Method::GET, &url, basic.as_deref(), host).await?;
        if resp.status == 401 || resp.status == 403 {
            return Err(RegistryError::AuthFailed {
                host: host.to_string(),
                detail: format!("token endpoint answered HTTP {}", resp.status),
            });
        }
        if resp.status != 200 {
            return Err(RegistryError::Status {
                host: host.to_string(),
                code: resp.status,
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenBody {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let parsed: TokenBody =
            serde_json::from_slice(&resp.body).map_err(|_| RegistryError::Protocol {
                host: host.to_string(),
                detail: "the token endpoint did not answer JSON".into(),
            })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty() && t.len() < BODY_CAP)
            .ok_or_else(|| RegistryError::Protocol {
                host: host.to_string(),
                detail: "the token endpoint answered without a token".into(),
            })?;
        Ok(format!("Bearer {token}"))
    }

    /// One request; a body longer than [`BODY_CAP`] is refused.
    async fn call(
        &self,
        method: Method,
        url: &str,
        authorization: Option<&str>,
        host: &str,
    ) -> Result<Response, RegistryError> {
        let user_agent = concat!("molecule/", env!("CARGO_PKG_VERSION"));
        let mut headers = vec![("accept", ACCEPT), ("user-agent", user_agent)];
        if let Some(a) = authorization {
            headers.push(("authorization", a));
        }
        let resp = self
            .http
            .send(method, url, &headers, None, BODY_CAP)
            .await
            .map_err(|e| call_error(host, self.timeout, e))?;
        if resp.truncated {
            return Err(RegistryError::TooLarge {
                host: host.to_string(),
                cap: BODY_CAP,
            });
        }
        Ok(resp)
    }
}

/// A failed call as a registry error: a request that could not be built is a protocol error, a
/// phase out of time is the operation's timeout, every other failure makes the registry
/// unreachable.
fn call_error(host: &str, timeout: Duration, e: http::Error) -> RegistryError {
    let host = host.to_string();
    match e {
        http::Error::DialTimeout(..)
        | http::Error::TlsTimeout(..)
        | http::Error::HeaderTimeout(..)
        | http::Error::BodyTimeout(..) => RegistryError::Timeout {
            host,
            secs: timeout.as_secs().max(1),
        },
        http::Error::BadUrl(_) | http::Error::BadRequest(_) => RegistryError::Protocol {
            host,
            detail: "could not build the request".into(),
        },
        e => RegistryError::Unreachable {
            host,
            detail: e.to_string().chars().take(200).collect(),
        },
    }
}

/// `http` for loopback registries (Docker treats them as insecure-allowed), else `https`.
pub fn scheme(host: &str) -> &'static str {
    let bare = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    if bare == "localhost" || bare.starts_with("127.") || bare == "[::1]" {
        "http"
    } else {
        "https"
    }
}

/// Parses `Scheme k="v",k2="v2"` (quoted values may hold commas).
pub fn parse_challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim()),
        None if !header.is_empty() => (header, ""),
        None => return None,
    };
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        params.push((key, value));
    }
    Some((scheme.to_string(), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:m/x:pull,push""#,
        )
        .unwrap();
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".to_string(), "https://ghcr.io/token".to_string()),
                ("service".to_string(), "ghcr.io".to_string()),
                ("scope".to_string(), "repository:m/x:pull,push".to_string()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(s, "Basic");
        assert_eq!(p[0].1, "Registry Realm");
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn realms_get_credentials_only_over_https_on_trusted_hosts() {
        let declared = vec![
            "auth.example.com".to_string(),
            "tok.example:8443".to_string(),
        ];
        use RealmUse::{Anonymous, Credentials};
        for (registry, realm, want) in [
            // The registry's own host, over https.
            ("ghcr.io", "https://ghcr.io/token", Credentials),
            ("GHCR.io", "https://ghcr.io:443/token?x=1", Credentials),
            ("quay.io", "https://quay.io/v2/auth", Credentials),
            // Over plain http: never, even on the registry's own (non-loopback) host.
            ("ghcr.io", "http://ghcr.io/token", Anonymous),
            // Another host: only when declared, or Docker Hub's own token service.
            ("ghcr.io", "https://evil.example/token", Anonymous),
            ("ghcr.io", "https://ghcr.io.evil.example/token", Anonymous),
            ("reg.example", "https://auth.example.com/token", Credentials),
            ("reg.example", "http://auth.example.com/token", Anonymous),
            ("reg.example", "https://tok.example:8443/t", Credentials),
            ("reg.example", "https://tok.example/t", Anonymous),
            (
                "registry-1.docker.io",
                "https://auth.docker.io/token",
                Credentials,
            ),
            ("ghcr.io", "https://auth.docker.io/token", Anonymous),
            // Loopback registries speak http; their realm on the same host and port may too.
            ("127.0.0.1:5000", "http://127.0.0.1:5000/token", Credentials),
            ("127.0.0.1:5000", "http://127.0.0.1:5001/token", Anonymous),
            ("127.0.0.1:5000", "http://localhost:5000/token", Anonymous),
            (
                "localhost:5000",
                "https://localhost:5000/token",
                Credentials,
            ),
            // Malformed or tricky realms.
            ("ghcr.io", "https://user@ghcr.io/token", Anonymous),
            ("ghcr.io", "ghcr.io/token", Anonymous),
            ("ghcr.io", "ftp://ghcr.io/token", Anonymous),
            ("ghcr.io", "https:///token", Anonymous),
        ] {
            assert_eq!(
                realm_use(registry, realm, &declared),
                want,
                "{registry} -> {realm}"
            );
        }
        assert_eq!(
            realm_use("reg.example", "https://auth.example.com/t", &[]),
            Anonymous
        );
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        assert_eq!(scheme("127.0.0.1:5000"), "http");
        assert_eq!(scheme("localhost:5000"), "http");
        assert_eq!(scheme("localhost"), "http");
        assert_eq!(scheme("ghcr.io"), "https");
        assert_eq!(scheme("registry.example:5000"), "https");
    }

    #[test]
    fn credentials_never_print_their_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2-secret".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(
            !RegistryError::AuthFailed {
                host: "h".into(),
                detail: "HTTP 401".into()
            }
            .to_string()
            .contains("hunter2")
        );
    }

    type Answer = Box<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

    /// A loopback HTTP server answering each request head with `answer(head, addr)`; `None`
    /// hangs. Returns the address and the request heads seen.
    async fn scripted(answer: Answer) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = std::sync::Arc::new(answer);
        let (a2, s2) = (addr.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = l.accept().await else {
                    return;
                };
                let (answer, seen, addr) = (answer.clone(), s2.clone(), a2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    seen.lock().unwrap().push(head.clone());
                    match answer(&head, &addr) {
                        Some(a) => {
                            let _ = sock.write_all(a.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        (addr, seen)
    }

    fn resp(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn image(addr: &str) -> ImageRef {
        ImageRef::parse(&format!("{addr}/m/x:latest")).unwrap()
    }

    #[tokio::test]
    async fn token_dance_then_digest() {
        let digest = format!("sha256:{}", "7".repeat(64));
        let d2 = digest.clone();
        let (addr, seen) = scripted(Box::new(move |head, addr| {
            let line = head.lines().next().unwrap_or("");
            if line.starts_with("GET /token?") {
                assert!(
                    line.contains("service=fake")
                        && line.contains("scope=repository%3Am%2Fx%3Apull"),
                    "{line}"
                );
                return Some(resp("200 OK", "", r#"{"token":"tok-1"}"#));
            }
            if head.contains("authorization: Bearer tok-1") {
                return Some(resp(
                    "200 OK",
                    &format!("Docker-Content-Digest: {d2}\r\n"),
                    "",
                ));
            }
            Some(resp(
                "401 Unauthorized",
                &format!(
                    "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"fake\"\r\n"
                ),
                "",
            ))
        }))
        .await;
        let c = RegistryClient::new(Duration::from_secs(5));
        let creds = Credentials {
            username: "puller".into(),
            password: "pw".into(),
        };
        let got = c
            .manifest_digest(&image(&addr), Some(&creds))
            .await
            .unwrap();
        assert_eq!(got, digest);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[0].starts_with("HEAD /v2/m/x/manifests/latest "),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].contains(&creds.basic()),
            "token request carries the credentials"
        );
    }

    #[tokio::test]
    async fn errors_are_precise_and_bounded() {
        let (addr, _) = scripted(Box::new(|head, _| {
            let line = head.lines().next().unwrap_or("");
            if line.contains("/hang/") {
                None
            } else if line.contains("/missing/") {
                Some(resp("404 Not Found", "", ""))
            } else if line.contains("/nodigest/") {
                Some(resp("200 OK", "", ""))
            } else if line.contains("/big/") && line.starts_with("HEAD") {
                Some(resp(
                    "401 Unauthorized",
                    "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:1/x\"\r\n",
                    "",
                ))
            } else {
                Some(resp("503 Service Unavailable", "", ""))
            }
        }))
        .await;
        let c = RegistryClient::new(Duration::from_secs(1));
        let at = |p: &str| ImageRef::parse(&format!("{addr}/{p}/x:latest")).unwrap();
        let started = std::time::Instant::now();
        let e = c.manifest_digest(&at("hang"), None).await.unwrap_err();
        assert!(matches!(e, RegistryError::Timeout { .. }), "{e:?}");
        assert!(e.is_transient());
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(
            c.manifest_digest(&at("missing"), None).await.unwrap_err(),
            RegistryError::ManifestUnknown { .. }
        ));
        assert!(matches!(
            c.manifest_digest(&at("nodigest"), None).await.unwrap_err(),
            RegistryError::NoDigest { .. }
        ));
        let e = c.manifest_digest(&at("other"), None).await.unwrap_err();
        assert!(
            matches!(e, RegistryError::Status { code: 503, .. }) && e.is_transient(),
            "{e:?}"
        );
        let e = c.manifest_digest(&at("big"), None).await.unwrap_err();
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn an_oversized_token_answer_is_refused() {
        let (addr, _) = scripted(Box::new(|head, addr| {
            if head.starts_with("GET /token") {
                Some(resp(
                    "200 OK",
                    "",
                    &format!("{{\"token\":\"{}\"}}", "x".repeat(BODY_CAP + 10)),
                ))
            } else {
                Some(resp(
                    "401 Unauthorized",
                    &format!("WWW-Authenticate: Bearer realm=\"http://{addr}/token\"\r\n"),
                    "",
                ))
            }
        }))
        .await;
        let c = RegistryClient::new(Duration::from_secs(5));
        let e = c.manifest_digest(&image(&addr), None).await.unwrap_err();
        assert!(matches!(e, RegistryError::TooLarge { .. }), "{e:?}");
    }
}
