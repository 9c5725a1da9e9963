//! The kubeconfig `serve` writes so that plain `kubectl` works against the embedded server.

use std::path::{Path, PathBuf};

/// Where `serve` writes the kubeconfig for a data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig")
}

/// The kubeconfig text for a server URL and bearer token (namespace `default`).
pub fn render(server: &str, token: &str, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: molecule\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: molecule-admin\n  user:\n    token: {token}\ncontexts:\n- name: molecule\n  context:\n    cluster: molecule\n    user: molecule-admin\n    namespace: default\ncurrent-context: molecule\n"
    )
}

/// Writes the kubeconfig (mode 0600: it holds the token).
pub fn write(data_dir: &Path, server: &str, token: &str, ca_pem: &str) -> std::io::Result<PathBuf> {
    let p = path(data_dir);
    crate::util::write_private_file(&p, render(server, token, ca_pem).as_bytes())?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_is_loadable_by_kube() {
        let text = render(
            "https://127.0.0.1:8080",
            "abc",
            "-----BEGIN CERTIFICATE-----\n",
        );
        let kc = kube::config::Kubeconfig::from_yaml(&text).expect("parse");
        assert_eq!(kc.current_context.as_deref(), Some("molecule"));
        assert_eq!(
            kc.clusters[0]
                .cluster
                .as_ref()
                .and_then(|c| c.server.clone())
                .as_deref(),
            Some("https://127.0.0.1:8080")
        );
    }
}
