//! The bridge network workspaces join, and the engine host's CPU count.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::models::{NetworkCreateRequest, NetworkInspect};

use super::errors::{is_not_found, map_error, status_of};
use super::{BackendError, DockerBackend, LABEL_MANAGED, NetworkInfo};

impl DockerBackend {
    /// Creates the bridge network if missing (labelled managed) and returns its IPv4 gateway.
    ///
    /// Serialised within this backend: the 1.41 API has no server-side duplicate check by
    /// default, so two concurrent creates could make two networks with one name.
    pub async fn ensure_network(&self) -> Result<NetworkInfo, BackendError> {
        let _guard = self.network_lock.lock().await;
        let info = self.ensure_network_locked().await?;
        self.network_ready
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(info)
    }

    /// [`DockerBackend::ensure_network`] unless this backend already saw the network exist (the
    /// provisioning hot path skips the inspect; a create that finds it gone clears the flag).
    pub(super) async fn ensure_network_once(&self) -> Result<(), BackendError> {
        if !self
            .network_ready
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.ensure_network().await?;
        }
        Ok(())
    }

    async fn ensure_network_locked(&self) -> Result<NetworkInfo, BackendError> {
        match self.inspect_network().await? {
            Some(net) => Ok(self.network_info(&net)),
            None => {
                let request = NetworkCreateRequest {
                    name: self.network.clone(),
                    driver: Some("bridge".to_string()),
                    labels: Some(HashMap::from([(
                        LABEL_MANAGED.to_string(),
                        "true".to_string(),
                    )])),
                    ..Default::default()
                };
                match self.timed(self.docker.create_network(request)).await {
                    Ok(_) => tracing::info!(network = %self.network, "created docker network"),
                    Err(e) if status_of(&e) == Some(409) => {}
                    Err(e) => return Err(map_error("create network", e)),
                }
                match self.inspect_network().await? {
                    Some(net) => Ok(self.network_info(&net)),
                    None => Err(BackendError::Transient(format!(
                        "network {} vanished right after being created",
                        self.network
                    ))),
                }
            }
        }
    }

    async fn inspect_network(&self) -> Result<Option<NetworkInspect>, BackendError> {
        match self
            .timed(self.docker.inspect_network(&self.network, None))
            .await
        {
            Ok(net) => Ok(Some(net)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error("inspect network", e)),
        }
    }

    fn network_info(&self, net: &NetworkInspect) -> NetworkInfo {
        let gateways: Vec<IpAddr> = net
            .ipam
            .as_ref()
            .and_then(|ipam| ipam.config.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.gateway.as_deref())
            .filter_map(|g| g.split('/').next())
            .filter_map(|g| g.parse::<IpAddr>().ok())
            .collect();
        let gateway_ip = gateways
            .iter()
            .find(|ip| ip.is_ipv4())
            .or(gateways.first())
            .copied();
        NetworkInfo {
            name: self.network.clone(),
            gateway_ip,
        }
    }

    /// CPUs of the engine's host (asked once). The engine rejects NanoCpus above it.
    pub(super) async fn host_cpus(&self) -> Result<i64, BackendError> {
        self.host_cpus
            .get_or_try_init(|| async {
                let info = self
                    .timed(self.docker.info())
                    .await
                    .map_err(|e| map_error("read engine info", e))?;
                Ok(info.ncpu.filter(|n| *n > 0).unwrap_or(1))
            })
            .await
            .copied()
    }
}
