//! [`PerPeer`]: open connections counted by peer IP, so one host cannot
//! take every slot under `MAX_CONNECTIONS` while everyone else waits in the
//! listen backlog (`MAX_CONNECTIONS_PER_IP`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Connections per peer IP, at most `cap` each. An entry exists only while
/// its IP has a connection open: the last [`PeerSlot`] dropped removes it,
/// so the map holds at most `MAX_CONNECTIONS` entries however many hosts
/// come and go.
#[derive(Clone)]
pub struct PerPeer {
    cap: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection of `ip`; dropping it gives the slot back.
pub struct PeerSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerPeer {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            open: Arc::default(),
        }
    }

    /// A slot for a new connection from `ip`, or `None` if it has `cap`
    /// open already. An IPv4 peer seen on an IPv6 socket (`::ffff:a.b.c.d`)
    /// counts as the IPv4 address it is.
    pub fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        let ip = ip.to_canonical();
        // Nothing panics while holding the lock (counting only); a poisoned
        // map is still a consistent one.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.get(&ip).copied().unwrap_or(0);
        if count >= self.cap {
            return None;
        }
        open.insert(ip, count + 1);
        Some(PeerSlot {
            ip,
            open: Arc::clone(&self.open),
        })
    }

    /// Peers with a connection open.
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_at_its_cap_is_refused_and_the_map_empties_when_all_close() {
        let peers = PerPeer::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = peers.admit(a).unwrap();
        // The same host over an IPv6 socket.
        let second = peers.admit("::ffff:192.0.2.1".parse().unwrap()).unwrap();
        assert!(peers.admit(a).is_none(), "past the cap");
        let other = peers.admit(b).expect("another host is not held back");
        drop(first);
        let third = peers.admit(a).expect("a closed connection's slot returns");
        assert_eq!(peers.peers(), 2);
        drop((second, third, other));
        assert_eq!(peers.peers(), 0, "entries at zero are removed");
    }
}
