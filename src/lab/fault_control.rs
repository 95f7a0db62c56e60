//! The status page's fault control: runs the fault lab (`seckill faults`,
//! [`crate::lab::faults`]) for `POST /api/faults`, one run at a time, and
//! keeps its cells for the live feed as they arrive.
//!
//! The lab runs as a child process, this binary with `faults --progress
//! ndjson`, not inside the server: a cell starts its own Redis and two
//! `seckill serve` instances, SIGSTOPs and kills them, and cleans up with
//! blocking waits. In a child, none of that shares the server's runtime, and
//! its processes are not the server's children. The child prints one
//! [`CellLine`] per finished cell on stdout; its stderr (the lab's own
//! progress and final table) goes to this server's log, a line at a time.
//!
//! A run is bounded: it is stopped after [`FaultControl::time_bound`] (each
//! cell's phases plus [`OVERHEAD_PER_CELL`]), by `DELETE /api/faults`, and at
//! shutdown. Stopping is the lab's own, tested interrupt: SIGINT, after which
//! it undoes the fault and stops every process it started; then a wait of
//! [`STOP_GRACE`]; then, as the last resort, SIGKILL to its whole process
//! group (the lab runs in a group of its own, so its Redis and instances go
//! with it). `running` stays true until the lab has exited.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::lab::faults::cell::CellLine;
use crate::lab::faults::fault::Fault;
use crate::strategy::StrategyKind;

/// The page's default strategies: the fencing lesson (`lock-unfenced`
/// against `lock`) and a script with no lock to lose (`lua`).
pub const DEFAULT_STRATEGIES: [StrategyKind; 3] = [
    StrategyKind::LockUnfenced,
    StrategyKind::Lock,
    StrategyKind::Lua,
];

/// The page's default faults: a stalled lock holder, a stalled Redis and a
/// crashed instance, on a single Redis (no cluster to start), about 15 s a
/// cell.
pub const DEFAULT_FAULTS: [Fault; 3] = [Fault::HolderPause, Fault::RedisPause, Fault::InstanceKill];

/// The lab's load from the page: a demonstration, not a siege, on a machine
/// that also serves the page. Half `seckill faults`' defaults.
const RATE: u32 = 100;
const CONCURRENCY: u32 = 16;

/// Time a cell may take beyond its phases: starting Redis and two
/// instances, waiting for the persister to settle, reading the truths, and
/// stopping it all. Generous: a debug build on two busy cores.
pub const OVERHEAD_PER_CELL: Duration = Duration::from_secs(60);

/// How long the lab has to exit after SIGINT before it is killed: its
/// cleanup resumes what it stopped and stops two instances (each drains its
/// persister) and Redis.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// What the page shows about the current or last run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FaultStatus {
    /// Whether this server runs the lab at all (`FAULT_LAB`).
    pub enabled: bool,
    /// True from the start until the lab's process has exited.
    pub running: bool,
    pub phase: String,
    /// What the run asked for: the matrix's rows and columns.
    pub strategies: Vec<StrategyKind>,
    pub faults: Vec<Fault>,
    /// One line per finished cell, in the order they finished.
    pub cells: Vec<CellLine>,
    pub error: Option<String>,
    /// Every fault the lab knows, for the page's choices.
    pub available_faults: Vec<Fault>,
    /// What a run asks for when it names nothing.
    pub default_strategies: Vec<StrategyKind>,
    pub default_faults: Vec<Fault>,
}

impl FaultStatus {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            running: false,
            phase: String::new(),
            strategies: Vec::new(),
            faults: Vec::new(),
            cells: Vec::new(),
            error: None,
            available_faults: Fault::ALL.to_vec(),
            default_strategies: DEFAULT_STRATEGIES.to_vec(),
            default_faults: DEFAULT_FAULTS.to_vec(),
        }
    }
}

/// What to run: every strategy under every fault, with these phases.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub strategies: Vec<StrategyKind>,
    pub faults: Vec<Fault>,
    pub before: Duration,
    pub hold: Duration,
    pub after: Duration,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("the fault lab is off on this server (FAULT_LAB=false)")]
    Disabled,
    #[error("a fault lab run is already running")]
    AlreadyRunning,
    #[error("cannot start the fault lab")]
    Spawn(#[source] anyhow::Error),
}

/// The running lab's handles: how to ask it to stop, and its task.
struct Run {
    stop: Option<oneshot::Sender<String>>,
    task: JoinHandle<()>,
}

