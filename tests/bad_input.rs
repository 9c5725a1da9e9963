//! Bad input gets the right Status code and a clear message, never a 500, and nothing is
//! half-written.

mod common;

use common::{Backend, Server};
use serde_json::{Value, json};

const WS: &str = "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces";

fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON Status: {body}"))
}

#[allow(clippy::too_many_arguments)]
fn expect(
    s: &Server,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: &[u8],
    code: u16,
    reason: &str,
    needle: &str,
) {
    let (got, text) = s.http(method, path, ct, body);
    assert_eq!(got, code, "{method} {path}: {text}");
    let st = status(&text);
    assert_eq!(st["kind"], "Status", "{text}");
    assert_eq!(st["code"], code, "{text}");
    assert_eq!(st["reason"], reason, "{text}");
    assert!(
        st["message"].as_str().unwrap_or("").contains(needle),
        "message of {method} {path} lacks {needle:?}: {text}"
    );
}

fn ws(name: &str) -> Vec<u8> {
    json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "metadata": {"name": name}, "spec": {"runtime": "echo"}}).to_string().into_bytes()
}

async fn suite(postgres: bool) {
    let Some(backend) = Backend::get(postgres).await else {
        return;
    };
    let s = Server::start_with(
        backend,
        &["--max-body-bytes", "4096", "--watch-history", "5"],
    );
    let j = Some("application/json");

    // Authentication.
    let (code, _) = s.http_raw("GET", WS, None, b"", false).expect("http");
    assert_eq!(code, 401);

    // Malformed bodies.
    expect(
        &s,
        "POST",
        WS,
        j,
        b"{not json",
        400,
        "BadRequest",
        "not valid JSON",
    );
    expect(
        &s,
        "POST",
        WS,
        Some("application/yaml"),
        b"metadata: [unclosed",
        400,
        "BadRequest",
        "not valid YAML",
    );
    expect(&s, "POST", WS, j, b"", 400, "BadRequest", "empty");
    expect(
        &s,
        "POST",
        WS,
        j,
        b"[1,2]",
        400,
        "BadRequest",
        "unrecognized",
    );
    // Unknown apiVersion (path) and kind (body).
    expect(
        &s,
        "POST",
        "/apis/molecule.ai/v9/namespaces/default/workspaces",
        j,
        &ws("a"),
        404,
        "NotFound",
        "could not find",
    );
    expect(
        &s,
        "GET",
        "/apis/molecule.ai/v1alpha1/namespaces/default/gizmos",
        None,
        b"",
        404,
        "NotFound",
        "could not find",
    );
    let gizmo =
        json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Gizmo", "metadata": {"name": "g"}})
            .to_string();
    expect(
        &s,
        "POST",
        WS,
        j,
        gizmo.as_bytes(),
        400,
        "BadRequest",
        "does not match the expected kind",
    );
    let wrong_av = json!({"apiVersion": "molecule.ai/v2", "kind": "Workspace", "metadata": {"name": "g"}, "spec": {}}).to_string();
    expect(
        &s,
        "POST",
        WS,
        j,
        wrong_av.as_bytes(),
        400,
        "BadRequest",
        "does not match the expected API version",
    );
    // Names that are not DNS-1123.
    expect(
        &s,
        "POST",
        WS,
        j,
        &ws("Bad_Name"),
        422,
        "Invalid",
        "RFC 1123",
    );
    expect(
        &s,
        "POST",
        WS,
        j,
        &ws(&"a".repeat(254)),
        422,
        "Invalid",
        "253",
    );
    expect(
        &s,
        "POST",
        "/apis/molecule.ai/v1alpha1/namespaces/Bad_NS/workspaces",
        j,
        &ws("x"),
        400,
        "BadRequest",
        "invalid namespace",
    );
    // Wrong types, out-of-range values, unknown fields under Strict.
    let bad_tier = json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "metadata": {"name": "t"}, "spec": {"tier": "x"}}).to_string();
    expect(
        &s,
        "POST",
        WS,
        j,
        bad_tier.as_bytes(),
        422,
        "Invalid",
        "spec.tier in body must be of type integer",
    );
    let tier9 = json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "metadata": {"name": "t"}, "spec": {"tier": 9}}).to_string();
    expect(
        &s,
        "POST",
        WS,
        j,
        tier9.as_bytes(),
        422,
        "Invalid",
        "less than or equal to 4",
    );
    let unknown = json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "metadata": {"name": "u"}, "spec": {"bogus": 1}}).to_string();
    expect(
        &s,
        "POST",
        &format!("{WS}?fieldValidation=Strict"),
        j,
        unknown.as_bytes(),
        400,
        "BadRequest",
        "unknown field \"spec.bogus\"",
    );
    expect(
        &s,
        "POST",
        &format!("{WS}?fieldValidation=Sloppy"),
        j,
        unknown.as_bytes(),
        400,
        "BadRequest",
        "fieldValidation",
    );
    // Oversized body.
    let big = json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "metadata": {"name": "big", "annotations": {"x": "y".repeat(10_000)}}, "spec": {}}).to_string();
    expect(
        &s,
        "POST",
        WS,
        j,
        big.as_bytes(),
        413,
        "RequestEntityTooLarge",
        "larger than the limit",
    );
    // Strategic merge patch on a custom kind; unknown patch type.
    let (code, _) = s.http("POST", WS, j, &ws("target"));
    assert_eq!(code, 201);
    expect(
        &s,
        "PATCH",
        &format!("{WS}/target"),
        Some("application/strategic-merge-patch+json"),
        b"{}",
        415,
        "UnsupportedMediaType",
        "merge-patch+json",
    );
    expect(
        &s,
        "PATCH",
        &format!("{WS}/target"),
        Some("text/plain"),
        b"{}",
        415,
        "UnsupportedMediaType",
        "accepted media types",
    );
    expect(
        &s,
        "PATCH",
        &format!("{WS}/target"),
        Some("application/json-patch+json"),
        br#"[{"op":"test","path":"/spec/runtime","value":"nope"}]"#,
        422,
        "Invalid",
        "JSON patch",
    );
    expect(
        &s,
        "PATCH",
        &format!("{WS}/target"),
        Some("application/apply-patch+yaml"),
        b"{}",
        422,
        "Invalid",
        "fieldManager",
    );
    // A wrong or missing resourceVersion.
    let (_, cur) = s.http("GET", &format!("{WS}/target"), None, b"");
    let mut obj = status(&cur);
    obj["metadata"]["resourceVersion"] = json!("1");
    expect(
        &s,
        "PUT",
        &format!("{WS}/target"),
        j,
        obj.to_string().as_bytes(),
        409,
        "Conflict",
        "has been modified",
    );
    obj["metadata"]
        .as_object_mut()
        .map(|m| m.remove("resourceVersion"));
    expect(
        &s,
        "PUT",
        &format!("{WS}/target"),
        j,
        obj.to_string().as_bytes(),
        422,
        "Invalid",
        "must be specified for an update",
    );
    let stale_patch =
        json!({"metadata": {"resourceVersion": "1"}, "spec": {"tier": 1}}).to_string();
    expect(
        &s,
        "PATCH",
        &format!("{WS}/target"),
        Some("application/merge-patch+json"),
        stale_patch.as_bytes(),
        409,
        "Conflict",
        "has been modified",
    );
    expect(
        &s,
        "DELETE",
        &format!("{WS}/target"),
        j,
        br#"{"preconditions":{"uid":"not-it"}}"#,
        409,
        "Conflict",
        "Precondition failed",
    );
    expect(
        &s,
        "DELETE",
        &format!("{WS}/target"),
        j,
        b"{oops",
        400,
        "BadRequest",
        "DeleteOptions",
    );
    // Duplicates, selectors, watch parameters.
    expect(
        &s,
        "POST",
        WS,
        j,
        &ws("target"),
        409,
        "AlreadyExists",
        "already exists",
    );
    expect(
        &s,
        "GET",
        &format!("{WS}?labelSelector=a%20in%20(b"),
        None,
        b"",
        400,
        "BadRequest",
        "unable to parse",
    );
    expect(
        &s,
        "GET",
        &format!("{WS}?fieldSelector=spec.tier%3D1"),
        None,
        b"",
        400,
        "BadRequest",
        "field label not supported",
    );
    expect(
        &s,
        "GET",
        &format!("{WS}?watch=true&sendInitialEvents=true"),
        None,
        b"",
        422,
        "Invalid",
        "allowWatchBookmarks",
    );
    expect(
        &s,
        "GET",
        &format!("{WS}/missing"),
        None,
        b"",
        404,
        "NotFound",
        "workspaces.molecule.ai \"missing\" not found",
    );

    // A watch from a compacted resourceVersion gets an in-stream ERROR 410, never an HTTP 410.
    for i in 0..8 {
        let (code, _) = s.http("POST", WS, j, &ws(&format!("fill-{i}")));
        assert_eq!(code, 201);
    }
    let (code, body) = s.http(
        "GET",
        &format!("{WS}?watch=true&resourceVersion=2&timeoutSeconds=2"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let first: Value = serde_json::from_str(body.lines().next().unwrap_or(""))
        .unwrap_or_else(|_| panic!("watch line: {body}"));
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["code"].as_u64(),
            first["object"]["reason"].as_str()
        ),
        (Some("ERROR"), Some(410), Some("Expired")),
        "{body}"
    );

    // Nothing half-written: exactly the objects that were accepted exist.
    let (_, list) = s.http("GET", WS, None, b"");
    let mut names: Vec<String> = status(&list)["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..8).map(|i| format!("fill-{i}")).collect();
    want.push("target".into());
    want.sort();
    assert_eq!(names, want);
    assert!(
        !s.log().contains("InternalError") && !s.log().contains("panicked"),
        "{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_sqlite() {
    suite(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_postgres() {
    suite(true).await;
}
