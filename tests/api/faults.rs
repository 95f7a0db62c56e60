//! The fault lab, run as a user runs it (`seckill faults`, the binary): a
//! short matrix whose verdicts are known, and an interrupted run that must
//! leave nothing behind.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::unique;

fn lab() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill"));
    command
        .arg("faults")
        .env_remove("REDIS_URL")
        .env_remove("ADMIN_TOKEN")
        .stdin(Stdio::null());
    command
}

/// The short matrix CI runs: the fencing lesson, measured. Seven stalls of
/// the lock's holder past its 100 ms TTL: without a fencing token a stale
/// write puts a sold unit back on the shelf; with one it is refused. A stall
/// lands between the holder's read and its write only some of the time, the
/// less often the busier the machine (CI measured one run in five with no
/// oversell at three stalls of a 300 ms TTL under load), hence seven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lock_holder_oversells_without_fencing_and_not_with_it() {
    let out = std::env::temp_dir().join(unique("faults-out"));
    let status = lab()
        .args([
            "--strategies",
            "lock-unfenced,lock",
            "--faults",
            "holder-pause",
        ])
        .args(["--rate", "60", "-c", "8", "--lock-ttl-ms", "100"])
        .args(["--before", "1s", "--hold", "3600ms", "--after", "1500ms"])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    let matrix: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("faults.json")).unwrap()).unwrap();
    let cell = |strategy: &str| {
        matrix["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["strategy"] == strategy)
            .unwrap_or_else(|| panic!("no {strategy} cell: {matrix:#}"))
            .clone()
    };
    let (unfenced, fenced) = (cell("lock-unfenced"), cell("lock"));
    for cell in [&unfenced, &fenced] {
        let evidence = cell["fault_record"]["evidence"].as_str().unwrap_or("");
        assert!(
            evidence.contains("stopped holding the lock") && evidence.contains("expired"),
            "the lab must show the holder was stopped with the lock and lost it: {}",
            brief(cell)
        );
        assert!(cell["repro"].as_str().unwrap().contains("--seed"));
    }
    // Each stall caught a holder that went on past its lock: the unfenced
    // one noticed only at its unlock, the fenced one was refused its write.
    assert!(
        unfenced["lock_expired"].as_u64().unwrap() >= 1,
        "{}",
        brief(&unfenced)
    );
    assert!(
        fenced["fenced"].as_u64().unwrap() >= 1,
        "{}",
        brief(&fenced)
    );
    assert_eq!(unfenced["judgement"], "broken", "{}", brief(&unfenced));
    assert!(
        unfenced["oversold"].as_u64().unwrap() >= 1,
        "{}",
        brief(&unfenced)
    );
    assert_eq!(fenced["judgement"], "exact", "{}", brief(&fenced));
    assert_eq!(fenced["oversold"], 0, "{}", brief(&fenced));
    assert_eq!(fenced["lost_201s"], 0, "{}", brief(&fenced));
    // A cell that broke a promise is a verdict, not a failure of the lab.
    assert!(status.success(), "{status}");
    for file in ["faults.md", "faults.svg"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(text.contains("lock-unfenced") && text.contains("oversold"));
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// A cell's verdict on one line: a pretty-printed cell is long enough for
/// CI's excerpt of a failure to cut the assertion's message out.
fn brief(cell: &Value) -> String {
    let field = |name: &str| format!("{name}={}", cell[name]);
    let fields = [
        "strategy",
        "judgement",
        "oversold",
        "lost_201s",
        "lock_expired",
        "fenced",
    ];
    let evidence: String = cell["fault_record"]["evidence"]
        .as_str()
        .unwrap_or("none")
        .chars()
        .take(240)
        .collect();
    let error = cell["error"].as_str().unwrap_or("none");
    format!(
        "{} evidence: {evidence} error: {error}",
        fields.map(field).join(" ")
    )
}

/// Every process the lab started, with its children: `/proc/*/stat`'s
/// parent ids.
pub fn descendants(root: u32) -> HashSet<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let Some(ppid) = fields.get(1).and_then(|p| p.parse::<u32>().ok()) {
            parents.push((pid, ppid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    let mut found = HashSet::from([root]);
    loop {
        let before = found.len();
        for (pid, ppid, _) in &parents {
            if found.contains(ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.remove(&root);
    found
}

/// Alive (a zombie has been let go by its parent, not waited for: alive
/// enough to count).
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// The lab's working directory, from its Redis's: `<dir>/redis`.
fn lab_dir(pids: &HashSet<u32>) -> Option<PathBuf> {
    pids.iter().find_map(|pid| {
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        let dir = cwd.parent()?.to_owned();
        dir.file_name()?
            .to_string_lossy()
            .starts_with("seckill-faults-")
            .then_some(dir)
    })
}

/// ctrl-c while a fault holds a process stopped (Redis, then an instance):
/// the lab undoes it and stops everything it started before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_lab_leaves_no_process_and_no_directory_behind() {
    for (fault, strategy) in [("redis-pause", "lua"), ("holder-pause", "lua")] {
        let child = lab()
            .args(["--strategies", strategy, "--faults", fault])
            .args([
                "--rate", "40", "-c", "4", "--before", "500ms", "--hold", "60s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lab_pid = child.id().unwrap();
        // Wait for the fault: one of the lab's processes stopped.
        let deadline = Instant::now() + Duration::from_secs(60);
        let started = loop {
            let pids = descendants(lab_pid);
            if pids.iter().any(|pid| stopped(*pid)) {
                break pids;
            }
            assert!(
                Instant::now() < deadline,
                "{fault}: nothing was stopped within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let dir = lab_dir(&started).expect("the lab's Redis runs in the lab's directory");
        assert!(
            started.len() >= 3,
            "{fault}: Redis and two instances: {started:?}"
        );
        // SAFETY: a plain syscall to our own child.
        unsafe {
            libc::kill(lab_pid as i32, libc::SIGINT);
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the interrupted lab must exit")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{fault}: {stderr}");
        assert!(stderr.contains("interrupted"), "{fault}: {stderr}");
        let left: Vec<u32> = started.iter().copied().filter(|pid| exists(*pid)).collect();
        assert!(left.is_empty(), "{fault}: processes left behind: {left:?}");
        assert!(!dir.exists(), "{fault}: {} left behind", dir.display());
    }
}
