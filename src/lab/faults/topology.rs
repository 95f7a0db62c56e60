//! What one cell of the fault lab runs on, all on loopback and all its own:
//! a private redis-server (or a private Redis Cluster), two or more
//! `seckill serve` instances on one SQLite file, and between each instance
//! and a single Redis its own [`FaultProxy`].
//!
//! Everything it starts is undone when it is dropped, whatever state a
//! fault left it in: a stopped process is sent SIGCONT before it is
//! stopped, so a cell that fails, is interrupted or panics leaves no
//! process, paused or running, and no directory behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::proxy::{FaultProxy, Link};
use crate::infra::redis_cluster::{RedisCluster, RedisClusterOptions};
use crate::infra::redis_conn::{RedisTarget, Timeouts};
use crate::infra::redis_server::{Fsync, RedisServer, RedisServerOptions};
use crate::lab::loadgen::Target;
use crate::lab::scratch::{TempDir, stop_child, wait_ready};

/// Where libfaketime's preload library sits once Debian's `faketime`
/// package is installed.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Redis as a cell needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// One redis-server, with its append-only file fsynced as given (`None`:
    /// nothing on disk), each instance reaching it through its own proxy.
    Single(Option<Fsync>),
    /// A Redis Cluster of 3 masters with a replica each, reached directly
    /// (a cluster client follows the nodes' own addresses).
    Cluster,
}

/// The shape of a cell's topology.
#[derive(Debug, Clone)]
pub struct Shape {
    pub store: Store,
    pub instances: usize,
    /// Settings every instance gets, beyond its addresses.
    pub env: Vec<(String, String)>,
    /// The instance whose wall clock libfaketime moves (clock-jump).
    pub fake_clock: Option<usize>,
    /// The `seckill` binary to start.
    pub bin: PathBuf,
    /// Draws each proxy's jitter.
    pub seed: u64,
}

/// The running topology.
pub struct Topology {
    /// Dropped first (fields drop in order): no instance outlives its Redis.
    pub instances: Vec<Instance>,
    pub proxies: Vec<FaultProxy>,
    pub redis: Redis,
    /// Redis as the lab itself reads it, directly, never through a proxy.
    pub direct: RedisTarget,
    /// The file libfaketime reads the fake clock's offset from.
    pub clock_file: Option<PathBuf>,
    dir: TempDir,
}

/// The private Redis, single or clustered.
pub enum Redis {
    /// `None` only while a restart is under way.
    Single(Option<RedisServer>),
    Cluster(RedisCluster),
}

impl Topology {
    pub async fn start(shape: &Shape) -> anyhow::Result<Self> {
        if shape.instances < 2 {
            bail!("the fault lab runs at least two instances");
        }
        let dir = TempDir::new("faults")?;
        let (redis, direct) = match shape.store {
            Store::Single(append_only) => {
                let redis_dir = dir.0.join("redis");
                std::fs::create_dir_all(&redis_dir)?;
                let server = RedisServer::start(RedisServerOptions {
                    dir: Some(redis_dir),
                    append_only,
                    ..RedisServerOptions::default()
                })?;
                let url = server.url();
                (Redis::Single(Some(server)), RedisTarget::Single(url))
            }
            Store::Cluster => {
                let cluster = tokio::task::spawn_blocking(|| {
                    RedisCluster::start(RedisClusterOptions::default())
                })
                .await??;
                let urls = cluster.urls();
                (Redis::Cluster(cluster), RedisTarget::Cluster(urls))
            }
        };
        // Started empty just now: known fresh, so the instances take their
        // worker numbers without waiting out a missing horizon.
        let conn = direct.connect(patient()).await?;
        crate::orders::lease::seed_fresh_horizons(&conn).await?;

        let mut proxies = Vec::new();
        if let RedisTarget::Single(url) = &direct {
            let upstream = redis_addr(url)?;
            for n in 0..shape.instances {
                proxies.push(FaultProxy::start(upstream, shape.seed.wrapping_add(n as u64)).await?);
            }
        }
        let clock_file = match shape.fake_clock {
            Some(_) => {
                if !Path::new(LIBFAKETIME).exists() {
                    bail!("clock-jump needs libfaketime ({LIBFAKETIME}): apt-get install faketime");
                }
                let file = dir.0.join("faketime.rc");
                std::fs::write(&file, "+0")?;
                Some(file)
            }
            None => None,
        };
        let database = format!("sqlite://{}", dir.0.join("orders.db").display());
        let mut topology = Self {
            instances: Vec::new(),
            proxies,
            redis,
            direct: direct.clone(),
            clock_file,
            dir,
        };
        for n in 0..shape.instances {
            let mut env = shape.env.clone();
            env.push(("DATABASE_URL".into(), database.clone()));
            match (&direct, topology.proxies.get(n)) {
                (RedisTarget::Single(_), Some(proxy)) => {
                    env.push(("REDIS_URL".into(), proxy.url()))
                }
                (RedisTarget::Cluster(urls), _) => {
                    env.push(("REDIS_CLUSTER_URLS".into(), urls.join(",")))
                }
                (RedisTarget::Single(_), None) => bail!("instance {n} has no proxy"),
            }
            if shape.fake_clock == Some(n) {
                env.extend(topology.fake_clock_env());
            }
            let log = topology.dir.0.join(format!("instance-{n}.log"));
            let instance = Instance::start(&shape.bin, env, log, direct.clone()).await?;
            topology.instances.push(instance);
        }
        Ok(topology)
    }

