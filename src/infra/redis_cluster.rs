//! A private Redis Cluster on loopback: `redis-server` children started with
//! `--cluster-enabled yes` (see [`RedisServerOptions::cluster`]) and joined by
//! `redis-cli --cluster create`, each master with its replicas. For tests,
//! and for trying `REDIS_CLUSTER_URLS` on one machine. Nodes are killed with
//! the cluster when it is dropped.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::redis_server::{RedisServer, RedisServerOptions};

/// How long the cluster may take to agree on its slots and sync replicas.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster's shape.
#[derive(Debug, Clone)]
pub struct RedisClusterOptions {
    /// The `redis-server` binary; `redis-cli` is looked up beside it on PATH.
    pub bin: String,
    pub masters: usize,
    pub replicas_per_master: usize,
}

impl Default for RedisClusterOptions {
    fn default() -> Self {
        Self {
            bin: "redis-server".into(),
            masters: 3,
            replicas_per_master: 1,
        }
    }
}

/// The running nodes, by client port.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: BTreeMap<u16, RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, forms the cluster and waits until every node serves
    /// all 16384 slots and every replica is in sync with its master.
    pub fn start(options: RedisClusterOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(options.masters >= 3, "a Redis Cluster needs 3 masters");
        let count = options.masters * (1 + options.replicas_per_master);
        let mut nodes = BTreeMap::new();
        for _ in 0..count {
            let node = RedisServer::start(RedisServerOptions {
                bin: options.bin.clone(),
                cluster: true,
                ..RedisServerOptions::default()
            })?;
            nodes.insert(node.port(), node);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in nodes.keys() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create
            .arg("--cluster-replicas")
            .arg(options.replicas_per_master.to_string())
            .arg("--cluster-yes")
            .output()
            .context("cannot run redis-cli (apt-get install redis-tools)")?;
        anyhow::ensure!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_until_formed(options.masters, options.replicas_per_master)?;
        Ok(cluster)
    }

    /// Seed URLs: every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.values().map(RedisServer::url).collect()
    }

    /// Every node's client port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.keys().copied().collect()
    }

    /// Thaws every node a test or the fault lab stopped (SIGCONT to those
    /// still running).
    pub fn resume_all(&self) {
        for node in self.nodes.values() {
            node.resume();
        }
    }

    /// The process id of the node on `port`.
    pub fn pid_of(&self, port: u16) -> Option<u32> {
        self.nodes.get(&port).map(RedisServer::pid)
    }

    /// The node on `port`, to kill or inspect.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.get_mut(&port)
    }

    /// Starts the node on `port` again (killing it first if it runs) and
    /// waits until it is back in the cluster as a replica in sync: a former
    /// master that lost its slots to a failover rejoins as a replica of
    /// the master that took them.
    pub fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        self.nodes
            .get_mut(&port)
            .with_context(|| format!("no node on {port}"))?
            .restart()?;
        wait_for(&format!("the node on {port} did not rejoin"), || {
            let info = self.cli(port, &["CLUSTER", "INFO"]).unwrap_or_default();
            let replication = self.cli(port, &["INFO", "replication"]).unwrap_or_default();
            info.contains("cluster_state:ok")
                && replication.contains("role:slave")
                && replication.contains("master_link_status:up")
        })
    }

    /// `redis-cli` on one node; its standard output.
    pub fn cli(&self, port: u16, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .context("cannot run redis-cli")?;
        anyhow::ensure!(
            output.status.success(),
            "redis-cli {args:?} on {port}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The client port of the master that serves `key`, as a live node
    /// other than `except` sees it.
    pub fn master_of(&self, key: &str, except: Option<u16>) -> anyhow::Result<u16> {
        let port = self
            .nodes
            .keys()
            .copied()
            .find(|port| Some(*port) != except)
            .context("no node left")?;
        let slot: u16 = self
            .cli(port, &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .context("CLUSTER KEYSLOT")?;
        let nodes = self.cli(port, &["CLUSTER", "NODES"])?;
        masters_by_slot(&nodes)
            .into_iter()
            .find(|(range, _)| range.contains(&slot))
            .map(|(_, port)| port)
            .with_context(|| format!("no master serves slot {slot}: {nodes}"))
    }

    fn wait_until_formed(&self, masters: usize, replicas: usize) -> anyhow::Result<()> {
        wait_for("the cluster did not form", || {
            self.nodes.keys().all(|port| {
                let info = self.cli(*port, &["CLUSTER", "INFO"]).unwrap_or_default();
                let replication = self
                    .cli(*port, &["INFO", "replication"])
                    .unwrap_or_default();
                let nodes = self.cli(*port, &["CLUSTER", "NODES"]).unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && masters_by_slot(&nodes)
                        .iter()
                        .map(|(_, port)| port)
                        .collect::<std::collections::HashSet<_>>()
                        .len()
                        == masters
                    && cluster_nodes(&nodes)
                        .iter()
                        .filter(|node| node.has_flag("slave"))
                        .count()
                        == masters * replicas
                    && (!replication.contains("role:slave")
                        || replication.contains("master_link_status:up"))
            })
        })
    }
}

/// One line of a `CLUSTER NODES` reply, which reads `id ip:port@bus[,host]
/// flags master ping pong epoch state slots...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// `ip:port`, as clients reach the node.
    pub addr: String,
    /// `myself`, `master`, `slave`, `fail`, ...
    pub flags: Vec<String>,
    /// The slot ranges a master serves.
    pub slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl ClusterNode {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub fn port(&self) -> Option<u16> {
        self.addr.rsplit(':').next()?.parse().ok()
    }
}

/// The nodes of a `CLUSTER NODES` reply; a node with no address yet (one
/// being added reads `:0@0`) is left out.
pub fn cluster_nodes(reply: &str) -> Vec<ClusterNode> {
    reply
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?.split('@').next()?;
            if addr.is_empty() || addr.starts_with(':') {
                return None;
            }
            let slots = fields
                .get(8..)
                .unwrap_or_default()
                .iter()
                .filter_map(|slots| {
                    let (from, to) = slots.split_once('-').unwrap_or((slots, slots));
                    Some(from.parse().ok()?..=to.parse().ok()?)
                })
                .collect();
            Some(ClusterNode {
                addr: addr.to_owned(),
                flags: fields.get(2)?.split(',').map(str::to_owned).collect(),
                slots,
            })
        })
        .collect()
}

/// The live masters of a `CLUSTER NODES` reply: each slot range and the
/// client port that serves it.
fn masters_by_slot(reply: &str) -> Vec<(std::ops::RangeInclusive<u16>, u16)> {
    cluster_nodes(reply)
        .into_iter()
        .filter(|node| node.has_flag("master") && !node.has_flag("fail"))
        .filter_map(|node| Some((node.port()?, node.slots)))
        .flat_map(|(port, slots)| slots.into_iter().map(move |range| (range, port)))
        .collect()
}

/// Polls `done` until it holds, for at most [`FORM_TIMEOUT`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "{what} within {FORM_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "\
a 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:30002@40002 master - 0 0 2 connected 5461-10922 10930
c 127.0.0.1:30004@40004 slave a 0 0 1 connected
d 127.0.0.1:30003@40003 master,fail - 0 0 3 connected 10923-16383
";
        let all = cluster_nodes(nodes);
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].addr, "127.0.0.1:30004");
        assert!(all[2].has_flag("slave") && all[0].has_flag("myself"));
        let masters = masters_by_slot(nodes);
        assert_eq!(
            masters,
            vec![
                (0..=5460, 30001),
                (5461..=10922, 30002),
                (10930..=10930, 30002)
            ]
        );
    }
}
