//! Commands in a workspace container (without a shell) and its console output.

use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::ExecConfig;
use futures::StreamExt;

use super::errors::{bounded, map_error};
use crate::backends::MAX_CONSOLE_BYTES;

use super::{BackendError, DockerBackend, ExecOutput, Lookup, WorkspaceRef};

impl DockerBackend {
    /// Runs `cmd` in the workspace container, bounded by the exec timeout.
    pub(super) async fn run_exec(
        &self,
        ws: &WorkspaceRef,
        cmd: &[String],
    ) -> Result<ExecOutput, BackendError> {
        if cmd.is_empty() {
            return Err(BackendError::Permanent("exec needs a command".to_string()));
        }
        let id = match self.lookup_container(ws).await? {
            Lookup::Owned(c) => c.id.clone().unwrap_or_else(|| ws.container_name()),
            Lookup::Absent | Lookup::Foreign => {
                return Err(BackendError::Permanent(format!(
                    "workspace container {} does not exist",
                    ws.container_name()
                )));
            }
        };
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            ..Default::default()
        };
        let exec = self
            .timed(self.docker.create_exec(&id, config))
            .await
            .map_err(|e| map_error("create exec", e))?;
        let run = async {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            match self.docker.start_exec(&exec.id, None).await? {
                bollard::exec::StartExecResults::Attached { mut output, .. } => {
                    while let Some(chunk) = output.next().await {
                        match chunk? {
                            bollard::container::LogOutput::StdErr { message } => {
                                stderr.extend_from_slice(&message)
                            }
                            bollard::container::LogOutput::StdOut { message }
                            | bollard::container::LogOutput::Console { message } => {
                                stdout.extend_from_slice(&message)
                            }
                            bollard::container::LogOutput::StdIn { .. } => {}
                        }
                    }
                }
                bollard::exec::StartExecResults::Detached => {}
            }
            Ok::<_, DockerError>((stdout, stderr))
        };
        let (stdout, stderr) = bounded(self.exec_timeout, run)
            .await
            .map_err(|e| map_error("run exec", e))?;
        // The stream ends when the process exits; the exit code can lag by a moment.
        for attempt in 0..25 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let info = self
                .timed(self.docker.inspect_exec(&exec.id))
                .await
                .map_err(|e| map_error("inspect exec", e))?;
            if info.running != Some(true)
                && let Some(exit_code) = info.exit_code
            {
                return Ok(ExecOutput {
                    exit_code,
                    stdout,
                    stderr,
                });
            }
        }
        Err(BackendError::Transient(format!(
            "exec in {id} finished its output but reported no exit code"
        )))
    }

    /// The last 2000 lines of the container's stdout and stderr, capped at
    /// [`MAX_CONSOLE_BYTES`] (the newest bytes are kept).
    pub(super) async fn read_console(&self, ws: &WorkspaceRef) -> Result<String, BackendError> {
        let id = match self.lookup_container(ws).await? {
            Lookup::Owned(c) => c.id.clone().unwrap_or_else(|| ws.container_name()),
            Lookup::Absent | Lookup::Foreign => {
                return Err(BackendError::Permanent(format!(
                    "workspace container {} does not exist",
                    ws.container_name()
                )));
            }
        };
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: "2000".to_string(),
            ..Default::default()
        };
        let read = async {
            let mut out: Vec<u8> = Vec::new();
            let mut s = self.docker.logs(&id, Some(options));
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk?.into_bytes());
                if out.len() > 2 * MAX_CONSOLE_BYTES {
                    out.drain(..out.len() - MAX_CONSOLE_BYTES);
                }
            }
            Ok::<_, DockerError>(out)
        };
        let mut out = bounded(self.call_timeout, read)
            .await
            .map_err(|e| map_error("read container logs", e))?;
        if out.len() > MAX_CONSOLE_BYTES {
            out.drain(..out.len() - MAX_CONSOLE_BYTES);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
