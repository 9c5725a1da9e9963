//! The client against hyper servers on 127.0.0.1 (plain and TLS with a throwaway CA).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use tokio::net::TcpListener;

use super::*;

type Body = BoxBody<Bytes, std::convert::Infallible>;

/// What the server received.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;
type Handler = Arc<dyn Fn(&Seen) -> hyper::Response<Body> + Send + Sync>;

fn full(status: u16, headers: &[(&str, &str)], body: &'static [u8]) -> hyper::Response<Body> {
    let mut r = hyper::Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from_static(body)).boxed())
        .expect("response")
}

/// A hyper server answering every request with `handler`; TLS when `tls` is given.
async fn serve(
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: impl Fn(&Seen) -> hyper::Response<Body> + Send + Sync + 'static,
) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log: Log = Arc::default();
    let handler: Handler = Arc::new(handler);
    let (log2, acceptor) = (log.clone(), tls.map(tokio_rustls::TlsAcceptor::from));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (handler, log, acceptor) = (handler.clone(), log2.clone(), acceptor.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (handler, log) = (handler.clone(), log.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let seen = Seen {
                            method: parts.method,
                            path: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        };
                        let resp = handler(&seen);
                        log.lock().expect("log").push(seen);
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match acceptor {
                    None => http.serve_connection(TokioIo::new(tcp), svc).await,
                    Some(a) => match a.accept(tcp).await {
                        Ok(s) => http.serve_connection(TokioIo::new(s), svc).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    (addr, log)
}

/// A listener that accepts and never answers.
async fn silent() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

fn client(ms: u64) -> Client {
    Client::new(Timeouts::uniform(Duration::from_millis(ms)))
}

#[tokio::test]
async fn sends_the_request_and_reads_status_headers_and_a_capped_body() {
    let (addr, log) = serve(None, |_| {
        full(
            503,
            &[("content-type", "application/json"), ("retry-after", "15")],
            b"{\"a\":1}             ",
        )
    })
    .await;
    let r = client(2000)
        .send(
            Method::POST,
            &format!("http://{addr}/x?y=1#frag"),
            &[
                ("authorization", "Bearer s3cret"),
                ("accept", "application/json"),
            ],
            Some((Bytes::from_static(b"{\"b\":2}"), "application/json")),
            7,
        )
        .await
        .expect("response");
    assert_eq!(r.status, 503);
    assert!(!r.is_success());
    assert_eq!(r.content_type().as_deref(), Some("application/json"));
    assert_eq!(r.retry_after().as_deref(), Some("15"));
    assert_eq!(&r.body[..], b"{\"a\":1}");
    assert!(r.truncated);
    let v: serde_json::Value = first_json(&r.body).expect("json prefix");
    assert_eq!(v["a"], 1);

    let seen = log.lock().expect("log")[0].clone();
    assert_eq!((seen.method, seen.path.as_str()), (Method::POST, "/x?y=1"));
    let h = |n: &str| seen.headers.get(n).and_then(|v| v.to_str().ok());
    assert_eq!(h("host"), Some(addr.to_string().as_str()));
    assert_eq!(h("connection"), Some("close"));
    assert_eq!(h("authorization"), Some("Bearer s3cret"));
    assert_eq!(h("content-type"), Some("application/json"));
    assert_eq!(h("content-length"), Some("7"));
    assert_eq!(&seen.body[..], b"{\"b\":2}");
}

#[tokio::test]
async fn a_body_of_exactly_the_cap_is_whole_and_streamed_bodies_are_capped() {
    let (addr, _) = serve(None, |seen| {
        if seen.path == "/exact" {
            return full(200, &[], b"12345");
        }
        let chunks = (0..8).map(|_| Ok(Frame::data(Bytes::from_static(b"abcd"))));
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        hyper::Response::new(body.boxed())
    })
    .await;
    let c = client(2000);
    let r = c
        .send(Method::GET, &format!("http://{addr}/exact"), &[], None, 5)
        .await
        .expect("exact");
    assert_eq!((&r.body[..], r.truncated), (&b"12345"[..], false));
    let r = c
        .send(
            Method::GET,
            &format!("http://{addr}/chunked"),
            &[],
            None,
            10,
        )
        .await
        .expect("chunked");
    assert_eq!((&r.body[..], r.truncated), (&b"abcdabcdab"[..], true));
    let r = c
        .send(
            Method::GET,
            &format!("http://{addr}/chunked"),
            &[],
            None,
            1 << 20,
        )
        .await
        .expect("chunked, whole");
    assert_eq!((r.body.len(), r.truncated), (32, false));
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let (addr, log) = serve(None, |_| {
        full(302, &[("location", "http://127.0.0.1:1/")], b"")
    })
    .await;
    let r = client(2000)
        .send(Method::GET, &format!("http://{addr}/"), &[], None, 10)
        .await
        .expect("response");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://127.0.0.1:1/"));
    assert_eq!(log.lock().expect("log").len(), 1);
}

#[tokio::test]
async fn a_silent_server_hits_the_header_timeout() {
    let addr = silent().await;
    let e = client(200)
        .send(Method::GET, &format!("http://{addr}/"), &[], None, 10)
        .await
        .expect_err("timeout");
    assert!(matches!(e, Error::HeaderTimeout(..)), "{e}");
    assert!(!e.before_sending());
}

#[tokio::test]
async fn a_stalled_body_hits_the_body_timeout() {
    let (addr, _) = serve(None, |_| {
        let first = futures::stream::iter([Ok(Frame::data(Bytes::from_static(b"part")))]);
        let body = http_body_util::StreamBody::new(futures::StreamExt::chain(
            first,
            futures::stream::pending(),
        ));
        hyper::Response::new(body.boxed())
    })
    .await;
    let started = std::time::Instant::now();
    let e = client(300)
        .send(Method::GET, &format!("http://{addr}/"), &[], None, 1024)
        .await
        .expect_err("timeout");
    assert!(matches!(e, Error::BodyTimeout(..)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_silent_tls_server_hits_the_handshake_timeout() {
    let addr = silent().await;
    let e = client(200)
        .send(
            Method::GET,
            &format!("https://localhost:{}/", addr.port()),
            &[],
            None,
            10,
        )
        .await
        .expect_err("timeout");
    assert!(matches!(e, Error::TlsTimeout(..)), "{e}");
    assert!(e.before_sending());
}

/// A CA and a server configuration whose certificate (localhost, 127.0.0.1) it signed.
fn throwaway_ca() -> (String, Arc<rustls::ServerConfig>) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "net::http test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("ca");
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("leaf params");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &ca).expect("leaf");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server config");
    (ca.pem(), Arc::new(config))
}

#[tokio::test]
async fn tls_is_verified_against_the_system_roots_plus_an_extra_ca() {
    let (ca_pem, server) = throwaway_ca();
    let (addr, _) = serve(Some(server), |_| full(200, &[], b"over tls")).await;
    let timeouts = Timeouts::uniform(Duration::from_secs(5));
    let trusting = Client::with_tls(timeouts, tls_config(Some(ca_pem.as_bytes())).expect("tls"));
    for host in ["localhost", "127.0.0.1"] {
        let r = trusting
            .send(
                Method::GET,
                &format!("https://{host}:{}/", addr.port()),
                &[],
                None,
                64,
            )
            .await
            .expect("trusted");
        assert_eq!((r.status, &r.body[..]), (200, &b"over tls"[..]), "{host}");
    }
    let e = Client::new(timeouts)
        .send(
            Method::GET,
            &format!("https://localhost:{}/", addr.port()),
            &[],
            None,
            64,
        )
        .await
        .expect_err("unknown issuer");
    assert!(matches!(e, Error::Tls(..)), "{e}");
    assert!(e.before_sending());
    assert_eq!(
        tls_config(Some(b"no certificates here")).expect_err("empty"),
        TlsSetupError::EmptyBundle
    );
}

#[tokio::test]
async fn refused_connections_and_bad_urls_fail_before_sending() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    let e = client(2000)
        .send(
            Method::GET,
            &format!("http://127.0.0.1:{port}/"),
            &[],
            None,
            10,
        )
        .await
        .expect_err("refused");
    assert!(matches!(e, Error::Dial(..)) && e.before_sending(), "{e}");
    for bad in [
        "ftp://x/",
        "http://user:pw@host/",
        "not a url",
        "http:///x",
        "http://",
        "http://:80/",
        "http://x:0/",
        "http://x:/",
        "http://x:99999/",
        "http://[::1/",
        "http://x/a b",
    ] {
        let e = client(100)
            .send(Method::GET, bad, &[], None, 10)
            .await
            .expect_err(bad);
        assert!(matches!(e, Error::BadUrl(_)), "{bad}: {e}");
    }
}

#[test]
fn urls_parse_into_host_port_and_target() {
    let u = Url::parse("http://172.18.0.1:8080/registry/register").expect("url");
    assert_eq!(
        (u.https, u.host.as_str(), u.port, u.path.as_str()),
        (false, "172.18.0.1", 8080, "/registry/register")
    );
    let u = Url::parse("HTTP://ws-3f2a9c1e7b4d").expect("url");
    assert_eq!(
        (u.port, u.path.as_str(), u.authority.as_str()),
        (80, "/", "ws-3f2a9c1e7b4d")
    );
    let u = Url::parse("http://[::1]:9000?x=1#frag").expect("url");
    assert_eq!(
        (
            u.host.as_str(),
            u.port,
            u.path.as_str(),
            u.authority.as_str()
        ),
        ("::1", 9000, "/?x=1", "[::1]:9000")
    );
    let u = Url::parse("https://[fd00::1]/a").expect("url");
    assert_eq!((u.https, u.host.as_str(), u.port), (true, "fd00::1", 443));
}

#[tokio::test]
async fn errors_never_carry_credentials_or_the_path() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    let c = client(500);
    let refused = c
        .send(
            Method::GET,
            &format!("http://127.0.0.1:{port}/token?secret=hunter2"),
            &[("authorization", "Bearer hunter2")],
            None,
            10,
        )
        .await
        .expect_err("refused");
    let bad_header = c
        .send(
            Method::GET,
            "http://127.0.0.1:1/",
            &[("authorization", "Bearer hunter2\r\nX-Evil: 1")],
            None,
            10,
        )
        .await
        .expect_err("bad header");
    assert!(matches!(bad_header, Error::BadRequest(_)), "{bad_header}");
    let bad_url = c
        .send(Method::GET, "http://user:hunter2@host/", &[], None, 10)
        .await
        .expect_err("bad url");
    for e in [refused, bad_header, bad_url] {
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("/token"),
            "{text}"
        );
    }
}

#[test]
fn first_json_ignores_trailing_bytes_and_names_the_problem() {
    let v: serde_json::Value = first_json(b"{\"x\":2} trailing junk").expect("prefix");
    assert_eq!(v["x"], 2);
    let e = first_json::<serde_json::Value>(b"{\"x\":").expect_err("eof");
    assert!(e.contains("truncated"), "{e}");
    let e = first_json::<serde_json::Value>(b"<html>").expect_err("syntax");
    assert!(e.contains("syntax"), "{e}");
    assert!(!e.contains("html"), "the body is never echoed: {e}");
}

/// A server that answers `head` and `part` of a longer body, then closes the connection.
async fn cut_short(head: &'static str, part: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(part).await;
            let _ = s.flush().await;
            drop(s);
        }
    });
    addr
}

