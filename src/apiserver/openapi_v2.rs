//! A minimal OpenAPI v2 document in protobuf (gnostic `openapi_v2.Document`), the only form
//! kubectl asks for. kubectl 1.27 checks server-side field validation support by finding, for
//! each kind, a PATCH operation whose `x-kubernetes-group-version-kind` matches and which has a
//! `fieldValidation` query parameter; without it every `kubectl apply` fails. Newer kubectl
//! reads OpenAPI v3 instead. Only the fields that check reads are encoded.

use super::registry::Registry;
use super::varint;

/// Content type kubectl asks for.
pub const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// A length-delimited field.
fn bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    varint::put(out, (field << 3) | 2);
    varint::put(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn string(out: &mut Vec<u8>, field: u64, s: &str) {
    bytes(out, field, s.as_bytes());
}

fn query_parameter(name: &str) -> Vec<u8> {
    // QueryParameterSubSchema { in = 2, name = 4, type = 6 }
    let mut q = vec![];
    string(&mut q, 2, "query");
    string(&mut q, 4, name);
    string(&mut q, 6, "string");
    // NonBodyParameter { query_parameter_sub_schema = 3 }
    let mut nb = vec![];
    bytes(&mut nb, 3, &q);
    // Parameter { non_body_parameter = 2 }
    let mut p = vec![];
    bytes(&mut p, 2, &nb);
    // ParametersItem { parameter = 1 }
    let mut item = vec![];
    bytes(&mut item, 1, &p);
    item
}

fn vendor_extension(name: &str, yaml: &str) -> Vec<u8> {
    // Any { yaml = 2 }
    let mut any = vec![];
    string(&mut any, 2, yaml);
    // NamedAny { name = 1, value = 2 }
    let mut named = vec![];
    string(&mut named, 1, name);
    bytes(&mut named, 2, &any);
    named
}

fn operation(gvk_yaml: &str, with_params: bool) -> Vec<u8> {
    // Operation { parameters = 8, vendor_extension = 13 }
    let mut op = vec![];
    if with_params {
        for p in ["dryRun", "fieldManager", "fieldValidation", "force"] {
            bytes(&mut op, 8, &query_parameter(p));
        }
    }
    bytes(
        &mut op,
        13,
        &vendor_extension("x-kubernetes-group-version-kind", gvk_yaml),
    );
    op
}

/// The protobuf document for every served kind.
pub fn document(reg: &Registry) -> Vec<u8> {
    let mut paths = vec![];
    for d in &reg.defs {
        let prefix = if d.group.is_empty() {
            format!("/api/{}", d.version)
        } else {
            format!("/apis/{}/{}", d.group, d.version)
        };
        let base = if d.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", d.plural)
        } else {
            format!("{prefix}/{}", d.plural)
        };
        let gvk = format!(
            "group: {:?}\nkind: {}\nversion: {}\n",
            d.group, d.kind, d.version
        );
        // PathItem { get = 2, put = 3, patch = 8 }
        let mut item = vec![];
        bytes(&mut item, 2, &operation(&gvk, false));
        bytes(&mut item, 3, &operation(&gvk, true));
        bytes(&mut item, 8, &operation(&gvk, true));
        // NamedPathItem { name = 1, value = 2 }
        let mut named = vec![];
        string(&mut named, 1, &format!("{base}/{{name}}"));
        bytes(&mut named, 2, &item);
        bytes(&mut paths, 1, &named);
    }
    // Info { title = 1, version = 2 }
    let mut info = vec![];
    string(&mut info, 1, "Kubernetes");
    string(&mut info, 2, "v1.32.0");
    // Document { swagger = 1, info = 2, paths = 8 }
    let mut doc = vec![];
    string(&mut doc, 1, "2.0");
    bytes(&mut doc, 2, &info);
    bytes(&mut doc, 8, &paths);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_encode_like_protobuf() {
        let mut f = vec![];
        string(&mut f, 1, "2.0");
        assert_eq!(f, vec![0x0a, 3, b'2', b'.', b'0']);
    }

    #[test]
    fn document_names_every_kind_with_field_validation() {
        let reg = Registry::new(&crate::resources::all_crds());
        let doc = document(&reg);
        let text = String::from_utf8_lossy(&doc);
        assert!(
            text.contains("/apis/molecule.ai/v1alpha1/namespaces/{namespace}/workspaces/{name}")
        );
        assert!(text.contains("kind: Workspace"));
        assert!(text.contains("fieldValidation"));
        assert!(text.contains("/apis/molecule.ai/v1alpha1/runtimes/{name}"));
    }
}
