//! How an upstream call failed, classified once from the SDK's error: whose fault it is and
//! whether trying again later can help.

use aws_sdk_quicksight::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// How an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// ThrottlingException: the account's QuickSight budget is exhausted. Retry later.
    #[error("QuickSight throttled the call")]
    Throttled,
    /// 5xx, a 408 that persisted after one resend, or a connection failure. Retry later.
    #[error("QuickSight is unavailable: {0}")]
    Unavailable(String),
    /// No answer within the configured timeout.
    #[error("QuickSight did not answer in time")]
    Timeout,
    /// A permanent refusal (4xx), with QuickSight's status, code and message. Not retryable.
    #[error("QuickSight refused the call: {code} ({status})")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
}

/// Whose fault a failed call is: decides what the caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// QuickSight's side: throttling, 5xx, no answer. Retryable.
    Upstream,
    /// The gateway's own identity was refused (keys, signature, IAM permission): the operator's
    /// problem, and nothing of it is the caller's to know.
    Gateway,
    /// QuickSight refused this request (a 4xx about what was asked).
    Caller,
}

impl UpstreamError {
    /// Whose fault this failure is.
    pub fn fault(&self) -> Fault {
        match self {
            UpstreamError::Throttled | UpstreamError::Unavailable(_) | UpstreamError::Timeout => {
                Fault::Upstream
            }
            UpstreamError::Rejected { status, code, .. } => {
                if is_own_credentials_failure(*status, code) {
                    Fault::Gateway
                } else {
                    Fault::Caller
                }
            }
        }
    }

    /// Whether the same call may succeed later (the caller gets a `Retry-After`).
    pub fn is_retryable(&self) -> bool {
        self.fault() == Fault::Upstream
    }

    /// The `result` label of `embedgate_upstream_calls_total`.
    pub(super) fn label(&self) -> &'static str {
        match self {
            UpstreamError::Throttled => "throttled",
            UpstreamError::Unavailable(_) => "error",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Rejected { .. } => "rejected",
        }
    }
}

/// Whether a refusal is of the gateway's own identity rather than of the caller's request: AWS's
/// authentication errors (unknown or expired keys, bad signatures) and QuickSight's
/// `AccessDeniedException`, which says the gateway's principal lacks a permission.
fn is_own_credentials_failure(status: u16, code: &str) -> bool {
    const CODES: [&str; 10] = [
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidAccessKeyId",
    ];
    status == 401 || CODES.contains(&code)
}

/// The one place SDK errors are classified.
pub(super) fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    err: SdkError<E, HttpResponse>,
) -> UpstreamError {
    match err {
        SdkError::TimeoutError(_) => UpstreamError::Timeout,
        SdkError::DispatchFailure(e) => {
            if e.is_timeout() {
                UpstreamError::Timeout
            } else {
                UpstreamError::Unavailable(match e.as_connector_error() {
                    Some(c) => format!("connection failed: {c}"),
                    None => "connection failed".to_string(),
                })
            }
        }
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let err = e.into_err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err.message().unwrap_or_default().to_string();
            if code == "ThrottlingException" || status == 429 {
                UpstreamError::Throttled
            } else if status >= 500 || status == 408 {
                UpstreamError::Unavailable(format!("{code} ({status})"))
            } else {
                UpstreamError::Rejected {
                    status,
                    code,
                    message,
                }
            }
        }
        SdkError::ResponseError(_) => UpstreamError::Unavailable("unreadable response".into()),
        // Never format the whole error: a raw response inside it may carry an embed URL.
        _ => UpstreamError::Unavailable("the request could not be constructed or sent".into()),
    }
}
