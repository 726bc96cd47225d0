//! The run's process tree from kernel events: exact where the procfs sampler can only sample.
//! Turns fork/exec/exit/signal events into `subprocess_state` records: `spawned` (fork of a
//! process, not a thread), `exec` (with argv), `exited` (code or signal) and `killed_by` (the
//! sender and signal of the delivered signal that ended it).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::event::KernelEvent;
use crate::evidence::redact::Redactor;

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
    /// Thread creations seen (not processes); counted, not reported.
    pub threads: u64,
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

    /// The `subprocess_state` records one kernel event implies.
    pub fn apply(&mut self, ev: &KernelEvent, redactor: &Redactor) -> Vec<Value> {
        match ev {
            KernelEvent::Fork {
                is_thread: true, ..
            } => {
                self.threads += 1;
                vec![]
            }
            KernelEvent::Fork { hdr, child_pid, .. } => {
                vec![state(*child_pid, hdr.pid, &hdr.comm, "spawned")]
            }
            KernelEvent::Exec {
                hdr,
                argv,
                filename,
                ..
            } => {
                let mut s = state(hdr.pid, hdr.ppid, &hdr.comm, "exec");
                s["argv"] = json!(redactor.redact_argv(argv));
                s["filename"] = json!(redactor.mask_str(filename));
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
            KernelEvent::Signal { .. } | KernelEvent::Write { .. } => vec![],
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
                if hdr.pid == self.main_pid {
                    return vec![]; // reported exactly from waitid
                }
                let mut out = Vec::new();
                if let (Some(sig), Some((sender, sender_comm, sent))) = (signal, fatal)
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
        Header {
            version: 1,
            boot_ns: 0,
            cgroup_id: 1,
            pid,
            tid: pid,
            ppid,
            comm: comm.into(),
        }
    }

    #[test]
    fn builds_spawn_exec_exit_and_attributes_kills() {
        let r = Redactor::new(&[]);
        let mut t = KernelTree::new(10);
        let fork = KernelEvent::Fork {
            hdr: h(10, 1, "sh"),
            child_pid: 11,
            child_tid: 11,
            is_thread: false,
        };
        assert_eq!(t.apply(&fork, &r)[0]["state"], "spawned");
        let thread = KernelEvent::Fork {
            hdr: h(11, 10, "x"),
            child_pid: 11,
            child_tid: 12,
            is_thread: true,
        };
        assert!(t.apply(&thread, &r).is_empty());
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
        assert_eq!(t.apply(&exec, &r)[0]["argv"], json!(["sleep", "30"]));
        let kill = KernelEvent::Signal {
            hdr: h(10, 1, "sh"),
            target_pid: 11,
            target_tid: 11,
            signal: 15,
            result: 0,
            group: false,
        };
        assert!(t.apply(&kill, &r).is_empty());
        let exit = KernelEvent::Exit {
            hdr: h(11, 10, "sleep"),
            exit_code: None,
            signal: Some(15),
            core_dumped: false,
            group_dead: true,
        };
        let out = t.apply(&exit, &r);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["state"], "killed_by");
        assert_eq!(out[0]["killer_pid"], 10);
        assert_eq!(out[1]["state"], "exited");
        assert_eq!(out[1]["signal"], 15);
        // An exit by another cause than the signal sent is not attributed to the sender.
        t.apply(
            &KernelEvent::Signal {
                hdr: h(10, 1, "sh"),
                target_pid: 12,
                target_tid: 12,
                signal: 15,
                result: 0,
                group: false,
            },
            &r,
        );
        let clean = KernelEvent::Exit {
            hdr: h(12, 10, "t"),
            exit_code: Some(0),
            signal: None,
            core_dumped: false,
            group_dead: true,
        };
        assert_eq!(t.apply(&clean, &r).len(), 1);
        // The main child's exit comes from waitid, not from here.
        let main = KernelEvent::Exit {
            hdr: h(10, 1, "sh"),
            exit_code: Some(0),
            signal: None,
            core_dumped: false,
            group_dead: true,
        };
        assert!(t.apply(&main, &r).is_empty());
    }
}