pub struct FaultControl {
    enabled: bool,
    /// The `seckill` binary to run (`None`: this one). Tests set it: their
    /// process is the test harness, not `seckill`.
    bin: Option<PathBuf>,
    status: Arc<Mutex<FaultStatus>>,
    run: Mutex<Option<Run>>,
}

impl FaultControl {
    pub fn new(enabled: bool, bin: Option<PathBuf>) -> Self {
        Self {
            enabled,
            bin,
            status: Arc::new(Mutex::new(FaultStatus::new(enabled))),
            run: Mutex::new(None),
        }
    }

    pub fn status(&self) -> FaultStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The longest `plan` may run before it is stopped.
    pub fn time_bound(plan: &FaultPlan) -> Duration {
        let per_strategy: Duration = plan
            .faults
            .iter()
            .map(|f| plan.before + f.span(plan.hold) + plan.after + OVERHEAD_PER_CELL)
            .sum();
        per_strategy * plan.strategies.len() as u32
    }

    /// Asks the running lab, if any, to stop; `why` becomes its phase once
    /// it has exited. Returns at once: `running` stays true until then.
    pub fn cancel(&self, why: &str) {
        let stop = self
            .run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|run| run.stop.take());
        if let Some(stop) = stop {
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if status.running {
                status.phase = format!("stopping: {why}");
            }
            let _ = stop.send(why.to_owned());
        }
    }

    /// [`cancel`](Self::cancel), then waits until the lab has exited (its
    /// own bounds: [`STOP_GRACE`], then SIGKILL). For shutdown: the
    /// server's process must not end before the lab has cleaned up.
    pub async fn stop(&self, why: &str) {
        self.cancel(why);
        let run = self.run.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(run) = run {
            let _ = run.task.await;
        }
    }

    /// Starts the lab in the background.
    pub fn start(&self, plan: FaultPlan) -> Result<(), FaultError> {
        if !self.enabled {
            return Err(FaultError::Disabled);
        }
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.running {
            return Err(FaultError::AlreadyRunning);
        }
        let mut child = self.command(&plan)?.spawn().map_err(|err| {
            FaultError::Spawn(anyhow::Error::new(err).context("cannot run `seckill faults`"))
        })?;
        let total = plan.strategies.len() * plan.faults.len();
        *status = FaultStatus {
            running: true,
            phase: format!("0 of {total} cells done"),
            strategies: plan.strategies.clone(),
            faults: plan.faults.clone(),
            ..FaultStatus::new(self.enabled)
        };
        drop(status);
        let (stop, stopped) = oneshot::channel();
        let bound = Self::time_bound(&plan);
        let status = Arc::clone(&self.status);
        let task = tokio::spawn(async move {
            let pid = child.id();
            let mut group = LabGroup(pid);
            tracing::info!(
                ?pid,
                bound_s = bound.as_secs(),
                cells = total,
                "fault lab started"
            );
            let ending = follow(&mut child, &status, total, bound, stopped).await;
            let exit = match &ending {
                Ending::Exited => wait_bounded(&mut child, STOP_GRACE).await,
                Ending::Stopped(_) | Ending::TimedOut => interrupt(&mut child).await,
            };
            // Waited for: its pid (and group id) may now be anyone's.
            group.0 = None;
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.running = false;
            let done = s.cells.len();
            match ending {
                Ending::Stopped(why) => s.phase = why,
                Ending::TimedOut => {
                    tracing::warn!(
                        bound_s = bound.as_secs(),
                        "fault lab stopped at its time bound"
                    );
                    s.phase = "timed out".into();
                    s.error = Some(format!(
                        "the run exceeded its bound of {} s",
                        bound.as_secs()
                    ));
                }
                Ending::Exited if done == total => {
                    s.phase = "done".into();
                    let errors = s.cells.iter().filter(|c| c.error.is_some()).count();
                    if errors > 0 {
                        s.error = Some(format!("{errors} cells have no verdict"));
                    }
                }
                Ending::Exited => {
                    tracing::warn!(?exit, done, total, "fault lab ended early");
                    s.phase = "failed".into();
                    s.error = Some(format!(
                        "the lab ended after {done} of {total} cells; the server's log has its output"
                    ));
                }
            }
            tracing::info!(?exit, phase = %s.phase, "fault lab ended");
        });
        *self.run.lock().unwrap_or_else(|e| e.into_inner()) = Some(Run {
            stop: Some(stop),
            task,
        });
        Ok(())
    }

    /// `seckill faults` for `plan`, in a process group of its own (so a
    /// last-resort SIGKILL reaches its children, and a ctrl-c in the
    /// server's terminal reaches the server only, which stops the lab its
    /// own way).
    fn command(&self, plan: &FaultPlan) -> Result<Command, FaultError> {
        let bin = match &self.bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()
                .context("cannot find this binary")
                .map_err(FaultError::Spawn)?,
        };
        let join = |names: Vec<&str>| names.join(",");
        let seconds = |d: Duration| format!("{}s", d.as_secs());
        let mut command = Command::new(bin);
        command
            .arg("faults")
            .args(["--progress", "ndjson"])
            .args([
                "--strategies",
                &join(plan.strategies.iter().map(|s| s.as_str()).collect()),
            ])
            .args([
                "--faults",
                &join(plan.faults.iter().map(|f| f.name()).collect()),
            ])
            .args(["--rate", &RATE.to_string(), "-c", &CONCURRENCY.to_string()])
            .args(["--before", &seconds(plan.before)])
            .args(["--hold", &seconds(plan.hold)])
            .args(["--after", &seconds(plan.after)])
            // The lab needs no secret of the server's.
            .env_remove("ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // Only if this task is dropped unfinished (the runtime goes
            // away), beside [`LabGroup`]'s kill of the whole group.
            .kill_on_drop(true);
        Ok(command)
    }
}

