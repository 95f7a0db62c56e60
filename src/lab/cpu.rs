//! CPU time of the processes under test, read from `/proc/<pid>/stat`: what
//! a purchase costs the server and Redis, a figure that stays readable on a
//! noisy shared machine where requests per second do not.

use std::time::Duration;

use crate::infra::redis_cluster;
use crate::infra::redis_conn::RedisTarget;

/// The processes whose CPU the bench reads (when they run on this machine).
#[derive(Debug, Clone, Default)]
pub struct Pids {
    pub server: Option<u32>,
    /// Every node of a cluster (replicas apply each write too); empty when
    /// Redis is not on this machine.
    pub redis: Vec<u32>,
}

/// CPU time used so far by each process of [`Pids`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    pub server: Option<Duration>,
    pub redis: Option<Duration>,
}

impl Pids {
    pub fn sample(&self) -> CpuSample {
        CpuSample {
            server: self.server.and_then(cpu_time),
            redis: (!self.redis.is_empty())
                .then(|| self.redis.iter().map(|pid| cpu_time(*pid)).sum())
                .flatten(),
        }
    }
}

impl CpuSample {
    /// Microseconds of CPU per request of each process between `self` and
    /// `later`, over `requests` requests.
    pub fn per_request_us(&self, later: &CpuSample, requests: u64) -> (Option<f64>, Option<f64>) {
        let per = |before: Option<Duration>, after: Option<Duration>| {
            let used = after?.checked_sub(before?)?;
            (requests > 0).then(|| used.as_secs_f64() * 1e6 / requests as f64)
        };
        (per(self.server, later.server), per(self.redis, later.redis))
    }
}

/// The pids of `target`'s Redis processes on this machine: the server, or
/// every node of the cluster (listed by a seed's `CLUSTER NODES`).
pub async fn redis_pids(target: &RedisTarget) -> Vec<u32> {
    let urls = match target {
        RedisTarget::Single(url) => vec![url.clone()],
        RedisTarget::Cluster(seeds) => {
            let mut nodes = Vec::new();
            for seed in seeds {
                if let Some(listed) = listed_nodes(seed).await {
                    nodes = listed;
                    break;
                }
            }
            nodes
        }
    };
    let mut pids = Vec::new();
    for url in urls {
        pids.extend(redis_pid(&url).await);
    }
    pids
}

/// The node URLs a cluster's `seed` knows, itself included.
async fn listed_nodes(seed: &str) -> Option<Vec<String>> {
    Some(node_urls(&ask(seed, &["CLUSTER", "NODES"]).await?))
}

/// The text reply of the Redis at `url` to one command; `None` if it does
/// not answer.
async fn ask(url: &str, cmd: &[&str]) -> Option<String> {
    let mut redis = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    redis::cmd(cmd.first()?)
        .arg(&cmd[1..])
        .query_async(&mut redis)
        .await
        .ok()
}

/// `redis://ip:port` of each node of a `CLUSTER NODES` reply.
fn node_urls(nodes: &str) -> Vec<String> {
    redis_cluster::cluster_nodes(nodes)
        .into_iter()
        .map(|node| format!("redis://{}", node.addr))
        .collect()
}

/// The pid of the Redis at `url`, from its own `INFO server`, when it runs on
/// this machine (a loopback address): elsewhere the number would name some
/// unrelated local process.
pub async fn redis_pid(url: &str) -> Option<u32> {
    if !names_loopback(url) {
        return None;
    }
    let info = ask(url, &["INFO", "server"]).await?;
    let pid: u32 = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())?;
    // A Redis in a container or behind a tunnel reports a pid of another
    // namespace or machine: only a local redis-server process is read.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.starts_with("redis-server").then_some(pid)
}

/// Whether a `redis://[user:pass@]host[:port][/db]` URL names this machine.
fn names_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split('/').next().unwrap_or(rest);
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// User plus system time of `pid`, all its threads.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat, clock_ticks_per_second()?)
}

fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf reads a constant of the running system; no memory is
    // touched.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0)
}

/// `utime` and `stime` are fields 14 and 15; the command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after its `)`.
fn parse_stat(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_second as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_name() {
        let stat = "4242 (seckill (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_stat(stat, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn cluster_nodes_are_read_as_urls() {
        let nodes = "\
a 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:30004@40004,node-4 slave a 0 0 1 connected
c :0@0 master,noaddr - 0 0 2 disconnected
";
        assert_eq!(
            node_urls(nodes),
            ["redis://127.0.0.1:30001", "redis://127.0.0.1:30004"]
        );
    }

    #[test]
    fn only_a_local_redis_is_asked_for_its_pid() {
        assert!(names_loopback("redis://127.0.0.1:6379"));
        assert!(names_loopback("redis://:secret@localhost/0"));
        assert!(names_loopback("redis://[::1]:6379"));
        assert!(!names_loopback("redis://10.0.0.5:6379"));
        assert!(!names_loopback(
            "redis://user:127.0.0.1@cache.internal:6379"
        ));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spent = cpu_time(std::process::id()).expect("our own /proc entry");
        let before = CpuSample {
            server: Some(spent),
            redis: None,
        };
        let later = CpuSample {
            server: Some(spent + Duration::from_millis(10)),
            redis: Some(Duration::ZERO),
        };
        let (server, redis) = before.per_request_us(&later, 100);
        assert_eq!(server.map(f64::round), Some(100.0));
        assert_eq!(redis, None);
    }
}
