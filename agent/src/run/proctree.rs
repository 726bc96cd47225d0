//! The run's process tree without eBPF: sample the cgroup's processes (cgroup.procs, recursive)
//! and procfs, and turn differences between samples into `subprocess_state` events. A process
//! that lives and dies between two samples is not seen; health says the source is `procfs` and
//! gives the sample interval. Exit codes of non-child processes come from /proc/PID/stat (field
//! 52) while they are zombies; once reaped the code is unknown and reported as null.

use std::collections::HashMap;

use serde_json::json;

use crate::evidence::redact::Redactor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub argv: Vec<String>,
    pub start_ticks: u64,
}

/// Parsed /proc/PID/stat fields vigil uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub utime: u64,
    pub stime: u64,
    pub start_ticks: u64,
    /// waitpid-style status, meaningful for zombies only.
    pub exit_code: Option<i32>,
}

/// The stat fields of a process (procfs parses the awkward comm: spaces, parentheses).
pub fn read_stat(pid: i32) -> Option<Stat> {
    let st = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some(Stat {
        comm: st.comm,
        state: st.state,
        ppid: st.ppid,
        utime: st.utime,
        stime: st.stime,
        start_ticks: st.starttime,
        exit_code: st.exit_code,
    })
}

pub fn read_argv(pid: i32) -> Vec<String> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.cmdline())
        .unwrap_or_default()
}

/// Decode a waitpid status into (exit code, signal).
pub fn decode_wait_status(status: i32) -> (Option<i32>, Option<i32>) {
    if status & 0x7f == 0 {
        (Some((status >> 8) & 0xff), None)
    } else {
        (None, Some(status & 0x7f))
    }
}

/// One state change to write as a `subprocess_state` event.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub data: serde_json::Value,
    pub exited: bool,
}

pub struct ProcTracker {
    known: HashMap<i32, ProcInfo>,
    main_pid: i32,
}

impl ProcTracker {
    pub fn new(main_pid: i32) -> Self {
        ProcTracker {
            known: HashMap::new(),
            main_pid,
        }
    }

    /// Register the main child (whose states the supervisor reports from spawn and waitpid).
    pub fn adopt_main(&mut self, info: ProcInfo) {
        self.known.insert(info.pid, info);
    }

    pub fn known(&self) -> impl Iterator<Item = &ProcInfo> {
        self.known.values()
    }

    /// Compare a fresh listing with what was known; return the changes.
    pub fn update(&mut self, pids: &[i32], redactor: &Redactor) -> Vec<StateChange> {
        let mut changes = Vec::new();
        for &pid in pids {
            let argv = read_argv(pid);
            match self.known.get_mut(&pid) {
                Some(info) => {
                    // Same pid, new program image: an exec we sampled.
                    if !argv.is_empty() && argv != info.argv {
                        info.argv = argv;
                        if let Some(st) = read_stat(pid) {
                            info.comm = st.comm;
                        }
                        changes.push(change(info, "running", None, None, redactor));
                    }
                }
                None => {
                    let Some(st) = read_stat(pid) else { continue };
                    let info = ProcInfo {
                        pid,
                        ppid: st.ppid,
                        comm: st.comm,
                        argv,
                        start_ticks: st.start_ticks,
                    };
                    changes.push(change(&info, "spawned", None, None, redactor));
                    if !info.argv.is_empty() {
                        changes.push(change(&info, "running", None, None, redactor));
                    }
                    self.known.insert(pid, info);
                }
            }
        }
        let gone: Vec<i32> = self
            .known
            .keys()
            .copied()
            .filter(|p| !pids.contains(p))
            .collect();
        for pid in gone {
            let Some(info) = self.known.remove(&pid) else {
                continue;
            };
            if pid == self.main_pid {
                continue; // reported exactly from waitpid by the supervisor
            }
            let (code, sig) = match read_stat(pid) {
                // Still a zombie of the same process: its exit status is readable.
                Some(st) if st.start_ticks == info.start_ticks && st.state == 'Z' => {
                    st.exit_code.map(decode_wait_status).unwrap_or((None, None))
                }
                _ => (None, None),
            };
            changes.push(change(&info, "exited", code, sig, redactor));
        }
        changes
    }
}

fn change(
    info: &ProcInfo,
    state: &str,
    code: Option<i32>,
    sig: Option<i32>,
    r: &Redactor,
) -> StateChange {
    StateChange {
        data: json!({
            "pid": info.pid,
            "ppid": info.ppid,
            "state": state,
            "comm": info.comm,
            "argv": r.redact_argv(&info.argv),
            "exit_code": code,
            "signal": sig,
            "source": "procfs",
        }),
        exited: state == "exited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(decode_wait_status(256), (Some(1), None));
        assert_eq!(decode_wait_status(9), (None, Some(9)));
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id() as i32;
        let st = read_stat(me).expect("own stat");
        assert_eq!(st.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(
            Some(st.start_ticks),
            crate::run::cgroup::process_start_ticks(std::process::id())
        );
        assert!(!read_argv(me).is_empty());
    }
}
