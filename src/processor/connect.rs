//! The processor's connections to NATS: the main one (its events reported to the metrics,
//! readiness and the rest of the processor), a plain one for the service, and the check of the
//! server they reach.
//!
//! Must never: print a credential, or leave a refusal by the server unexplained (a request the
//! server refuses only times out; [`explain_refusals`] says why).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use super::ProcessorError;
use crate::config::{Config, NatsAuth};
use crate::metrics::{Health, Metrics};
use crate::refusals::Refusals;

/// The connection options of `[nats]` (servers aside): name, timeouts, reconnecting forever
/// with backoff, authentication and TLS.
async fn connect_options(
    config: &Config,
    name: &str,
) -> Result<async_nats::ConnectOptions, ProcessorError> {
    let nats = &config.nats;
    let fail = |message: String| ProcessorError::Connect {
        urls: nats.urls.join(","),
        message,
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(nats.connect_timeout)
        .request_timeout(Some(nats.request_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .require_tls(nats.tls_required);
    let delay_max = nats.reconnect_delay_max;
    options = options.reconnect_delay_callback(move |attempts| {
        Duration::from_millis(50 * 2u64.saturating_pow(attempts.min(16) as u32)).min(delay_max)
    });
    options = match &nats.auth {
        NatsAuth::None => options,
        NatsAuth::Token(token) => options.token(token.clone()),
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::NkeySeedFile(path) => {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
            options.nkey(seed.trim().to_string())
        }
        NatsAuth::CredsFile(path) => options
            .credentials_file(path)
            .await
            .map_err(|e| fail(format!("reading {}: {e}", path.display())))?,
    };
    if let Some(ca) = &nats.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert_file, &nats.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

/// Connects `options` to the configured servers.
async fn connect_to(
    config: &Config,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, ProcessorError> {
    let nats = &config.nats;
    let fail = |message: String| ProcessorError::Connect {
        urls: nats.urls.join(","),
        message,
    };
    let addresses: Vec<async_nats::ServerAddr> = nats
        .urls
        .iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| fail(format!("{u}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    options
        .connect(addresses)
        .await
        .map_err(|e| fail(e.to_string()))
}

/// `error`, with what the NATS server refused this process when it refused anything: the
/// timeouts a missing permission or wrong credentials cause say nothing of the cause.
pub(super) fn explain_refusals(refusals: &Refusals, error: ProcessorError) -> ProcessorError {
    let message = error.to_string();
    let annotated = refusals.annotate(&message);
    if annotated == message {
        error
    } else {
        ProcessorError::Other(annotated)
    }
}

/// What the processor's connection reports to the rest of it, from the client's events.
#[derive(Clone)]
pub struct ConnectionEvents {
    pub metrics: Metrics,
    pub health: Health,
    /// Counts connections (the emitter resends unacked outputs of an older one first).
    pub epoch: Arc<AtomicU64>,
    /// The same count, for the reader to recreate its consumer on a reconnect.
    pub connections: Arc<tokio::sync::watch::Sender<u64>>,
    /// What the server refused (permissions, credentials), to explain the timeouts they cause.
    pub refusals: Refusals,
}

/// Connects with the configured authentication and TLS; reconnects forever, reporting to
/// `events`.
pub async fn connect(
    config: &Config,
    events: ConnectionEvents,
) -> Result<async_nats::Client, ProcessorError> {
    let options = connect_options(config, &config.nats.name)
        .await?
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                if let Some(refusal) = events.refusals.record(&event) {
                    tracing::error!(
                        refusal = refusal.text(),
                        "the NATS server refused a request; a permissions violation means \
                         the processor's user lacks that permission (config/nats-server.conf \
                         lists what it needs), an authorization violation that its credentials \
                         are wrong"
                    );
                    return;
                }
                match event {
                    async_nats::Event::Connected => {
                        let count = events.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                        events.connections.send_replace(count);
                        tracing::info!("connected to NATS");
                        events.metrics.nats_reconnects();
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting");
                        events.health.set_ready(false, "disconnected from NATS");
                    }
                    async_nats::Event::ServerError(error) => {
                        tracing::error!(%error, "the NATS server reported an error");
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        });
    connect_to(config, options).await
}

/// A second connection with the same settings, named `name` (the service's: its requests
/// never queue behind the input stream's deliveries).
pub async fn connect_plain(
    config: &Config,
    name: &str,
) -> Result<async_nats::Client, ProcessorError> {
    let options = connect_options(config, name)
        .await?
        .event_callback(|event| async move {
            tracing::info!(event = %event, "NATS event (service connection)");
        });
    connect_to(config, options).await
}

/// Step: the server checked (version, JetStream on, API level; `pipeline::server`), or a
/// refusal saying why creditflow cannot run against it.
pub(super) async fn check_server(
    config: &Config,
    client: &async_nats::Client,
) -> Result<crate::pipeline::server::Server, ProcessorError> {
    // The client stores the server's INFO just before it starts handling the connection (after
    // the connected event): a flush answered proves it has.
    let flushed = tokio::time::timeout(config.nats.request_timeout, client.flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        return Err(ProcessorError::Other(
            "the NATS server did not answer a flush after connecting".into(),
        ));
    }
    let info = client.server_info();
    let context = jetstream::ContextBuilder::new()
        .timeout(config.nats.request_timeout)
        .build(client.clone());
    let reported = crate::pipeline::server::reported_api_level(&context).await;
    let server = crate::pipeline::server::Server::check(&info.version, info.jetstream, reported)
        .map_err(ProcessorError::Other)?;
    tracing::info!(
        version = %server.version,
        api_level = server.api_level,
        level_from = server.level_from.name(),
        "NATS server checked"
    );
    // The lease bucket has the input stream's replicas (`processor::run`'s and `cluster`'s
    // `LeaseSettings`).
    if let Some(hazard) = server.lease_hazard(config.input.replicas) {
        tracing::warn!("{hazard}");
    }
    Ok(server)
}
