//! Test support: a real `nats-server -js` on a free port with its own temporary store, that a
//! test can kill (SIGKILL) and restart on the same port and store.
//!
//! Owns: the server child process and its directory. Used by integration tests and benches of
//! this workspace (it is in the library so every crate's tests share one implementation).
//!
//! Must never: touch the machine's own NATS server (127.0.0.1:4222) or leave a process behind
//! (the server is killed on drop).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` child with JetStream enabled.
pub struct NatsServer {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
    /// Keeps the store directory alive (and removes it on drop) when we made it.
    _dir: Option<tempfile::TempDir>,
    /// A config file of the caller's, copied with its JetStream `store_dir` pointed at the
    /// temporary store, and the environment it is started with (its `$VARIABLES`).
    config: Option<(PathBuf, Vec<(String, String)>)>,
}

/// Finds the `nats-server` binary: `NATS_SERVER` if set, else PATH, else Debian's /usr/sbin.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER") {
        return PathBuf::from(path);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let candidate = Path::new(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("nats-server")
}

/// The (major, minor) version of [`nats_server_binary`], from its `--version`.
pub fn nats_server_version() -> (u32, u32) {
    let output = Command::new(nats_server_binary())
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {} --version: {e}", nats_server_binary().display()));
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}

impl NatsServer {
    /// Starts a server on a free port with a fresh temporary store; waits until it accepts
    /// connections.
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temporary directory for the NATS store");
        let mut server = NatsServer {
            port: free_port(),
            store: dir.path().to_path_buf(),
            child: None,
            _dir: Some(dir),
            config: None,
        };
        server.restart();
        server
    }

    /// Starts a server with the config file `config` (its authorization and permissions as
    /// written; its `store_dir` replaced by a temporary store, its listen address by a free
    /// port), with `env` set for the `$VARIABLES` it references.
    pub fn start_with_config(config: &Path, env: &[(&str, &str)]) -> NatsServer {
        let dir = tempfile::tempdir().expect("temporary directory for the NATS store");
        let text = std::fs::read_to_string(config)
            .unwrap_or_else(|e| panic!("reading {}: {e}", config.display()));
        let store = dir.path().join("store");
        let text: String = text
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("store_dir") {
                    format!("  store_dir: {:?}", store.display().to_string())
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let copy = dir.path().join("nats-server.conf");
        std::fs::write(&copy, text).expect("writing the server config");
        let mut server = NatsServer {
            port: free_port(),
            store: dir.path().to_path_buf(),
            child: None,
            _dir: Some(dir),
            config: Some((
                copy,
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )),
        };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store(&self) -> &Path {
        &self.store
    }

    /// The config file the server runs with (a copy, for a test to rewrite before
    /// [`NatsServer::restart`]), when started with one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_ref().map(|(path, _)| path.as_path())
    }

    /// Kills the server with SIGKILL (no graceful shutdown) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port and store, waiting until it accepts connections.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// (Re)starts the server process without waiting for it.
    fn spawn(&mut self) {
        self.kill();
        let log = self.store.join("nats-server.log");
        let mut command = Command::new(nats_server_binary());
        match &self.config {
            Some((config, env)) => {
                command.arg("-c").arg(config).envs(env.iter().cloned());
            }
            None => {
                command.arg("-js").arg("-sd").arg(&self.store);
            }
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", nats_server_binary().display()));
        self.child = Some(child);
    }

    /// Waits until the server (started by [`NatsServer::spawn`]) accepts connections.
    fn wait_ready(&mut self) {
        let log = self.store.join("nats-server.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        // The port answering is not enough: JetStream must have recovered its store. The server
        // logs "Server is ready" once it accepts clients with JetStream enabled.
        loop {
            let ready = std::fs::read_to_string(&log)
                .map(|text| text.matches("Server is ready").count())
                .unwrap_or(0);
            let starts = std::fs::read_to_string(&log)
                .map(|text| text.matches("Starting nats-server").count())
                .unwrap_or(0);
            if starts > 0
                && ready >= starts
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "nats-server exited early ({status}); log: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not become ready on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of `nats-server` children on localhost (each on a free client and route
/// port, with a store of its own), that a test can kill node by node (SIGKILL) and restart.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes routed to each other, and waits until each accepts clients with
    /// JetStream on (the cluster's meta leader may still be being elected: a client's first
    /// JetStream request can need a retry; [`NatsCluster::wait_jetstream`]).
    pub fn start(size: usize) -> NatsCluster {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_urls: Vec<String> = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        let mut nodes = Vec::with_capacity(size);
        for (index, route) in routes.iter().enumerate() {
            let dir = tempfile::tempdir().expect("temporary directory for a node's store");
            let store = dir.path().join("store");
            let text = format!(
                "server_name: n{index}\n\
                 jetstream {{\n  store_dir: {store:?}\n}}\n\
                 cluster {{\n  name: creditflow_test\n  listen: 127.0.0.1:{route}\n  \
                 routes: [{}]\n}}\n",
                route_urls
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != index)
                    .map(|(_, url)| format!("{url:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                store = store.display().to_string(),
            );
            let config = dir.path().join("nats-server.conf");
            std::fs::write(&config, text).expect("writing a node's config");
            nodes.push(NatsServer {
                port: free_port(),
                store: dir.path().to_path_buf(),
                child: None,
                _dir: Some(dir),
                config: Some((config, Vec::new())),
            });
        }
        // Every node is started before any is waited for: a node's JetStream waits for the
        // others to form the cluster.
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_ready();
        }
        NatsCluster { nodes }
    }

    /// The client URLs of every node, for a client that fails over between them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    pub fn node(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    /// Waits until a JetStream request answers through `url` (a cluster elects its meta leader
    /// after the nodes connect).
    pub fn wait_jetstream(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let urls = self.urls();
        loop {
            let ready = runtime.block_on(async {
                let Ok(client) = async_nats::connect(urls[0].as_str()).await else {
                    return false;
                };
                // The account's JetStream info: an error (503) until the meta leader is elected.
                let reply = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request("$JS.API.INFO", bytes::Bytes::new()),
                )
                .await;
                matches!(reply, Ok(Ok(message))
                    if !String::from_utf8_lossy(&message.payload).contains("\"error\""))
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster's JetStream did not answer"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_starts_dies_and_comes_back_on_the_same_port() {
        let mut server = NatsServer::start();
        let port = server.port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        server.kill();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        server.restart();
        assert_eq!(server.port(), port);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }
}
