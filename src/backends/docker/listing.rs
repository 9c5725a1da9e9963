//! Listing this installation's managed containers and volumes, and reaping one of them after
//! checking it still carries the labels it was listed with.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};

use super::errors::{is_not_found, map_error};
use super::volumes::remove_volume_by_name;
use super::{
    BackendError, DockerBackend, LABEL_NAME, LABEL_NAMESPACE, LABEL_UID, Managed, WorkspaceRef,
    managed_here,
};
use crate::backends::ManagedKind;

impl DockerBackend {
    /// Ids of every container labelled for this workspace (workspace container and helpers).
    pub(super) async fn labelled_containers(
        &self,
        ws: &WorkspaceRef,
    ) -> Result<Vec<String>, BackendError> {
        let mut label = self.managed_filter();
        label.push(format!("{LABEL_UID}={}", ws.uid));
        let filters = HashMap::from([("label", label)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .timed(self.docker.list_containers(Some(options)))
            .await
            .map_err(|e| map_error("list containers", e))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    pub(super) async fn list_managed_objects(&self) -> Result<Vec<Managed>, BackendError> {
        let filters = HashMap::from([("label", self.managed_filter())]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .timed(self.docker.list_containers(Some(options)))
            .await
            .map_err(|e| map_error("list containers", e))?;
        let mut out = Vec::new();
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            if !managed_here(&labels, &self.instance) {
                continue;
            }
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .or(c.id)
            else {
                continue;
            };
            out.push(managed_from(ManagedKind::Container, name, &labels));
        }
        let options = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let volumes = self
            .timed(self.docker.list_volumes(Some(options)))
            .await
            .map_err(|e| map_error("list volumes", e))?;
        for v in volumes.volumes.unwrap_or_default() {
            if !managed_here(&v.labels, &self.instance) {
                continue;
            }
            out.push(managed_from(ManagedKind::Volume, v.name.clone(), &v.labels));
        }
        out.sort_by(|a, b| (kind_order(&a.kind), &a.name).cmp(&(kind_order(&b.kind), &b.name)));
        Ok(out)
    }

    pub(super) async fn remove_managed_object(&self, m: &Managed) -> Result<(), BackendError> {
        match m.kind {
            ManagedKind::Container => {
                let c = match self
                    .timed(self.docker.inspect_container(&m.name, None))
                    .await
                {
                    Ok(c) => c,
                    Err(e) if is_not_found(&e) => return Ok(()),
                    Err(e) => return Err(map_error("inspect container", e)),
                };
                let labels = c
                    .config
                    .as_ref()
                    .and_then(|cfg| cfg.labels.clone())
                    .unwrap_or_default();
                check_managed_labels(&labels, m, &self.instance)?;
                let id = c.id.unwrap_or_else(|| m.name.clone());
                self.force_remove(&id).await
            }
            ManagedKind::Volume => {
                let v = match self.timed(self.docker.inspect_volume(&m.name)).await {
                    Ok(v) => v,
                    Err(e) if is_not_found(&e) => return Ok(()),
                    Err(e) => return Err(map_error("inspect volume", e)),
                };
                check_managed_labels(&v.labels, m, &self.instance)?;
                remove_volume_by_name(self, &m.name).await
            }
            ManagedKind::Instance | ManagedKind::Service | ManagedKind::Secret => Err(
                BackendError::Permanent(format!("{} is not a Docker object", m.name)),
            ),
        }
    }
}

fn kind_order(k: &ManagedKind) -> u8 {
    match k {
        ManagedKind::Container => 0,
        ManagedKind::Volume => 1,
        ManagedKind::Instance => 2,
        ManagedKind::Service => 3,
        ManagedKind::Secret => 4,
    }
}

fn managed_from(kind: ManagedKind, name: String, labels: &HashMap<String, String>) -> Managed {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Managed {
        kind,
        name,
        uid: get(LABEL_UID),
        namespace: get(LABEL_NAMESPACE),
        workspace: get(LABEL_NAME),
        attempt: String::new(),
    }
}

fn check_managed_labels(
    labels: &HashMap<String, String>,
    m: &Managed,
    instance: &str,
) -> Result<(), BackendError> {
    let managed = managed_here(labels, instance);
    let same_uid = labels.get(LABEL_UID).map(String::as_str).unwrap_or("") == m.uid;
    if managed && same_uid {
        Ok(())
    } else {
        Err(BackendError::Permanent(format!(
            "refusing to remove {}: it does not carry the managed labels it was listed with",
            m.name
        )))
    }
}
