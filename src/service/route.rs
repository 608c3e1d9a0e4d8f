//! Requests for partitions another processor owns (`cluster.enabled`): every processor answers
//! the service's endpoints, and one that does not own the account's partition forwards the
//! request to the one that does, so a client (the CLI, the HTTP API's callers) needs no
//! knowledge of who owns what.
//!
//! ```text
//!  client ─► <prefix>.query.balance ─► any processor (queue group) ─ owns the partition? ─► answer
//!                                          │ no
//!                                          └─► <prefix>.owner.<p>.query.balance ─► its owner ─► answer
//!  client ◄──────────── the owner's reply (or its Nats-Service-Error), relayed ◄───────┘
//! ```
//!
//! Owns: the owners' subjects (`<prefix>.owner.<p>.query.<name>`, `<prefix>.owner.<p>.command.
//! <name>`), forwarding with retries while a partition changes hands, and the owner's side:
//! one subscription per owned partition, answered by the same [`Desk::handle_here`] as a
//! request that arrived directly, errors in the micro protocol's headers.
//!
//! Must never: forward twice (the owner answers from its own partitions or says `not_owner`;
//! it never forwards), wait past `service.wait_max`, or lose an error's code and reason on the
//! way back. A command forwarded again after a timeout is published again with the same
//! `Nats-Msg-Id`, so it is stored and applied once like any retry.
//!
//! Invariants: a partition's owner subjects are served by the processor whose generation owns
//! it, and only while it runs (a partition changing hands has no responder for a moment: the
//! forwarder retries every [`RETRY_EVERY`] until its deadline, then answers 503
//! `not_answered`).

use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use bytes::Bytes;
use futures::StreamExt;

use super::{Desk, ServiceError};
use crate::engine::query::{TopConsumers, TypeTotals};

/// How often a forwarder asks again while a partition has no owner answering.
pub const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The internal endpoint of one partition's totals (the HTTP API's deployment totals ask each
/// partition's owner).
pub const TOTALS: &str = "totals";

/// One partition's share of the deployment totals, as its owner sends it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PartitionTotals {
    pub accounts: u64,
    pub types: Vec<TypeTotals>,
    pub top: Vec<TopConsumers>,
    pub as_of_seq: u64,
}

/// The subject a partition's owner answers `name` on.
pub fn owner_subject(prefix: &str, partition: u32, command: bool, name: &str) -> String {
    let kind = if command { "command" } else { "query" };
    format!("{prefix}.owner.{partition}.{kind}.{name}")
}

/// Forwards requests to the owners of other partitions.
#[derive(Clone, Debug)]
pub struct Router {
    /// The service's subject prefix.
    prefix: String,
    client: Option<async_nats::Client>,
}

impl Router {
    /// A router for the service at `prefix`, without a connection yet ([`Router::on`]).
    pub fn new(prefix: &str) -> Router {
        Router {
            prefix: prefix.to_string(),
            client: None,
        }
    }

    /// The same router on `client`'s connection.
    pub fn on(self, client: async_nats::Client) -> Router {
        Router {
            client: Some(client),
            ..self
        }
    }

