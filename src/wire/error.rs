//! Errors as QuickSight sends them: the modelled error name in `x-amzn-ErrorType`, `Message`
//! (capital M) and `RequestId` in a JSON body, `x-amzn-RequestId` on the response, and the
//! modelled status. Both SDKs classify an error by its name, so this is what makes their typed
//! exceptions and their retry logic behave as they do against AWS.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::json;

use crate::model::{BadInput, Violation, ViolationKind};
use crate::sigv4::AuthError;

/// A QuickSight error: HTTP status, error code (shape name) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub resource_type: Option<&'static str>,
    /// `x-amz-retry-after` (ms, read by the Rust SDK) and `Retry-After` (s, read by the
    /// JavaScript SDK).
    pub retry_after_ms: Option<u64>,
}

impl AwsError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            status,
            code,
            message: message.into(),
            resource_type: None,
            retry_after_ms: None,
        }
    }

    pub fn not_found(message: impl Into<String>, resource_type: Option<&'static str>) -> Self {
        AwsError {
            resource_type,
            ..AwsError::new(404, "ResourceNotFoundException", message)
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        AwsError::new(400, "InvalidParameterValueException", message)
    }

    pub fn serialization(message: impl Into<String>) -> Self {
        AwsError::new(400, "SerializationException", message)
    }

    /// `AccessDeniedException`, which QuickSight models as HTTP 401.
    pub fn access_denied(message: impl Into<String>) -> Self {
        AwsError::new(401, "AccessDeniedException", message)
    }

    pub fn throttling(message: impl Into<String>) -> Self {
        AwsError::new(429, "ThrottlingException", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        AwsError::new(500, "InternalFailureException", message)
    }

    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// A constraint violation, worded as AWS's validation errors are.
    pub fn from_violation(v: &Violation) -> Self {
        let message = format!(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: Member {}",
            v.field, v.rule
        );
        match v.kind {
            ViolationKind::InvalidParameter => AwsError::invalid(message),
            ViolationKind::SessionLifetime => {
                AwsError::new(400, "SessionLifetimeInMinutesInvalidException", message)
            }
        }
    }

    /// A body the strict parser refused.
    pub fn from_bad_input(b: BadInput) -> Self {
        match (b.code, b.field) {
            ("missing_field", Some(field)) => AwsError::invalid(format!(
                "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
            )),
            ("unknown_field", Some(field)) => AwsError::invalid(format!(
                "1 validation error detected: '{field}' is not a member of this operation's input"
            )),
            (_, _) => AwsError::serialization(b.detail),
        }
    }

    /// A refused signature, as AWS refuses it.
    pub fn from_auth(e: &AuthError) -> Self {
        AwsError::new(e.status(), e.code(), e.message())
    }

    /// restJson1 encoding both SDKs parse into the modelled exception.
    pub fn response(&self, request_id: &str) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body =
            json!({"Message": self.message, "RequestId": request_id, "__type": self.code});
        if let Some(rt) = self.resource_type {
            body["ResourceType"] = json!(rt);
        }
        let mut resp = HttpResponse::build(status);
        resp.insert_header(("x-amzn-RequestId", request_id))
            .insert_header(("x-amzn-ErrorType", self.code));
        if let Some(ms) = self.retry_after_ms {
            resp.insert_header(("x-amz-retry-after", ms.to_string()))
                .insert_header(("Retry-After", ms.div_ceil(1000).max(1).to_string()));
        }
        resp.content_type("application/json").body(body.to_string())
    }
}
