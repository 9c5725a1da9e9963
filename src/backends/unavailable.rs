//! A backend that is not there: every call fails with the same configuration error. Stands in
//! for Docker in an operator whose workspaces are Pods and whose node has no Docker engine
//! (ADR 0057), so a Workspace that asks for Docker gets a clear condition instead of a hang.

use super::{
    BackendError, ConfigFile, ExecOutput, Managed, Presence, StartSpec, Started, WorkspaceBackend,
    WorkspaceRef,
};

/// Fails every call with `why` (a configuration error, retried: the fix is the operator's).
#[derive(Debug)]
pub struct Unavailable {
    why: &'static str,
}

impl Unavailable {
    pub fn new(why: &'static str) -> Self {
        Self { why }
    }

    fn err(&self) -> BackendError {
        BackendError::Config(self.why.to_string())
    }
}

#[async_trait::async_trait]
impl WorkspaceBackend for Unavailable {
    async fn ensure_started(&self, _: &StartSpec) -> Result<Started, BackendError> {
        Err(self.err())
    }
    async fn stop(&self, _: &WorkspaceRef) -> Result<(), BackendError> {
        Err(self.err())
    }
    async fn remove(&self, _: &WorkspaceRef, _: bool) -> Result<(), BackendError> {
        Err(self.err())
    }
    async fn inspect(&self, _: &WorkspaceRef) -> Result<Presence, BackendError> {
        Err(self.err())
    }
    async fn write_files(&self, _: &WorkspaceRef, _: &[ConfigFile]) -> Result<(), BackendError> {
        Err(self.err())
    }
    async fn exec(&self, _: &WorkspaceRef, _: &[String]) -> Result<ExecOutput, BackendError> {
        Err(self.err())
    }
    /// Nothing of this backend exists, so the reaper has nothing to do here.
    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError> {
        Ok(vec![])
    }
    async fn remove_managed(&self, _: &Managed) -> Result<(), BackendError> {
        Err(self.err())
    }
    async fn console(&self, _: &WorkspaceRef) -> Result<String, BackendError> {
        Err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_call_fails_with_the_reason_and_listing_finds_nothing() {
        let u = Unavailable::new("no engine here");
        let w = WorkspaceRef {
            uid: "u".into(),
            namespace: "n".into(),
            name: "w".into(),
            instance_id: None,
        };
        let e = u.inspect(&w).await.expect_err("fails");
        assert!(e.is_transient() && e.to_string() == "no engine here");
        assert!(u.list_managed().await.expect("lists").is_empty());
    }
}
