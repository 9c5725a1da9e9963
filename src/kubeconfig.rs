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

/// `http://host:port/#token=…` for the canvas of the server whose kubeconfig is in `data_dir`.
pub fn canvas_url(data_dir: &Path) -> anyhow::Result<String> {
    let kc = kube::config::Kubeconfig::read_from(path(data_dir)).map_err(|e| {
        anyhow::anyhow!(
            "reading the kubeconfig of {} ({e}); has `molecule serve` run there?",
            data_dir.display()
        )
    })?;
    let server = kc
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref().and_then(|c| c.server.clone()))
        .ok_or_else(|| anyhow::anyhow!("the kubeconfig names no server"))?;
    let token = std::fs::read_to_string(data_dir.join("token"))?;
    let base = server.replacen("https://", "http://", 1);
    Ok(format!(
        "{}/#token={}",
        base.trim_end_matches('/'),
        token.trim()
    ))
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
