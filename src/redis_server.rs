//! A private `redis-server` child process: the embedded default of `serve` when
//! no `REDIS_URL` is given, and the throwaway Redis of the tests.
//!
//! The child listens on loopback only, keeps nothing on disk unless asked
//! (`append_only`, which the Redis-restart test uses), and dies with us: it is
//! killed on drop, and `PR_SET_PDEATHSIG` kills it if this process dies first.
//! Linux delivers that signal when the *thread* that spawned the child exits, so
//! each child is spawned by a guardian thread that lives exactly as long as the
//! child does (it waits on it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How to start a child.
#[derive(Debug, Clone)]
pub struct RedisServerOptions {
    /// The binary, `redis-server` on PATH by default.
    pub bin: String,
    /// Fixed port; `None` picks a free one.
    pub port: Option<u16>,
    /// Working directory; `None` makes (and later removes) a temporary one.
    pub dir: Option<PathBuf>,
    /// Turn on the append-only file with fsync on every write, so a killed
    /// server restarted on the same `dir` comes back with its data.
    pub append_only: bool,
}

impl Default for RedisServerOptions {
    fn default() -> Self {
        Self {
            bin: "redis-server".into(),
            port: None,
            dir: None,
            append_only: false,
        }
    }
}

/// A running child. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pid: i32,
    port: u16,
    dir: PathBuf,
    owns_dir: bool,
    guardian: Option<JoinHandle<()>>,
}

/// How long a fresh server may take to answer PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisServer {
    /// Starts a child and waits until it answers PING.
    pub fn start(options: RedisServerOptions) -> anyhow::Result<Self> {
        // A port picked free can be taken by someone else before the child binds
        // it; a few tries make that race irrelevant.
        let attempts = if options.port.is_some() { 1 } else { 3 };
        let mut last_error = None;
        for _ in 0..attempts {
            match Self::try_start(&options) {
                Ok(server) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn try_start(options: &RedisServerOptions) -> anyhow::Result<Self> {
        let port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        let (dir, owns_dir) = match &options.dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "seckill-redis-{}-{port}-{}",
                    std::process::id(),
                    uuid::Uuid::new_v4().simple()
                ));
                (dir, true)
            }
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create redis dir {}", dir.display()))?;
        let log = dir.join("redis.log");

        let mut command = Command::new(&options.bin);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if options.append_only {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        // SAFETY: the closure runs in the forked child before exec and only makes
        // one async-signal-safe syscall.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }

        let (started_tx, started_rx) = mpsc::channel();
        let (exited_tx, exited_rx) = mpsc::channel();
        let bin = options.bin.clone();
        let guardian = std::thread::Builder::new()
            .name(format!("redis-server-{port}"))
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = started_tx.send(Ok(child.id() as i32));
                    let status = child.wait();
                    let _ = exited_tx.send(status.map(|s| s.to_string()).unwrap_or_default());
                }
                Err(err) => {
                    let _ = started_tx.send(Err(err));
                }
            })
            .context("cannot spawn the redis-server guardian thread")?;
        let pid = match started_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => bail!(
                "`{bin}` not found: install Redis (e.g. `apt-get install redis-server`) or set REDIS_URL to an existing Redis"
            ),
            Ok(Err(err)) => return Err(err).with_context(|| format!("cannot start `{bin}`")),
            Err(_) => bail!("redis-server guardian thread died"),
        };
        let server = Self {
            pid,
            port,
            dir,
            owns_dir,
            guardian: Some(guardian),
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(status) = exited_rx.try_recv() {
                bail!(
                    "redis-server exited at start-up ({status}); its log says: {}",
                    tail(&log)
                );
            }
            if ping(port) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {port} did not answer PING within {STARTUP_TIMEOUT:?}; its log says: {}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the child with SIGKILL (no shutdown, no save) and waits for it.
    pub fn kill(&mut self) {
        if let Some(guardian) = self.guardian.take() {
            // SAFETY: plain syscall; `pid` is our own child, still unreaped
            // because the guardian is the one that reaps it.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
            let _ = guardian.join();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// True when something on `port` answers a RESP PING with PONG.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