/// The lab's process group while the lab may run: dropped with its task
/// unfinished (the runtime going away), it SIGKILLs the whole group, the
/// lab's Redis and instances with it, where `kill_on_drop` would kill the
/// lab alone and leave them (a paused one paused) behind.
struct LabGroup(Option<u32>);

impl Drop for LabGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: a plain syscall; the lab leads its own group
            // (`process_group(0)`) and has not been waited for (the task
            // empties this guard once it has), so the id is still its.
            unsafe {
                libc::killpg(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// How following the lab's output ended.
enum Ending {
    /// Its stdout closed: it is exiting by itself.
    Exited,
    /// Asked to stop; the phase to show.
    Stopped(String),
    TimedOut,
}

/// Reads the lab's cells into `status` until its stdout closes, it is asked
/// to stop, or `bound` passes.
async fn follow(
    child: &mut Child,
    status: &Mutex<FaultStatus>,
    total: usize,
    bound: Duration,
    mut stop: oneshot::Receiver<String>,
) -> Ending {
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_lines(stderr));
    }
    let Some(stdout) = child.stdout.take() else {
        return Ending::Exited;
    };
    let mut lines = BufReader::new(stdout).lines();
    let deadline = tokio::time::sleep(bound);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match serde_json::from_str::<CellLine>(&line) {
                    Ok(cell) => {
                        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                        s.cells.push(cell);
                        s.phase = format!("{} of {total} cells done", s.cells.len());
                    }
                    Err(err) => tracing::warn!(%err, line, "fault lab: not a cell line"),
                },
                Ok(None) => return Ending::Exited,
                Err(err) => {
                    tracing::warn!(%err, "fault lab: cannot read its output");
                    return Ending::Exited;
                }
            },
            why = &mut stop => {
                // A dropped sender: the control itself is gone.
                return Ending::Stopped(why.unwrap_or_else(|_| "stopped".into()));
            }
            () = &mut deadline => return Ending::TimedOut,
        }
    }
}

/// The lab's stderr, a line at a time, into this server's log.
async fn log_lines(stderr: ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "seckill::fault_lab", "{line}");
    }
}

/// SIGINT, the lab's own clean stop, then [`wait_bounded`].
async fn interrupt(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        // SAFETY: a plain syscall to our own child, not yet reaped (`id()`
        // is `None` once it is), so the pid is still its.
        unsafe {
            libc::kill(pid as i32, libc::SIGINT);
        }
    }
    wait_bounded(child, STOP_GRACE).await
}

/// Waits `grace` for the lab to exit; then SIGKILLs its process group.
async fn wait_bounded(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(exit) = tokio::time::timeout(grace, child.wait()).await {
        return exit.ok();
    }
    if let Some(pid) = child.id() {
        tracing::warn!(
            pid,
            grace_s = grace.as_secs(),
            "fault lab did not exit; killing its process group"
        );
        // SAFETY: our child, not yet reaped, leads its own process group
        // (`process_group(0)`), so the group id is still its and nobody
        // else's.
        unsafe {
            libc::killpg(pid as i32, libc::SIGKILL);
        }
    }
    child.wait().await.ok()
}
