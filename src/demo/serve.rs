//! `creditflow demo --serve`: the dashboard, the HTTP read API and the metrics of the running
//! demo, on the same HTTP server (`metrics::serve_listener`) and the same `Desk` as `run`, so a
//! newcomer sees balances burn down without NATS.
//!
//! Owns: binding the address (refused off loopback without a token, as `run` refuses), the
//! I/O runtime the server runs on, readiness (ready from the start: the demo has nothing to
//! recover), and the stop flag Ctrl-C or SIGTERM sets.
//!
//! Must never: reach the state but through the shards' question queues, like `run`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::Receiver;

use crate::catalog::Catalog;
use crate::metrics::{Health, Metrics};
use crate::pipeline::question::{question_queues, Question};

/// What `--serve` asks for.
#[derive(Clone, Debug)]
pub struct DemoServe {
    pub listen: SocketAddr,
    /// Bearer token of `/api/`; required off loopback.
    pub token: Option<String>,
    /// Messages per second (0: as fast as the shards go), so the balances burn down at a pace a
    /// person can watch.
    pub rate: u64,
    /// After the workload, keep serving until stopped.
    pub keep_running: bool,
}

/// Questions each shard queues at most (as `service.questions_max` by default).
const QUESTIONS_MAX: usize = 1024;
/// Charges each partition keeps for the statement and the dashboard's chart (as
/// `service.statement_entries_max` by default).
pub const STATEMENT_ENTRIES: usize = 16_384;

/// The running server.
pub struct Served {
    pub address: SocketAddr,
    pub metrics: Metrics,
    /// Set by Ctrl-C or SIGTERM.
    pub stop: Arc<AtomicBool>,
    questions: Vec<crossbeam::channel::Sender<Question>>,
    partitions: u32,
    runtime: tokio::runtime::Runtime,
}

impl Served {
    /// Binds and starts serving; returns each shard's question queue.
    pub fn start(
        serve: &DemoServe,
        catalog: Arc<Catalog>,
        partitions: u32,
        shards: usize,
    ) -> std::io::Result<(Served, Vec<Receiver<Question>>)> {
        let token = serve.token.clone().filter(|t| !t.is_empty());
        if !serve.listen.ip().is_loopback() && token.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "--serve {}: not a loopback address, so the API needs --token (or serve on \
                     127.0.0.1)",
                    serve.listen
                ),
            ));
        }
        let listener = std::net::TcpListener::bind(serve.listen).map_err(|error| {
            std::io::Error::new(error.kind(), format!("--serve {}: {error}", serve.listen))
        })?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("demo-http")
            .enable_all()
            .build()?;
        let metrics = Metrics::new(partitions, shards);
        let health = Health::new();
        health.set_ready(true, "");
        let (senders, receivers) = question_queues(shards, QUESTIONS_MAX);
        let api = crate::http_api::Api::new(token, metrics.clone());
        api.attach(Arc::new(crate::service::Desk {
            catalog,
            settings: crate::service::Settings {
                subject_prefix: "creditflow.svc".into(),
                queue_group: "creditflow".into(),
                wait_max: Duration::from_secs(5),
                input_prefix: "creditflow.in".into(),
                partitions,
                publish_timeout: Duration::from_secs(5),
            },
            questions: senders.clone(),
            layout: Arc::new(crate::pipeline::Layout::all(partitions, shards)),
            router: None,
            health: health.clone(),
            jetstream: None,
            post: None,
            metrics: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let server = crate::metrics::serve_listener(
            listener,
            metrics.clone(),
            health,
            Some(api),
            std::future::pending(),
        );
        runtime.spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "the demo's HTTP server failed");
            }
        });
        let flag = stop.clone();
        runtime.spawn(async move {
            stopped().await;
            flag.store(true, Ordering::Relaxed);
        });
        Ok((
            Served {
                address,
                metrics,
                stop,
                questions: senders,
                partitions,
                runtime,
            },
            receivers,
        ))
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits until every partition has applied every message through `seq` (the dispatcher
    /// flushed), asking each one through its shard's queue as the API does; false if a shard
    /// did not answer within `timeout`.
    pub fn wait_applied(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let (answered, answers) = crossbeam::channel::unbounded::<()>();
        for partition in 0..self.partitions {
            // Every partition is the demo's: partition p is on shard p % shards.
            let shard = partition as usize % self.questions.len();
            let answered = answered.clone();
            let question = Question {
                partition,
                min_seq: seq,
                needs: crate::pipeline::question::Needs::State,
                deadline,
                answer: Box::new(move |_| {
                    let _ = answered.send(());
                }),
            };
            if self.questions[shard]
                .send_deadline(question, deadline)
                .is_err()
            {
                return false;
            }
        }
        (0..self.partitions).all(|_| answers.recv_deadline(deadline).is_ok())
    }

    /// Stops the server (open connections are dropped).
    pub fn shutdown(self) {
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
