//! Engine errors as [`BackendError`]s, and the timeout every engine call runs under.

use std::future::Future;
use std::time::Duration;

use bollard::errors::Error as DockerError;

use super::BackendError;
use super::spec::redact;

/// Runs `fut` for at most `limit`; running out of time is a request timeout.
pub(super) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, DockerError>>,
) -> Result<T, DockerError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(DockerError::RequestTimeoutError),
    }
}

pub(super) fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(super) fn is_not_found(e: &DockerError) -> bool {
    status_of(e) == Some(404)
}

pub(super) fn is_removal_in_progress(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 409, message }
        if message.to_ascii_lowercase().contains("already in progress"))
}

/// Maps a bollard error: unreachable engine, timeouts and 5xx are Transient; everything else is
/// Permanent.
pub(crate) fn map_error(op: &str, e: DockerError) -> BackendError {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => {
            let message = message.trim();
            if status_code >= 500 {
                BackendError::Transient(format!("{op}: HTTP {status_code}: {message}"))
            } else {
                BackendError::Permanent(format!("{op}: {message} (HTTP {status_code})"))
            }
        }
        DockerError::RequestTimeoutError => {
            BackendError::Transient(format!("{op}: the engine did not answer in time"))
        }
        e @ (DockerError::HyperResponseError { .. }
        | DockerError::HyperLegacyError { .. }
        | DockerError::IOError { .. }
        | DockerError::SocketNotFoundError(_)) => BackendError::Transient(format!("{op}: {e}")),
        other => BackendError::Permanent(format!("{op}: {other}")),
    }
}

/// Like [`map_error`] for container create: a 404 about the image is ImageMissing, and env values
/// never reach the message.
pub(crate) fn map_create_error(
    e: DockerError,
    image: &str,
    env: &[(String, String)],
) -> BackendError {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.to_ascii_lowercase().contains("image") => {
            BackendError::ImageMissing(image.to_string())
        }
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => map_error(
            "create container",
            DockerError::DockerResponseServerError {
                status_code,
                message: redact(&message, env),
            },
        ),
        other => map_error("create container", other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_errors_are_classified() {
        let server = |status_code: u16, message: &str| DockerError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
        let missing = map_create_error(server(404, "No such image: nope:1"), "nope:1", &[]);
        assert!(matches!(&missing, BackendError::ImageMissing(i) if i == "nope:1"));
        assert_eq!(missing.category(), "ImageMissing");
        assert!(
            map_create_error(server(404, "network x not found"), "i", &[]).category()
                == "Permanent"
        );
        assert!(map_error("x", server(500, "boom")).is_transient());
        assert!(map_error("x", server(503, "busy")).is_transient());
        assert_eq!(map_error("x", server(400, "bad")).category(), "Permanent");
        assert_eq!(
            map_error("x", server(409, "conflict")).category(),
            "Permanent"
        );
        assert!(map_error("x", DockerError::RequestTimeoutError).is_transient());
        assert!(map_error("x", DockerError::SocketNotFoundError("/s".into())).is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(map_error("x", DockerError::from(io)).is_transient());
        assert!(is_removal_in_progress(&server(
            409,
            "removal of container abc is already in progress"
        )));

        // Env values never reach an error message.
        let env = vec![("API_KEY".to_string(), "sk-supersecret".to_string())];
        let e = map_create_error(
            server(400, "invalid env API_KEY=sk-supersecret"),
            "img",
            &env,
        );
        assert!(!e.to_string().contains("sk-supersecret"), "{e}");
        assert!(e.to_string().contains("<redacted>"));
    }
}