#[tokio::test]
async fn a_delivered_answer_cut_short_is_kept_only_when_asked_for_and_2xx() {
    let ok = cut_short(
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        br#"{"result":"#,
    )
    .await;
    let url = format!("http://{ok}/");
    let e = client(2000)
        .send(Method::POST, &url, &[], None, 1024)
        .await
        .expect_err("a plain client fails");
    assert!(matches!(e, Error::Protocol(..)), "{e}");
    let r = client(2000)
        .keeping_partial()
        .send(Method::POST, &url, &[], None, 1024)
        .await
        .expect("kept");
    assert_eq!((r.status, &r.body[..]), (200, &br#"{"result":"#[..]));
    assert!(matches!(r.incomplete, Some(Error::Protocol(..))), "{r:?}");

    let failed = cut_short(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\n",
        b"oops",
    )
    .await;
    let e = client(2000)
        .keeping_partial()
        .send(Method::POST, &format!("http://{failed}/"), &[], None, 1024)
        .await
        .expect_err("a cut 5xx is an error");
    assert!(matches!(e, Error::Protocol(..)), "{e}");
    let empty = cut_short("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"").await;
    assert!(
        client(2000)
            .keeping_partial()
            .send(Method::POST, &format!("http://{empty}/"), &[], None, 1024)
            .await
            .is_err(),
        "nothing delivered is an error"
    );
}