    /// Sends `payload` to the owner of `partition` as a request of endpoint `name`, and
    /// relays its answer; retries while nobody owns it (or its owner no longer does) until
    /// `wait` has passed.
    pub async fn forward(
        &self,
        partition: u32,
        name: &str,
        command: bool,
        payload: &[u8],
        wait: Duration,
    ) -> Result<String, ServiceError> {
        let Some(client) = &self.client else {
            return Err(ServiceError::new(
                500,
                "internal",
                "a router without a connection",
            ));
        };
        let subject = owner_subject(&self.prefix, partition, command, name);
        let payload = Bytes::copy_from_slice(payload);
        let deadline = WallInstant::now() + wait;
        let unanswered = || {
            ServiceError::unavailable(
                "not_answered",
                format!(
                    "partition {partition}'s owner did not answer within {wait:?} (it may be \
                     changing hands); retry"
                ),
            )
        };
        loop {
            let left = deadline.saturating_duration_since(WallInstant::now());
            if left.is_zero() {
                return Err(unanswered());
            }
            let request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(left));
            match client.send_request(subject.clone(), request).await {
                Ok(reply) => match relayed_error(&reply) {
                    None => {
                        return String::from_utf8(reply.payload.to_vec()).map_err(|_| {
                            ServiceError::new(500, "internal", "an owner's reply is not UTF-8")
                        })
                    }
                    Some(error) if error.reason == "not_owner" => {}
                    Some(error) => return Err(error),
                },
                Err(error)
                    if error.kind() == async_nats::client::RequestErrorKind::NoResponders => {}
                Err(error) if error.kind() == async_nats::client::RequestErrorKind::TimedOut => {
                    return Err(unanswered())
                }
                Err(error) => {
                    tracing::debug!(%error, %subject, "forwarding a request failed; retrying");
                }
            }
            tokio::time::sleep(
                RETRY_EVERY.min(deadline.saturating_duration_since(WallInstant::now())),
            )
            .await;
        }
    }

    /// `partition`'s totals from its owner.
    pub async fn totals(
        &self,
        partition: u32,
        wait: Duration,
    ) -> Result<PartitionTotals, ServiceError> {
        let text = self.forward(partition, TOTALS, false, b"{}", wait).await?;
        serde_json::from_str(&text).map_err(|e| {
            ServiceError::new(
                500,
                "internal",
                format!("partition {partition}'s totals: {e}"),
            )
        })
    }
}

/// The error an owner answered with, if it did.
fn relayed_error(reply: &async_nats::Message) -> Option<ServiceError> {
    let headers = reply.headers.as_ref()?;
    let code = headers.get(async_nats::service::NATS_SERVICE_ERROR_CODE)?;
    let code = code.as_str().parse::<u16>().unwrap_or(500);
    let status = headers
        .get(async_nats::service::NATS_SERVICE_ERROR)
        .map_or("", |s| s.as_str());
    Some(ServiceError::relayed(code, status))
}

/// Answers the requests forwarded to this processor for `partitions` until the returned tasks
/// are aborted (the generation's service stops).
pub async fn serve_owned(
    client: async_nats::Client,
    desk: Arc<Desk>,
    prefix: &str,
    partitions: &[u32],
) -> Result<Vec<tokio::task::JoinHandle<()>>, async_nats::SubscribeError> {
    let mut tasks = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        let owned = format!("{prefix}.owner.{partition}.");
        let mut requests = client.subscribe(format!("{owned}>")).await?;
        let (client, desk) = (client.clone(), desk.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let Some(reply_to) = request.reply.clone() else {
                    continue;
                };
                let (client, desk) = (client.clone(), desk.clone());
                let endpoint = request.subject.strip_prefix(owned.as_str()).map(str::to_string);
                tokio::spawn(async move {
                    let answer = match endpoint.as_deref().and_then(|e| e.split_once('.')) {
                        Some(("query", TOTALS)) => desk.partition_totals_here(partition).await,
                        Some((kind, name)) => match super::endpoint_name(kind == "command", name) {
                            Some(name) => {
                                desk.handle_here(name, kind == "command", &request.payload)
                                    .await
                            }
                            None => Err(ServiceError::bad_request(
                                "bad_request",
                                format!("no endpoint {kind}.{name}"),
                            )),
                        },
                        None => Err(ServiceError::bad_request("bad_request", "no endpoint")),
                    };
                    let sent = match answer {
                        Ok(body) => client.publish(reply_to, body.into()).await,
                        Err(error) => {
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert(
                                async_nats::service::NATS_SERVICE_ERROR,
                                error.status().as_str(),
                            );
                            headers.insert(
                                async_nats::service::NATS_SERVICE_ERROR_CODE,
                                error.code.to_string().as_str(),
                            );
                            client
                                .publish_with_headers(reply_to, headers, Bytes::new())
                                .await
                        }
                    };
                    if let Err(error) = sent {
                        tracing::debug!(%error, partition, "replying to a forwarded request failed");
                    }
                });
            }
        }));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_subjects_keep_queries_and_commands_apart() {
        assert_eq!(
            owner_subject("creditflow.svc", 7, false, "balance"),
            "creditflow.svc.owner.7.query.balance"
        );
        assert_eq!(
            owner_subject("creditflow.svc", 0, true, "grant"),
            "creditflow.svc.owner.0.command.grant"
        );
    }
}
