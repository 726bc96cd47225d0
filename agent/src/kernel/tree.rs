//! The run's process tree from kernel events: exact where the procfs sampler can only sample.
//! Turns fork/exec/exit/signal/OOM events into `subprocess_state` records: `spawned` (fork of a
//! process, not a thread), `exec` (with argv), `exited` (code or signal), `killed_by` (the
//! sender and signal of the delivered signal that ended it) and `oom_killed`; and keeps each
//! process's life (fork, exec chain, exit) for the per-process spans of the detailed profile.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::event::KernelEvent;

/// Signals whose default action ends a process.
const FATAL: [i32; 18] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15, 24, 25, 26, 27, 31,
];

#[derive(Default)]
pub struct KernelTree {
    /// The main child: its spawn and exit come exactly from vigil's own clone3 and waitid.
    main_pid: u32,
    /// Last fatal signal delivered to each process: (sender pid, sender comm, signal).
    last_fatal: HashMap<u32, (u32, String, i32)>,
    /// Processes chosen by the OOM killer and not yet exited.
    oom_victims: std::collections::HashSet<u32>,
    /// Processes alive now (by pid), and those that have exited, in exit order.
    live: HashMap<u32, ProcessLife>,
    ended: Vec<ProcessLife>,
    /// Thread creations seen (not processes); counted, not reported.
    pub threads: u64,
}

/// One process of the run (not the main child) as the kernel saw it. Times are boot-clock ns.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessLife {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub start_boot_ns: u64,
    /// The first exec, which ends the process's `subprocess.exec` span.
    pub exec_boot_ns: Option<u64>,
    pub end_boot_ns: Option<u64>,
    /// Every image the process exec'd, in order (redacted).
    pub exec_chain: Vec<String>,
    /// argv of the last exec (redacted).
    pub argv: Vec<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Found running at a watch's attach (its fork and exec came before vigil looked).
    pub seeded: bool,
}

fn state(pid: u32, ppid: u32, comm: &str, state: &str) -> Value {
    json!({"pid": pid, "ppid": ppid, "state": state, "comm": comm, "source": "kernel",
           "exit_code": null, "signal": null})
}

impl KernelTree {
    pub fn new(main_pid: u32) -> Self {
        KernelTree {
            main_pid,
            ..Default::default()
        }
    }

    /// Processes of the run alive now, the main child not included.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Every process's life so far: the ended ones, then those still alive, by start time.
    pub fn lives(&self) -> Vec<ProcessLife> {
        let mut all: Vec<ProcessLife> = self
            .ended
            .iter()
            .chain(self.live.values())
            .cloned()
            .collect();
        all.sort_by_key(|l| (l.start_boot_ns, l.pid));
        all
    }

    /// A process a watch found running at attach; its `subprocess_state` record (`running`,
    /// `seeded: true`). Its exit then comes from kernel events like any other's.
    pub fn seed(&mut self, life: ProcessLife) -> Value {
        let mut s = state(life.pid, life.ppid, &life.comm, "running");
        s["seeded"] = json!(true);
        s["source"] = json!("procfs");
        s["argv"] = json!(life.argv);
        s["start_boot_ns"] = json!(life.start_boot_ns);
        self.live.insert(
            life.pid,
            ProcessLife {
                seeded: true,
                ..life
            },
        );
        s
    }

