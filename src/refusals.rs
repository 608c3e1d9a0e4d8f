//! What the NATS server refused this process: permissions and authorization violations.
//!
//! Owns: the last few refusals the connection's event callback reported, and explaining a
//! failure with them. A permissions violation reaches a client as an `-ERR` on its connection,
//! not as a reply: the request that caused it simply times out ("request error: timed out"),
//! and wrong credentials make every request time out while the client keeps reconnecting. Only
//! the event says why; this keeps it for whoever sees the timeout.
//!
//! Must never: block the client's event callback for longer than a short mutex, or grow
//! without bound (the last [`KEPT`] distinct refusals are kept).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// How many distinct refusals are kept.
pub const KEPT: usize = 16;

/// A refusal the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The credentials were refused (wrong or missing user, password, token, key).
    Credentials(String),
    /// A publish or subscribe the user has no permission for (the server's text names the
    /// subject, e.g. `Permissions Violation for Publish to "creditflow.in.0.tick"`).
    Permission(String),
}

impl Refusal {
    pub fn text(&self) -> &str {
        match self {
            Refusal::Credentials(text) | Refusal::Permission(text) => text,
        }
    }
}

/// The refusals seen on a connection; cheap to clone (shared).
#[derive(Clone, Default, Debug)]
pub struct Refusals(Arc<Mutex<VecDeque<Refusal>>>);

impl Refusals {
    /// Records `event` if it is a refusal; returns it then.
    pub fn record(&self, event: &async_nats::Event) -> Option<Refusal> {
        let refusal = classify(event)?;
        if let Ok(mut kept) = self.0.lock() {
            kept.retain(|r| r != &refusal);
            kept.push_back(refusal.clone());
            while kept.len() > KEPT {
                kept.pop_front();
            }
        }
        Some(refusal)
    }

    fn kept(&self) -> Vec<Refusal> {
        self.0
            .lock()
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The latest permission refusal whose text contains `part` (a subject or part of one).
    pub fn permission(&self, part: &str) -> Option<String> {
        self.kept().into_iter().rev().find_map(|r| match r {
            Refusal::Permission(text) if text.contains(part) => Some(text),
            _ => None,
        })
    }

    /// What the server refused, in words an operator can act on; `None` when it refused
    /// nothing.
    pub fn explain(&self) -> Option<String> {
        self.explain_unless_in("")
    }

    /// As [`Refusals::explain`], leaving out the permission refusals `message` already quotes.
    fn explain_unless_in(&self, message: &str) -> Option<String> {
        let kept = self.kept();
        if let Some(Refusal::Credentials(text)) = kept
            .iter()
            .rev()
            .find(|r| matches!(r, Refusal::Credentials(_)))
        {
            return Some(format!(
                "the NATS server refused this client's credentials ({text}): check [nats] token, \
                 user and password, nkey_seed_file or creds_file (CREDITFLOW_NATS_*)"
            ));
        }
        let permissions: Vec<&str> = kept
            .iter()
            .filter_map(|r| match r {
                Refusal::Permission(text) if !message.contains(text.as_str()) => {
                    Some(text.as_str())
                }
                _ => None,
            })
            .collect();
        if permissions.is_empty() {
            return None;
        }
        Some(format!(
            "the NATS server refused: {}. The processor's NATS user lacks that permission \
             (config/nats-server.conf lists every permission the processor needs)",
            permissions.join("; ")
        ))
    }

    /// `message`, followed by what the server refused when it refused anything the message
    /// does not already say.
    pub fn annotate(&self, message: impl std::fmt::Display) -> String {
        let message = message.to_string();
        match self.explain_unless_in(&message) {
            Some(explained) => format!("{message}; {explained}"),
            None => message,
        }
    }
}

fn classify(event: &async_nats::Event) -> Option<Refusal> {
    use async_nats::{ClientError, Event, ServerError};
    match event {
        Event::ServerError(ServerError::AuthorizationViolation) => {
            Some(Refusal::Credentials("authorization violation".into()))
        }
        Event::ServerError(ServerError::Other(text)) => {
            let lower = text.to_lowercase();
            if lower.contains("permissions violation") {
                Some(Refusal::Permission(text.clone()))
            } else if lower.contains("authorization") || lower.contains("authentication") {
                Some(Refusal::Credentials(text.clone()))
            } else {
                None
            }
        }
        // A reconnect refused by the server for its credentials comes as a client error.
        Event::ClientError(ClientError::Other(text)) => {
            let lower = text.to_lowercase();
            (lower.contains("authorization") || lower.contains("authentication"))
                .then(|| Refusal::Credentials(text.clone()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::{ClientError, Event, ServerError};

    #[test]
    fn refusals_are_kept_and_explained() {
        let refusals = Refusals::default();
        assert_eq!(refusals.explain(), None);
        assert_eq!(refusals.annotate("timed out"), "timed out");
        assert_eq!(refusals.record(&Event::Connected), None);
        assert_eq!(
            refusals.record(&Event::ServerError(ServerError::Other("slow".into()))),
            None
        );
        let tick = "Permissions Violation for Publish to \"creditflow.in.0.tick\"";
        refusals.record(&Event::ServerError(ServerError::Other(tick.into())));
        refusals.record(&Event::ServerError(ServerError::Other(tick.into())));
        assert_eq!(refusals.permission(".tick").as_deref(), Some(tick));
        assert_eq!(refusals.permission("MSG.GET"), None);
        let annotated = refusals.annotate("a tick was not acknowledged");
        assert!(annotated.starts_with("a tick was not acknowledged; the NATS server refused: "));
        assert_eq!(
            annotated.matches("creditflow.in.0.tick").count(),
            1,
            "{annotated}"
        );
        // Not said twice when the message quotes it already.
        let quoted = format!("refused ({tick})");
        assert_eq!(refusals.annotate(&quoted), quoted);
        // Credentials refused outweigh permissions: nothing works without them.
        refusals.record(&Event::ClientError(ClientError::Other(
            "authorization violation".into(),
        )));
        let explained = refusals.explain().unwrap();
        assert!(
            explained.contains("refused this client's credentials"),
            "{explained}"
        );
        assert!(explained.contains("user and password"), "{explained}");
    }

    #[test]
    fn only_the_last_few_are_kept() {
        let refusals = Refusals::default();
        for i in 0..100 {
            refusals.record(&Event::ServerError(ServerError::Other(format!(
                "Permissions Violation for Publish to \"s.{i}\""
            ))));
        }
        assert_eq!(refusals.kept().len(), KEPT);
        assert!(refusals.permission("\"s.99\"").is_some());
        assert!(refusals.permission("\"s.0\"").is_none());
    }
}
