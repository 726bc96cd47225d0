//! Stall triage: before a stalled run is killed, record what each of its processes was doing and
//! derive a `stall_phase` from it.
//!
//! Order matters. A task in a frozen cgroup v2 sits in the freezer trap (wchan `get_signal`), so
//! scheduler state, wait channel and kernel stack are read *before* the freeze. The freeze then
//! holds the tree still while the complete set of processes, their syscall numbers, CPU times
//! and open fds are read; then the cgroup is thawed and the kill proceeds.

use std::fs;

use serde::Serialize;

use super::cgroup::RunCgroup;
use super::proctree::{read_argv, read_stat};
use super::waits::{Blocked, Known, Wait, explain};
use crate::evidence::redact::Redactor;
use std::collections::HashSet;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcSnapshot {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub argv: Vec<String>,
    /// /proc state letter before the freeze (R, S, D, T, Z…).
    pub state: String,
    pub wchan: Option<String>,
    /// Syscall number and name the task is in, or None when it is in user space.
    pub syscall_nr: Option<i64>,
    pub syscall: Option<String>,
    /// The syscall's argument registers (for the hang explanation; not written).
    #[serde(skip)]
    pub syscall_args: Option<[u64; 6]>,
    pub kernel_stack: Option<Vec<String>>,
    pub cpu_ms: u64,
    pub open_fds: Option<usize>,
    /// ms since the run's last output or event (output is per run, not per process, without
    /// the kernel layer).
    pub last_progress_age_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StallSnapshot {
    pub frozen: bool,
    pub freeze_note: Option<String>,
    /// CPU the run used over the recent window, in CPUs (1.0 = one core busy).
    pub cpu_rate: Option<f64>,
    pub processes: Vec<ProcSnapshot>,
    pub stall_phase: String,
    /// Who waits on whom: each blocked process, what it waits on and who holds the other end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waits: Vec<Wait>,
}

fn ticks_to_ms(ticks: u64) -> u64 {
    ticks * 1000 / procfs::ticks_per_second().max(1)
}

/// Open fds of a process (None when it is gone or unreadable).
fn fd_count(pid: i32) -> Option<usize> {
    procfs::process::Process::new(pid).ok()?.fd_count().ok()
}

/// The syscall the task is blocked in and its arguments (None on a CPU or in user space).
fn read_syscall(pid: i32) -> Option<(i64, [u64; 6])> {
    match procfs::process::Process::new(pid).ok()?.syscall().ok()? {
        procfs::process::Syscall::Blocked {
            syscall_number,
            argument_registers,
            ..
        } if syscall_number >= 0 => Some((syscall_number, argument_registers)),
        _ => None,
    }
}

fn syscall_name(nr: i64) -> Option<String> {
    usize::try_from(nr)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map(|s| s.name().to_string())
}

fn snapshot_one(pid: i32, last_progress_age_ms: u64, redactor: &Redactor) -> Option<ProcSnapshot> {
    let st = read_stat(pid)?;
    let wchan = procfs::process::Process::new(pid)
        .and_then(|p| p.wchan())
        .ok()
        .filter(|w| !w.is_empty() && w != "0");
    // procfs has no reader for the kernel stack: the file is read as is.
    let kernel_stack = fs::read_to_string(format!("/proc/{pid}/stack"))
        .ok()
        .map(|s| s.lines().map(|l| l.trim().to_string()).collect());
    let syscall = read_syscall(pid);
    let syscall_nr = syscall.map(|(nr, _)| nr);
    Some(ProcSnapshot {
        pid,
        ppid: st.ppid,
        comm: st.comm,
        argv: redactor.redact_argv(&read_argv(pid)),
        state: st.state.to_string(),
        wchan,
        syscall_nr,
        syscall: syscall_nr.and_then(syscall_name),
        syscall_args: syscall.map(|(_, args)| args),
        kernel_stack,
        cpu_ms: ticks_to_ms(st.utime + st.stime),
        open_fds: fd_count(pid),
        last_progress_age_ms,
    })
}

/// Take the snapshot: pre-freeze pass, freeze, complete the set, thaw. Blocking (procfs reads
/// and a freeze wait of up to 1 s): the supervisor runs it off the runtime thread, so kernel
/// events keep draining and deadlines keep firing meanwhile.
pub fn snapshot(
    cg: &RunCgroup,
    cpu_rate: Option<f64>,
    last_progress_age_ms: u64,
    redactor: &Redactor,
    known: &Known,
) -> StallSnapshot {
    let mut processes: Vec<ProcSnapshot> = cg
        .procs()
        .into_iter()
        .filter_map(|p| snapshot_one(p, last_progress_age_ms, redactor))
        .collect();
    let mut freeze_note = None;
    let frozen = match (cg.set_frozen(true), cg.watch_events()) {
        (Ok(()), Ok(w)) => w.wait_blocking(std::time::Duration::from_secs(1), |e| e.frozen),
        (Err(e), _) => {
            freeze_note = Some(format!("freeze failed: {e}"));
            false
        }
        (_, Err(e)) => {
            freeze_note = Some(format!("cannot watch cgroup.events: {e}"));
            false
        }
    };
    if frozen {
        for pid in cg.procs() {
            match processes.iter_mut().find(|p| p.pid == pid) {
                Some(p) => {
                    // CPU time and fds are stable now; refresh them.
                    if let Some(st) = read_stat(pid) {
                        p.cpu_ms = ticks_to_ms(st.utime + st.stime);
                    }
                    p.open_fds = fd_count(pid);
                }
                None => {
                    // Forked after the first pass: its wchan/stack show the freezer trap, so
                    // keep only what the freeze does not disturb.
                    if let Some(mut p) = snapshot_one(pid, last_progress_age_ms, redactor) {
                        p.wchan = None;
                        p.kernel_stack = None;
                        p.state = "?".into();
                        processes.push(p);
                    }
                }
            }
        }
    } else if freeze_note.is_none() {
        freeze_note =
            Some("cgroup did not report frozen within 1 s; snapshot may be inconsistent".into());
    }
    // While frozen, fd tables hold still: who waits on whom.
    let waits = waits_of(&processes, known, redactor);
    if let Err(e) = cg.set_frozen(false) {
        freeze_note.get_or_insert_with(|| format!("thaw failed: {e}"));
    }
    let stall_phase = derive_phase(&processes, cpu_rate);
    StallSnapshot {
        frozen,
        freeze_note,
        cpu_rate,
        processes,
        stall_phase,
        waits,
    }
}

/// Who waits on whom among `processes` (their syscalls read before any freeze).
fn waits_of(processes: &[ProcSnapshot], known: &Known, redactor: &Redactor) -> Vec<Wait> {
    let blocked: Vec<Blocked> = processes
        .iter()
        .filter(|p| matches!(p.state.as_str(), "S" | "D"))
        .filter_map(|p| {
            Some(Blocked {
                pid: p.pid,
                comm: p.comm.clone(),
                syscall: p.syscall.clone()?,
                args: p.syscall_args?,
            })
        })
        .collect();
    let run: HashSet<i32> = processes.iter().map(|p| p.pid).collect();
    explain(&blocked, &run, known, redactor)
}

/// The hang explanation of a stall warning: no freeze (nothing is being stopped), one pass.
pub fn explain_now(cg: &RunCgroup, redactor: &Redactor, known: &Known) -> Vec<Wait> {
    let processes: Vec<ProcSnapshot> = cg
        .procs()
        .into_iter()
        .filter_map(|p| snapshot_one(p, 0, redactor))
        .collect();
    waits_of(&processes, known, redactor)
}

/// The phase the run stalled in. The run is `spinning` when it burned at least half a CPU over
/// the recent window. Otherwise the newest leaf process (no children in the run — the one doing
/// the work, not a shell waiting for it) says where it is: `blocked_in_syscall:<name>`,
/// `running`, `stopped`, `zombie`, or `sleeping` when it sleeps outside a known syscall.
pub fn derive_phase(procs: &[ProcSnapshot], cpu_rate: Option<f64>) -> String {
    if procs.is_empty() {
        return "no_process".into();
    }
    if cpu_rate.is_some_and(|r| r >= 0.5) {
        return "spinning".into();
    }
    let is_parent = |pid: i32| procs.iter().any(|p| p.ppid == pid && p.pid != pid);
    let leaf = procs
        .iter()
        .filter(|p| !is_parent(p.pid))
        .max_by_key(|p| p.pid)
        .or_else(|| procs.iter().max_by_key(|p| p.pid));
    let Some(p) = leaf else {
        return "no_process".into();
    };
    match (p.state.as_str(), &p.syscall) {
        ("R", _) => "running".into(),
        ("T" | "t", _) => "stopped".into(),
        ("Z", _) => "zombie".into(),
        ("S" | "D", Some(name)) => format!("blocked_in_syscall:{name}"),
        _ => "sleeping".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, state: &str, syscall: Option<&str>) -> ProcSnapshot {
        ProcSnapshot {
            pid,
            ppid,
            comm: "x".into(),
            argv: vec![],
            state: state.into(),
            wchan: None,
            syscall_nr: None,
            syscall: syscall.map(String::from),
            syscall_args: None,
            kernel_stack: None,
            cpu_ms: 0,
            open_fds: None,
            last_progress_age_ms: 0,
        }
    }

    #[test]
    fn phase_comes_from_the_leaf_not_the_waiting_shell() {
        let tree = [p(10, 1, "S", Some("wait4")), p(11, 10, "S", Some("read"))];
        assert_eq!(derive_phase(&tree, Some(0.0)), "blocked_in_syscall:read");
        assert_eq!(derive_phase(&tree, Some(0.9)), "spinning");
        assert_eq!(derive_phase(&[p(5, 1, "S", None)], None), "sleeping");
        assert_eq!(derive_phase(&[p(5, 1, "R", None)], Some(0.1)), "running");
        assert_eq!(derive_phase(&[], None), "no_process");
    }

    #[test]
    fn syscall_names_resolve() {
        assert_eq!(
            syscall_name(0).as_deref(),
            Some(if cfg!(target_arch = "x86_64") {
                "read"
            } else {
                "io_setup"
            })
        );
        assert_eq!(syscall_name(-1), None);
    }
}
