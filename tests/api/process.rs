//! The real `seckill` binary as a child process, for the tests that need
//! what only a process has: `kill -9`, SIGSTOP, a working directory of its
//! own. One harness: start it with a clean environment, wait for `/readyz`,
//! and kill it on drop.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;

/// A running `seckill serve`. Killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    port: u16,
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts the binary on a free port with only `PATH`, `LISTEN`,
    /// `RUST_LOG=warn` and `env` set, in `dir` (or here), and waits until
    /// `/readyz` answers 200.
    pub async fn start(env: &[(&str, &str)], dir: Option<&Path>) -> Self {
        Self::start_on(free_port(), env, dir).await
    }

    /// The same on a given port: a restart answers where its clients are.
    pub async fn start_on(port: u16, env: &[(&str, &str)], dir: Option<&Path>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_seckill"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let server = Self {
            child: command.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            port,
        };
        server.wait_ready().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits until `/readyz` answers 200 (30 s at most).
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            client.get(format!("{}/readyz", self.base)).send().await,
            Ok(r) if r.status() == 200
        ) {
            assert!(Instant::now() < deadline, "server did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no drain, no lease release; returns once it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Buys on `server` with 16 clients for `run_for` (see [`Load`]), then kills
/// the server with SIGKILL in the middle of that load. Returns the order ids
/// that got a 201 before the kill.
pub async fn buy_until_killed(
    server: &mut Server,
    sales: &[(String, &'static str)],
    run_for: Duration,
) -> HashSet<String> {
    let mut load = Load::default();
    load.on(&server.base, sales, "k");
    tokio::time::sleep(run_for).await;
    server.kill();
    load.stop().await.into_iter().map(|(_, id)| id).collect()
}

/// Purchases under way, until [`Load::stop`]: 16 clients per server, each
/// purchase on the next of `sales` (item, strategy) in turn and from a new
/// user. A client whose request fails (its server gone) stops.
#[derive(Default)]
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Each 201's order id, with when its request was sent.
    answered: Arc<Mutex<Vec<(Instant, String)>>>,
    clients: JoinSet<()>,
}

impl Load {
    /// Adds 16 clients buying on `base`, their users named after `tag`.
    pub fn on(&mut self, base: &str, sales: &[(String, &'static str)], tag: &str) {
        let client = reqwest::Client::new();
        let sales: Arc<[(String, &'static str)]> = sales.into();
        for worker in 0..16 {
            let (client, base, sales, answered, stop) = (
                client.clone(),
                base.to_owned(),
                Arc::clone(&sales),
                Arc::clone(&self.answered),
                Arc::clone(&self.stop),
            );
            let tag = tag.to_owned();
            self.clients.spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (item, strategy) = &sales[n % sales.len()];
                    let url = format!(
                        "{base}/api/items/{item}/purchase?user_id={tag}{worker}x{n}&strategy={strategy}"
                    );
                    let sent = Instant::now();
                    let Ok(response) = client.post(url).send().await else {
                        break;
                    };
                    if response.status() == 201 {
                        let Ok(body) = response.json::<Value>().await else {
                            break;
                        };
                        let id = body["order_id"].as_str().unwrap().to_owned();
                        answered.lock().unwrap().push((sent, id));
                    }
                }
            });
        }
    }

    /// Stops every client (a request under way is answered first) and
    /// returns the 201s' order ids, repeats kept, with when each was sent.
    pub async fn stop(mut self) -> Vec<(Instant, String)> {
        self.stop.store(true, Ordering::Relaxed);
        while self.clients.join_next().await.is_some() {}
        std::mem::take(&mut *self.answered.lock().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
