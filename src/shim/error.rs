//! Errors of the REST shim. Every variant renders as the original's `{"error": "..."}` body
//! with a status code; messages name fields, never echo values or driver text (ADR 0020). The full
//! cause of an unexpected failure goes to the log only.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What went wrong with a shim request; `category` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing bearer token")]
    Unauthenticated,
    #[error("invalid token")]
    BadToken,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large (limit {0} bytes)")]
    TooLarge(usize),
    #[error("{0}")]
    Unavailable(&'static str),
    /// A structured refusal (409 with children, 412 with missing env, ...).
    #[error("{1}")]
    Body(StatusCode, Value),
    #[error("kubernetes API error")]
    Kube(#[source] kube::Error),
}

impl ShimError {
    pub fn category(&self) -> &'static str {
        match self {
            ShimError::BadRequest(_) => "BadRequest",
            ShimError::Unauthenticated | ShimError::BadToken => "Unauthorized",
            ShimError::Forbidden(_) => "Forbidden",
            ShimError::NotFound(_) => "NotFound",
            ShimError::Conflict(_) => "Conflict",
            ShimError::TooLarge(_) => "TooLarge",
            ShimError::Unavailable(_) => "Unavailable",
            ShimError::Body(..) => "Refused",
            ShimError::Kube(_) => "ApiError",
        }
    }

    pub fn bad(msg: impl Into<String>) -> Self {
        ShimError::BadRequest(msg.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            ShimError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ShimError::Unauthenticated | ShimError::BadToken => StatusCode::UNAUTHORIZED,
            ShimError::Forbidden(_) => StatusCode::FORBIDDEN,
            ShimError::NotFound(_) => StatusCode::NOT_FOUND,
            ShimError::Conflict(_) => StatusCode::CONFLICT,
            ShimError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ShimError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ShimError::Body(code, _) => *code,
            ShimError::Kube(e) => match e {
                kube::Error::Api(s) if s.code == 404 => StatusCode::NOT_FOUND,
                kube::Error::Api(s) if s.code == 409 => StatusCode::CONFLICT,
                kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                kube::Error::Api(s) if s.code == 403 => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    fn public_message(&self) -> String {
        match self {
            ShimError::Kube(kube::Error::Api(s)) => match s.code {
                404 => "the record no longer exists".into(),
                409 => "the record changed concurrently; retry".into(),
                400 | 422 => format!(
                    "the API server refused the record ({})",
                    if s.reason.is_empty() {
                        "Invalid"
                    } else {
                        s.reason.as_str()
                    }
                ),
                403 => "the operator's credentials may not do this".into(),
                _ => "the API server is unavailable; retry".into(),
            },
            ShimError::Kube(_) => "the API server is unavailable; retry".into(),
            other => other.to_string(),
        }
    }
}

impl From<kube::Error> for ShimError {
    fn from(e: kube::Error) -> Self {
        ShimError::Kube(e)
    }
}

impl IntoResponse for ShimError {
    fn into_response(self) -> Response {
        if let ShimError::Kube(e) = &self {
            tracing::warn!(error = %e, "shim: API call failed");
        }
        let code = self.status();
        match self {
            ShimError::Body(code, body) => (code, axum::Json(body)).into_response(),
            other => (code, axum::Json(json!({"error": other.public_message()}))).into_response(),
        }
    }
}

/// Shorthand for handler results.
pub type ShimResult<T = Response> = Result<T, ShimError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_mapped_without_their_text() {
        let status = kube::core::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "Workspace \"secret-looking-name\" is invalid: spec.tier: 9".into(),
            ..Default::default()
        };
        let e = ShimError::Kube(kube::Error::Api(Box::new(status)));
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let m = e.public_message();
        assert!(!m.contains("secret-looking-name"), "{m}");
        assert_eq!(e.category(), "ApiError");
        assert_eq!(ShimError::BadToken.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ShimError::TooLarge(10).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
