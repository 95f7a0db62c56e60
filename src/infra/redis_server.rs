//! A private `redis-server` child process: the embedded default of `serve` when
//! no `REDIS_URL` is given, and the throwaway Redis of the tests.
//!
//! The child listens on loopback only, never evicts keys (`noeviction`: an
//! evicted buyers hash, fence or lease would silently break the guarantees),
//! keeps nothing on disk unless asked ([`Fsync`]: the append-only file, which
//! `serve` turns on under its data directory), and dies with us: it is
//! killed on drop, and `PR_SET_PDEATHSIG` kills it if this process dies first.
//!
//! With a directory of its own (`dir`), the parent holds an exclusive `flock`
//! on `dir/seckill.lock` for the server's lifetime, and the child writes a
//! pidfile there. A second start on a directory in use fails (another live
//! seckill owns those files). A start that gets the lock knows any server
//! still running on the directory lost its parent (the lock dies with the
//! process), finds it by the pidfile (checked to be a `redis-server` whose
//! working directory is this one, not a recycled pid) and stops it cleanly
//! (SIGTERM: Redis flushes its append-only file and exits) before starting
//! a new one, so two servers never write one append-only file.
//! Linux delivers that signal when the *thread* that spawned the child exits, so
//! each child is spawned by a guardian thread that lives exactly as long as the
//! child does (it waits on it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How the append-only file reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// `fsync` before every reply: an acknowledged write survives a power
    /// cut.
    Always,
    /// `fsync` once a second: a power cut or kernel crash loses up to about
    /// the last second (2 s at worst); a killed process loses nothing.
    Everysec,
}

impl Fsync {
    fn as_redis(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Everysec => "everysec",
        }
    }
}

/// How to start a child.
#[derive(Debug, Clone)]
pub struct RedisServerOptions {
    /// The binary, `redis-server` on PATH by default.
    pub bin: String,
    /// Fixed port; `None` picks a free one.
    pub port: Option<u16>,
    /// Working directory; `None` makes (and later removes) a temporary one.
    pub dir: Option<PathBuf>,
    /// Turn on the append-only file, so a server restarted on the same `dir`
    /// comes back with its data. `None`: nothing on disk.
    pub append_only: Option<Fsync>,
    /// Redis `maxmemory` (`2gb`, `512mb`; `0`: no limit). With `noeviction`,
    /// a full Redis refuses writes (503s) instead of growing until the kernel
    /// kills it.
    pub maxmemory: String,
    /// Start as a Redis Cluster node (`--cluster-enabled yes`, its
    /// `nodes.conf` in `dir`). The cluster bus listens on port + 10000, so a
    /// port picked free is picked at or below 55535. A node that stops
    /// answering for 5 s is failed over. See [`super::redis_cluster`].
    pub cluster: bool,
}

