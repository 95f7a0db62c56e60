//! What the lab starts and must not leave behind: a temporary directory
//! removed on drop, and a `seckill serve` child waited for until ready,
//! stopped gracefully, then killed.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::loadgen::{self, Target};

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `seckill-<what>-<random>` under the system's temporary directory.
    pub fn new(what: &str) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("seckill-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long a child may take to stop on SIGTERM (a server's persister
/// drains) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// SIGCONT (a stopped child would hold SIGTERM until the timeout), SIGTERM,
/// a wait of at most [`STOP_TIMEOUT`], then SIGKILL; reaped either way.
pub fn stop_child(child: &mut Child) {
    for signal in [libc::SIGCONT, libc::SIGTERM] {
        // SAFETY: a plain syscall on our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `child`, a server at `target`, answers `/readyz`; fails if
/// it exits first or is not ready `within`. `what` names it in the error.
pub async fn wait_ready(
    child: &mut Child,
    target: &Target,
    within: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited at start-up ({status})");
        }
        if loadgen::probe(target, "/readyz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} at http://{}/readyz was not ready within {} s",
                target.host,
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