    /// The `subprocess_state` records one kernel event implies.
    /// The event is already redacted (the reader redacts once, before any consumer).
    pub fn apply(&mut self, ev: &KernelEvent) -> Vec<Value> {
        match ev {
            KernelEvent::Fork {
                is_thread: true, ..
            } => {
                self.threads += 1;
                vec![]
            }
            KernelEvent::Fork { hdr, child_pid, .. } => {
                self.live.insert(
                    *child_pid,
                    ProcessLife {
                        pid: *child_pid,
                        ppid: hdr.pid,
                        comm: hdr.comm.clone(),
                        start_boot_ns: hdr.boot_ns,
                        exec_boot_ns: None,
                        end_boot_ns: None,
                        exec_chain: Vec::new(),
                        argv: Vec::new(),
                        exit_code: None,
                        signal: None,
                        oom_killed: false,
                        seeded: false,
                    },
                );
                vec![state(*child_pid, hdr.pid, &hdr.comm, "spawned")]
            }
            KernelEvent::Exec {
                hdr,
                argv,
                filename,
                ..
            } => {
                let (argv, filename) = (argv.clone(), filename.clone());
                if let Some(life) = self.live.get_mut(&hdr.pid) {
                    life.exec_boot_ns.get_or_insert(hdr.boot_ns);
                    life.exec_chain.push(filename.clone());
                    life.argv = argv.clone();
                    life.comm = hdr.comm.clone();
                }
                let mut s = state(hdr.pid, hdr.ppid, &hdr.comm, "exec");
                s["argv"] = json!(argv);
                s["filename"] = json!(filename);
                vec![s]
            }
            KernelEvent::Oom {
                hdr,
                trigger_pid,
                trigger_comm,
            } => {
                self.oom_victims.insert(hdr.pid);
                if let Some(life) = self.live.get_mut(&hdr.pid) {
                    life.oom_killed = true;
                }
                let mut s = state(hdr.pid, hdr.ppid, &hdr.comm, "oom_killed");
                s["trigger_pid"] = json!(trigger_pid);
                s["trigger_comm"] = json!(trigger_comm);
                vec![s]
            }
            KernelEvent::Signal {
                hdr,
                target_pid,
                signal,
                result: 0,
                ..
            } if FATAL.contains(signal) => {
                self.last_fatal
                    .insert(*target_pid, (hdr.pid, hdr.comm.clone(), *signal));
                vec![]
            }
            KernelEvent::Signal { .. }
            | KernelEvent::Write { .. }
            | KernelEvent::Open { .. }
            | KernelEvent::ExecFailed { .. }
            | KernelEvent::Unfollowed { .. }
            | KernelEvent::Net { .. } => vec![],
            KernelEvent::Exit {
                group_dead: false, ..
            } => vec![],
            KernelEvent::Exit {
                hdr,
                exit_code,
                signal,
                ..
            } => {
                let fatal = self.last_fatal.remove(&hdr.pid);
                let oom = self.oom_victims.remove(&hdr.pid);
                if let Some(mut life) = self.live.remove(&hdr.pid) {
                    life.end_boot_ns = Some(hdr.boot_ns);
                    life.exit_code = *exit_code;
                    life.signal = *signal;
                    self.ended.push(life);
                }
                if hdr.pid == self.main_pid {
                    return vec![]; // reported exactly from waitid
                }
                let mut out = Vec::new();
                // The OOM killer's SIGKILL is sent from whichever task ran it: that task is the
                // trigger (in the oom_killed record), not a killer.
                if let (false, Some(sig), Some((sender, sender_comm, sent))) = (oom, signal, fatal)
                    && *sig == sent
                {
                    let mut k = state(hdr.pid, hdr.ppid, &hdr.comm, "killed_by");
                    k["signal"] = json!(sig);
                    k["killer_pid"] = json!(sender);
                    k["killer_comm"] = json!(sender_comm);
                    out.push(k);
                }
                let mut x = state(hdr.pid, hdr.ppid, &hdr.comm, "exited");
                x["exit_code"] = json!(exit_code);
                x["signal"] = json!(signal);
                out.push(x);
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::Header;

    fn h(pid: u32, ppid: u32, comm: &str) -> Header {
        Header::of(pid, ppid, comm)
    }

    #[test]
    fn builds_spawn_exec_exit_and_attributes_kills() {
        let mut t = KernelTree::new(10);
        let fork = KernelEvent::Fork {
            hdr: h(10, 1, "sh"),
            child_pid: 11,
            child_tid: 11,
            is_thread: false,
        };
        assert_eq!(t.apply(&fork)[0]["state"], "spawned");
        let thread = KernelEvent::Fork {
            hdr: h(11, 10, "x"),
            child_pid: 11,
            child_tid: 12,
            is_thread: true,
        };
        assert!(t.apply(&thread).is_empty());
        assert_eq!(t.threads, 1);
        let exec = KernelEvent::Exec {
            hdr: h(11, 10, "sleep"),
            filename: "/bin/sleep".into(),
            argv: vec!["sleep".into(), "30".into()],
            argv_truncated: false,
            uid: 0,
            gid: 0,
            cred_changed: false,
        };
        assert_eq!(t.apply(&exec)[0]["argv"], json!(["sleep", "30"]));
        let kill = KernelEvent::Signal {
            hdr: h(10, 1, "sh"),
            target_pid: 11,
            target_tid: 11,
            signal: 15,
            result: 0,
            group: false,
        };
        assert!(t.apply(&kill).is_empty());
        let exit = KernelEvent::Exit {
            hdr: h(11, 10, "sleep"),
            exit_code: None,
            signal: Some(15),
            core_dumped: false,
            group_dead: true,
        };
        let out = t.apply(&exit);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["state"], "killed_by");
        assert_eq!(out[0]["killer_pid"], 10);
        assert_eq!(out[1]["state"], "exited");
        assert_eq!(out[1]["signal"], 15);
        // An exit by another cause than the signal sent is not attributed to the sender.
        t.apply(&KernelEvent::Signal {
            hdr: h(10, 1, "sh"),
            target_pid: 12,
            target_tid: 12,
            signal: 15,
            result: 0,
            group: false,
        });
        let clean = KernelEvent::Exit {
            hdr: h(12, 10, "t"),
            exit_code: Some(0),
            signal: None,
            core_dumped: false,
            group_dead: true,
        };
        assert_eq!(t.apply(&clean).len(), 1);
        // The main child's exit comes from waitid, not from here.
        let main = KernelEvent::Exit {
            hdr: h(10, 1, "sh"),
            exit_code: Some(0),
            signal: None,
            core_dumped: false,
            group_dead: true,
        };
        assert!(t.apply(&main).is_empty());
        // Lives: 11 forked, exec'd sleep, killed; 12 was never seen forked (no life).
        let lives = t.lives();
        assert_eq!(lives.len(), 1);
        assert_eq!(lives[0].pid, 11);
        assert_eq!(lives[0].exec_chain, ["/bin/sleep"]);
        assert_eq!(lives[0].signal, Some(15));
        assert!(lives[0].end_boot_ns.is_some());
    }

    #[test]
    fn oom_victim_is_oom_killed_not_killed_by_the_trigger() {
        let mut t = KernelTree::new(10);
        t.apply(&KernelEvent::Fork {
            hdr: h(10, 1, "sh"),
            child_pid: 11,
            child_tid: 11,
            is_thread: false,
        });
        let oom = t.apply(&KernelEvent::Oom {
            hdr: h(11, 10, "hog"),
            trigger_pid: 11,
            trigger_comm: "hog".into(),
        });
        assert_eq!(oom[0]["state"], "oom_killed");
        assert_eq!(oom[0]["trigger_pid"], 11);
        // The OOM killer's SIGKILL, generated in the trigger's context.
        t.apply(&KernelEvent::Signal {
            hdr: h(11, 10, "hog"),
            target_pid: 11,
            target_tid: 11,
            signal: 9,
            result: 0,
            group: true,
        });
        let exit = t.apply(&KernelEvent::Exit {
            hdr: h(11, 10, "hog"),
            exit_code: None,
            signal: Some(9),
            core_dumped: false,
            group_dead: true,
        });
        assert_eq!(exit.len(), 1);
        assert_eq!(exit[0]["state"], "exited");
        assert!(t.lives()[0].oom_killed);
    }

    #[test]
    fn a_seeded_process_lives_until_its_exit_event() {
        let mut t = KernelTree::new(0);
        let rec = t.seed(ProcessLife {
            pid: 30,
            ppid: 1,
            comm: "sleep".into(),
            start_boot_ns: 5,
            exec_boot_ns: None,
            end_boot_ns: None,
            exec_chain: vec![],
            argv: vec!["sleep".into(), "60".into()],
            exit_code: None,
            signal: None,
            oom_killed: false,
            seeded: false,
        });
        assert_eq!(rec["state"], "running");
        assert_eq!(rec["seeded"], true);
        assert_eq!(t.live_count(), 1);
        let out = t.apply(&KernelEvent::Exit {
            hdr: h(30, 1, "sleep"),
            exit_code: Some(0),
            signal: None,
            core_dumped: false,
            group_dead: true,
        });
        assert_eq!(
            out[0]["state"], "exited",
            "a watch's pid 0 is no main child"
        );
        assert_eq!(t.live_count(), 0);
        assert!(t.lives()[0].seeded);
    }
}