impl Default for RedisServerOptions {
    fn default() -> Self {
        Self {
            bin: "redis-server".into(),
            port: None,
            dir: None,
            append_only: None,
            maxmemory: "0".into(),
            cluster: false,
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
    /// Set by the guardian when it has reaped the child.
    reaped: Arc<Mutex<bool>>,
    /// The directory's `flock`, held while the server runs.
    dir_lock: Option<std::fs::File>,
    /// How it was started, for [`RedisServer::restart`].
    options: RedisServerOptions,
}

/// How often the guardian checks whether its child has exited.
const REAP_POLL: Duration = Duration::from_millis(10);

/// How long a clean stop may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a server may take to answer PING: a long sale's append-only file
/// takes seconds to load, and Redis answers `-LOADING` until it is done.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

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
            None if options.cluster => free_cluster_port()?,
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
        // redis-server moves into `--dir` before opening the files named
        // after it: relative names would then point elsewhere.
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve redis dir {}", dir.display()))?;
        let log = dir.join("redis.log");
        let pidfile = dir.join("redis-server.pid");
        let dir_lock = lock_dir(&dir)?;
        stop_leftover(&pidfile, &dir)?;

        let mut command = Command::new(&options.bin);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--maxmemory")
            .arg(&options.maxmemory)
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if options.cluster {
            command
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.join("nodes.conf"))
                // A dead master is failed over after this long (the default
                // is 15 s); long enough that a busy test machine does not
                // fail over a live one.
                .args(["--cluster-node-timeout", "5000"]);
        }
        if let Some(fsync) = options.append_only {
            command.args(["--appendonly", "yes", "--appendfsync", fsync.as_redis()]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe syscalls.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // A process group of its own: a terminal's ctrl-c (sent to the
                // whole foreground group) reaches only us, so the persister can
                // drain into SQL before we stop Redis ourselves.
                libc::setpgid(0, 0);
                Ok(())
            });
        }

        let (started_tx, started_rx) = mpsc::channel();
        let (exited_tx, exited_rx) = mpsc::channel();
        let bin = options.bin.clone();
        let reaped = Arc::new(Mutex::new(false));
        let watch = Arc::clone(&reaped);
        let guardian = std::thread::Builder::new()
            .name(format!("redis-server-{port}"))
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = started_tx.send(Ok(child.id() as i32));
                    // Reaped under the lock `signal` takes: a pid is never
                    // signalled after it was reaped (and perhaps reused).
                    let status = loop {
                        {
                            let mut reaped = watch.lock().unwrap_or_else(|e| e.into_inner());
                            match child.try_wait() {
                                Ok(Some(status)) => {
                                    *reaped = true;
                                    break Ok(status);
                                }
                                Ok(None) => {}
                                Err(err) => {
                                    *reaped = true;
                                    break Err(err);
                                }
                            }
                        }
                        std::thread::sleep(REAP_POLL);
                    };
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
            reaped,
            dir_lock: Some(dir_lock),
            options: options.clone(),
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(status) = exited_rx.try_recv() {
                bail!(
                    "redis-server exited at start-up ({status}); its log says: {}",
                    tail(&log)
                );
            }
            // Our child's answer, not another server's that took the port
            // first (then ours exits on a bind error, which the next round
            // reports); and a PONG, which Redis withholds (-LOADING) until
            // its append-only file is loaded.
            if answering_pid(port) == Some(pid) && ping(port) {
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

    /// The child's process id (a restarted server has a new one).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Leaves the server running without a parent, as a parent killed before
    /// it could stop it would: the directory's lock is released, and the
    /// server is neither stopped nor reaped by us. For tests.
    pub fn abandon(mut self) {
        self.dir_lock = None;
        // Detached: the guardian keeps waiting on the child, and reaps it
        // whenever it exits.
        drop(self.guardian.take());
        self.owns_dir = false;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the child with SIGKILL (no shutdown, no save) and waits for it:
    /// a crash, for tests. Dropping the server stops it cleanly.
    pub fn kill(&mut self) {
        if let Some(guardian) = self.guardian.take() {
            self.signal(libc::SIGKILL);
            let _ = guardian.join();
        }
        // Dead, it no longer uses its files.
        self.dir_lock = None;
    }

    /// Kills the child (SIGKILL) if it still runs, and starts it again on
    /// the same port and directory, as a crashed server restarted by its
    /// supervisor: a cluster node rejoins its cluster from its `nodes.conf`.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut again = Self::start(RedisServerOptions {
            port: Some(self.port),
            dir: Some(self.dir.clone()),
            ..self.options.clone()
        })?;
        // The directory stays with whoever removes it at the end.
        again.owns_dir = std::mem::take(&mut self.owns_dir);
        again.options = self.options.clone();
        *self = again;
        Ok(())
    }

    /// Freezes the child (SIGSTOP): it keeps its connections open and
    /// answers nothing, as a hung or partitioned server would. For tests.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a [`RedisServer::pause`]d child (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends `signal` to the child unless it has been reaped already.
    fn signal(&self, signal: i32) {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if !*reaped {
            // SAFETY: plain syscall; `pid` is our own child, and unreaped
            // while we hold the lock the guardian reaps under.
            unsafe {
                libc::kill(self.pid, signal);
            }
        }
    }
}

impl Drop for RedisServer {
    /// A clean stop: SIGTERM lets Redis flush and fsync its append-only file
    /// and exit; SIGKILL only if it has not within `STOP_TIMEOUT`.
    fn drop(&mut self) {
        if self.guardian.is_some() {
            self.signal(libc::SIGTERM);
            // A paused child handles the SIGTERM only once it runs again.
            self.resume();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while !*self.reaped.lock().unwrap_or_else(|e| e.into_inner())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Takes `dir`'s exclusive lock, or fails if a live process holds it.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("seckill.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; released when the file closes,
    // which the kernel does for us if this process dies.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        bail!(
            "{} is in use by another running seckill (it holds {}); give each instance its own EMBEDDED_REDIS_DIR",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}

/// Stops a `redis-server` still running on this directory's files, named by
/// its pidfile: SIGTERM, then SIGKILL after 10 s. Called holding the
/// directory's lock, so that server's parent is gone. Anything else behind a
/// stale pidfile (a recycled pid: another program, or a redis-server working
/// elsewhere) is left alone.
fn stop_leftover(pidfile: &Path, dir: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    if pid <= 1
        || !comm.trim().starts_with("redis-server")
        || cwd.as_deref() != Some(dir)
        || !running(pid)
    {
        return Ok(());
    }
    tracing::warn!(
        pid,
        pidfile = %pidfile.display(),
        "a redis-server from an earlier run still uses these files; stopping it first"
    );
    let alive = || running(pid);
    // SAFETY: plain syscalls on a pid that /proc just named as redis-server.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive() {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive() {
        bail!(
            "redis-server {pid} (from {}) will not stop",
            pidfile.display()
        );
    }
    Ok(())
}

/// True while `pid` exists and is not a zombie: a dead process its parent has
/// not reaped (an orphan under an init that does not reap) holds no files.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(") ")?;
            after_name.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Highest client port of a cluster node: its bus listens on port + 10000.
pub const MAX_CLUSTER_PORT: u16 = 55_535;

/// A free loopback port at or below [`MAX_CLUSTER_PORT`] whose bus port
/// (+ 10000) is free too.
fn free_cluster_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = rand::random_range(20_000..=MAX_CLUSTER_PORT);
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port pair (port, port + 10000) at or below {MAX_CLUSTER_PORT}")
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

/// The process id of the Redis answering on `port` (`INFO server`), if one
/// answers.
fn answering_pid(port: u16) -> Option<i32> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        // Only a whole line: the number may still be arriving.
        if let Some((_, rest)) = text.split_once("process_id:")
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
    }
    None
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