    /// The instances' targets, in order: worker `n` of the load sends to
    /// instance `n % len`.
    pub fn targets(&self) -> Vec<Target> {
        self.instances.iter().map(|i| i.target.clone()).collect()
    }

    /// What puts a process on the fake clock: libfaketime preloaded,
    /// reading its offset from the clock file.
    fn fake_clock_env(&self) -> Vec<(String, String)> {
        let Some(file) = &self.clock_file else {
            return Vec::new();
        };
        vec![
            ("LD_PRELOAD".into(), LIBFAKETIME.into()),
            ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
            // Re-read the offset once a second: reading it at every clock
            // call would make the instance slow, not skewed.
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            // The wall clock steps; the monotonic clock does not, as on a
            // host whose NTP steps its time.
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    /// Seconds the fake clock is off this machine's, read by `date +%s`
    /// started as the instance was (the same preload, file and settings).
    pub async fn fake_clock_offset(&self) -> anyhow::Result<i64> {
        anyhow::ensure!(
            self.clock_file.is_some(),
            "no instance runs on a fake clock"
        );
        let output = tokio::process::Command::new("date")
            .arg("+%s")
            .envs(self.fake_clock_env())
            .output()
            .await
            .context("cannot run date")?;
        let faked: i64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .context("date printed no number")?;
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        Ok(faked - real)
    }

    /// The single Redis's process id.
    pub fn redis_pid(&self) -> Option<u32> {
        match &self.redis {
            Redis::Single(Some(server)) => Some(server.pid()),
            _ => None,
        }
    }

    /// kill -9 the single Redis and start it again on its own files.
    pub async fn restart_redis(&mut self) -> anyhow::Result<()> {
        let Redis::Single(slot) = &mut self.redis else {
            bail!("a cluster's nodes restart one by one");
        };
        let mut server = slot.take().context("Redis is already restarting")?;
        let server = tokio::task::spawn_blocking(move || {
            server.restart()?;
            Ok::<_, anyhow::Error>(server)
        })
        .await??;
        *slot = Some(server);
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Heal every link first: an instance stopping drains its persister
        // through its proxy, and a blackhole would hold it to its timeout.
        for proxy in &self.proxies {
            proxy.set(Link::Up);
        }
        // A paused Redis would take a clean stop's whole timeout.
        match &self.redis {
            Redis::Single(Some(server)) => server.resume(),
            Redis::Single(None) => {}
            Redis::Cluster(cluster) => cluster.resume_all(),
        }
        // The fields then drop in order: instances, proxies, Redis, the
        // directory.
    }
}

/// Five seconds for the lab's own Redis calls.
pub(super) fn patient() -> Timeouts {
    Timeouts {
        response: Duration::from_secs(5),
        connect: Duration::from_secs(5),
    }
}

fn redis_addr(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = url
        .strip_prefix("redis://")
        .with_context(|| format!("not a redis:// URL: {url}"))?;
    rest.trim_end_matches('/')
        .parse()
        .with_context(|| format!("not an address: {url}"))
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: a plain syscall on a process of our own.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Stops `pid` (SIGSTOP) and waits, at most a second, until the kernel
/// shows it stopped: the signal is delivered asynchronously. Whether it was
/// seen stopped.
pub async fn stop(pid: u32) -> bool {
    signal(pid, libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if process_state(pid) == Some('T') {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// The state letter of `/proc/<pid>/stat` (`T`: stopped), `None` when it is
/// gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses, which may hold spaces.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// One `seckill serve` child.
pub struct Instance {
    child: Child,
    bin: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    pub target: Target,
}

impl Instance {
    async fn start(
        bin: &Path,
        mut env: Vec<(String, String)>,
        log: PathBuf,
        redis: RedisTarget,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        env.push(("LISTEN".into(), format!("127.0.0.1:{port}")));
        let child = spawn(bin, &env, &log)?;
        let target =
            Target::from_url(&format!("http://127.0.0.1:{port}"), None, Some(redis)).await?;
        let mut instance = Self {
            child,
            bin: bin.to_owned(),
            env,
            log,
            target,
        };
        instance.wait_ready().await?;
        Ok(instance)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// kill -9, and reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same command again, on the same port, until ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.child = spawn(&self.bin, &self.env, &self.log)?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        wait_ready(
            &mut self.child,
            &self.target,
            Duration::from_secs(60),
            "an instance",
        )
        .await
        .with_context(|| format!("starting an instance (its log: {})", self.log.display()))
    }
}

fn spawn(bin: &Path, env: &[(String, String)], log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = Command::new(bin);
    // Only what the lab sets, on the defaults for the rest: a setting of
    // this shell's (or of the server that runs the lab: `REDLOCK_URLS`,
    // `WORKER_ID`, `PERSISTER`, `REDIS_WAIT_REPLICAS`, ...) would change
    // every verdict, and no cell's command would say so.
    command.env_clear();
    for kept in ["PATH", "HOME", "TMPDIR", "LANG"] {
        if let Some(value) = std::env::var_os(kept) {
            command.env(kept, value);
        }
    }
    command
        .arg("serve")
        .env(
            "RUST_LOG",
            std::env::var("FAULTS_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    command
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

impl Drop for Instance {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
