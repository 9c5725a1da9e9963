//! The controller host: builds a `kube::Client` (from the serve-written kubeconfig in embedded
//! mode, or KUBECONFIG/in-cluster config in cluster mode) and runs the selected controllers
//! until shutdown. Controllers never know which API server they talk to.

use std::sync::Arc;

use crate::shutdown::Shutdown;
use kube::Client;

use crate::telemetry::Metrics;

/// Names of the controllers this build has, in start order. Later issues add to this list.
pub const KNOWN: &[&str] = &[];

/// Which controllers to run (`--controllers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection(pub Vec<String>);

impl Selection {
    /// Parses `all`, `none`, or a comma-separated list of known names.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" | "" => Ok(Selection(KNOWN.iter().map(|s| s.to_string()).collect())),
            "none" => Ok(Selection(vec![])),
            list => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect();
                if let Some(bad) = names.iter().find(|n| !KNOWN.contains(&n.as_str())) {
                    return Err(format!(
                        "unknown controller {bad:?}; known controllers: {}",
                        if KNOWN.is_empty() {
                            "(none in this build)".to_string()
                        } else {
                            KNOWN.join(", ")
                        }
                    ));
                }
                Ok(Selection(names))
            }
        }
    }
}

/// Checks that the molecule.ai kinds are served, with an install hint when they are not.
pub async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let resources = client.list_api_group_resources(crate::resources::API_VERSION).await.map_err(|e| {
        anyhow::anyhow!("the API server does not serve {} ({e}); install the CRDs first: kubectl apply -f crds/", crate::resources::API_VERSION)
    })?;
    for crd in crate::resources::all_crds() {
        if !resources
            .resources
            .iter()
            .any(|r| r.name == crd.spec.names.plural)
        {
            anyhow::bail!(
                "the API server does not serve {}; install the CRDs first: kubectl apply -f crds/",
                crd.spec.names.plural
            );
        }
    }
    Ok(())
}

/// Runs the selected controllers until `shutdown` fires.
pub async fn run(
    client: Client,
    selection: Selection,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    check_crds(&client).await?;
    metrics.set(
        "molecule_controllers_running",
        &[],
        selection.0.len() as f64,
    );
    tracing::info!(controllers = ?selection.0, "controller host started");
    shutdown.wait().await;
    tracing::info!("controller host stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_parses_all_none_and_rejects_unknown() {
        assert_eq!(Selection::parse("none").expect("none").0.len(), 0);
        assert_eq!(Selection::parse("all").expect("all").0.len(), KNOWN.len());
        let e = Selection::parse("bogus").expect_err("unknown");
        assert!(e.contains("unknown controller \"bogus\""), "{e}");
    }
}
