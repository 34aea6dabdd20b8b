//! API errors as `metav1.Status` bodies, so kube-rs and kubectl map them as they would a real server's.

use serde_json::{Value, json};

/// A failed request: the HTTP code, the Kubernetes `reason`, and a message in the API server's words.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status: name, group, kind, and for 422 the causes with their fields.
    pub details: Option<Value>,
    /// Seconds for `Retry-After` on 429 and 5xx.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, retry_after: None }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        Self::new(404, "NotFound", format!("{what} \"{name}\" not found"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    pub fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        Self::new(409, "AlreadyExists", format!("{what} \"{name}\" already exists"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    pub fn conflict(resource: &str, group: &str, name: &str, why: &str) -> Self {
        let what = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    pub fn stale(resource: &str, group: &str, name: &str) -> Self {
        Self::conflict(
            resource,
            group,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 with one cause per field, as the API server reports validation failures.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let summary: Vec<String> = causes.iter().map(|(field, message)| format!("{field}: {message}")).collect();
        let what = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        // kube-apiserver's aggregate: one error as it is, several in brackets.
        let joined = if summary.len() == 1 { summary.join("") } else { format!("[{}]", summary.join(", ")) };
        let message = format!("{what} \"{name}\" is invalid: {joined}");
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(field, message)| json!({"reason": cause_reason(&message), "message": message, "field": field}))
            .collect();
        Self::new(422, "Invalid", message)
            .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn too_many_requests(message: impl Into<String>) -> Self {
        let mut e = Self::new(429, "TooManyRequests", message);
        e.retry_after = Some(1);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// The `metav1.Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        if let Some(seconds) = self.retry_after {
            let details = status.as_object_mut().and_then(|s| {
                s.entry("details").or_insert_with(|| json!({}));
                s.get_mut("details")
            });
            if let Some(details) = details {
                details["retryAfterSeconds"] = json!(seconds);
            }
        }
        status
    }
}

/// The `metav1.CauseType` kube-apiserver gives a field error, read from how its message starts.
fn cause_reason(message: &str) -> &'static str {
    const REASONS: [(&str, &str); 8] = [
        ("Required value", "FieldValueRequired"),
        ("Forbidden", "FieldValueForbidden"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Not found", "FieldValueNotFound"),
        ("Internal error", "InternalError"),
    ];
    REASONS.iter().find(|(prefix, _)| message.starts_with(prefix)).map(|(_, r)| *r).unwrap_or("FieldValueInvalid")
}
