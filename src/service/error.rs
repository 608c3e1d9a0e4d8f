//! The service's typed errors, as the NATS micro protocol carries them: the headers
//! `Nats-Service-Error` (a display string) and `Nats-Service-Error-Code` (a number).
//!
//! Owns: the codes and the stable reason token every status starts with (`"<reason>: <what>"`),
//! which clients and the CLI match on.
//!
//! Invariants: every request gets either a reply or one of these; none is left unanswered.

use std::borrow::Cow;
use std::fmt;

/// A reply's error as the micro protocol carries it: its `Nats-Service-Error` text and its
/// `Nats-Service-Error-Code` as sent (empty when missing); `None` for a reply that is not an
/// error. What the CLI, loadgen and the tests read from a reply.
pub fn reply_error(reply: &async_nats::Message) -> Option<(String, String)> {
    let headers = reply.headers.as_ref()?;
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    let status = header(async_nats::service::NATS_SERVICE_ERROR)?;
    let code = header(async_nats::service::NATS_SERVICE_ERROR_CODE).unwrap_or_default();
    Some((status, code))
}

/// One error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceError {
    /// 400 bad request, 404 unknown, 422 not applied, 500 internal, 503 unavailable.
    pub code: u16,
    /// Stable: `bad_request`, `invalid_field`, `unknown_account`, a dead-letter reason, …
    /// (borrowed, but for an error relayed from the processor that owns the partition).
    pub reason: Cow<'static, str>,
    /// For people: what was wrong, naming the field when one was.
    pub detail: String,
}

impl ServiceError {
    pub fn new(code: u16, reason: &'static str, detail: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            reason: Cow::Borrowed(reason),
            detail: detail.into(),
        }
    }

    /// An error as another processor sent it: its code and its `Nats-Service-Error` text
    /// (`"<reason>: <detail>"`).
    pub fn relayed(code: u16, status: &str) -> ServiceError {
        let (reason, detail) = status.split_once(": ").unwrap_or((status, ""));
        ServiceError {
            code,
            reason: Cow::Owned(reason.to_string()),
            detail: detail.to_string(),
        }
    }

    /// 400: the request itself is wrong (`reason` names how, the detail the field).
    pub fn bad_request(reason: &'static str, detail: impl Into<String>) -> ServiceError {
        ServiceError::new(400, reason, detail)
    }

    /// 404: the partition has no such account.
    pub fn unknown_account(account: &str) -> ServiceError {
        ServiceError::new(
            404,
            "unknown_account",
            format!("no account {account:?} (it has had no accepted message)"),
        )
    }

    /// 503: the processor cannot answer now; the request may be retried.
    pub fn unavailable(reason: &'static str, detail: impl Into<String>) -> ServiceError {
        ServiceError::new(503, reason, detail)
    }

    /// The `Nats-Service-Error` header's text.
    pub fn status(&self) -> String {
        format!("{}: {}", self.reason, self.detail)
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.status())
    }
}

impl std::error::Error for ServiceError {}

impl From<ServiceError> for async_nats::service::error::Error {
    fn from(error: ServiceError) -> Self {
        async_nats::service::error::Error {
            status: error.status(),
            code: usize::from(error.code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceError;

    #[test]
    fn a_relayed_error_is_the_one_its_owner_sent() {
        let sent = ServiceError::unknown_account("acct_1");
        let relayed = ServiceError::relayed(sent.code, &sent.status());
        assert_eq!(relayed, sent);
        let bare = ServiceError::relayed(503, "busy");
        assert_eq!((bare.reason.as_ref(), bare.detail.as_str()), ("busy", ""));
    }
}
