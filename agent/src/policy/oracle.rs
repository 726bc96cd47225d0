//! The audit oracle: every kernel event of the run that a policy speaks about, evaluated
//! against it — the decision the policy would have made, grounded in the event's `seq`.
//! Pure: no I/O, so every rule of evaluation is unit-tested.

use std::net::IpAddr;

use super::model::{Action, NetRule, PathRule, Policy, path_covers};
use crate::kernel::event::KernelEvent;

/// The operations of CONTRACT.md's policy decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Exec,
    ReadFile,
    WriteFile,
    Connect,
    Send,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Exec => "process.exec",
            Op::ReadFile => "filesystem.read_file",
            Op::WriteFile => "filesystem.write_file",
            Op::Connect => "network.connect",
            Op::Send => "network.send",
        }
    }
}

/// Values of the path variables for one run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Vars {
    pub workspace: String,
    pub home: String,
    pub tmpdir: String,
}

impl Vars {
    /// This vigil's: the workspace is the directory it runs in (the child's cwd), HOME and
    /// TMPDIR come from its environment (default `/root`, `/tmp`).
    pub fn of_this_process() -> Self {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        Vars {
            workspace: std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "/".into()),
            home: env("HOME", "/root"),
            tmpdir: env("TMPDIR", "/tmp"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub op: Op,
    pub action: Action,
    /// The deciding rule, or `default` when none matched.
    pub rule_id: String,
    /// What was decided about: a path, or `address:port`.
    pub subject: String,
}

pub struct Oracle {
    default: Action,
    read: Vec<PathRule>,
    write: Vec<PathRule>,
    exec: Vec<PathRule>,
    connect: Vec<NetRule>,
    send: Vec<NetRule>,
}

const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_ACCMODE: u32 = 0o3;
const ENOENT: i64 = -2;
const ENOTDIR: i64 = -20;

/// A rule path with its variable expanded and dots collapsed.
pub fn expand_path(path: &str, vars: &Vars) -> String {
    normalize(
        &path
            .replace("${WORKSPACE}", &vars.workspace)
            .replace("${HOME}", &vars.home)
            .replace("${TMPDIR}", &vars.tmpdir),
    )
}

fn expand(rules: &[PathRule], vars: &Vars) -> Vec<PathRule> {
    rules
        .iter()
        .map(|r| PathRule {
            paths: r.paths.iter().map(|p| expand_path(p, vars)).collect(),
            ..r.clone()
        })
        .collect()
}

/// `.` and `..` collapsed lexically, so `/work/../etc/passwd` is judged as `/etc/passwd`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

impl Oracle {
    pub fn new(policy: &Policy, vars: &Vars) -> Self {
        Oracle {
            default: policy.default,
            read: expand(&policy.read, vars),
            write: expand(&policy.write, vars),
            exec: expand(&policy.exec, vars),
            connect: policy.connect.clone(),
            send: policy.send.clone(),
        }
    }

    fn decide_path(&self, op: Op, rules: &[PathRule], path: &str) -> Decision {
        let path = normalize(path);
        let hit = rules
            .iter()
            .find(|r| r.paths.iter().any(|p| path_covers(p, &path)));
        self.decision(op, hit.map(|r| (r.action, &r.id)), path)
    }

    fn decide_net(&self, op: Op, rules: &[NetRule], ip: IpAddr, port: u16) -> Decision {
        let hit = rules.iter().find(|r| {
            let net = r.cidrs.iter().any(|c| c.admits(ip));
            net && (r.ports.is_empty() || r.ports.iter().any(|p| p.lo <= port && port <= p.hi))
        });
        let subject = match ip {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
        };
        self.decision(op, hit.map(|r| (r.action, &r.id)), subject)
    }

    fn decision(&self, op: Op, hit: Option<(Action, &String)>, subject: String) -> Decision {
        let (action, rule_id) = match hit {
            Some((a, id)) => (a, id.clone()),
            None => (self.default, "default".to_string()),
        };
        Decision {
            op,
            action,
            rule_id,
            subject,
        }
    }

    /// The decision the policy makes about one kernel event, if it speaks about it: execs,
    /// opens that reached a file (not ENOENT/ENOTDIR probes: nothing was accessed) with a known
    /// absolute path, and IPv4/IPv6 connects and sends (not unix sockets).
    pub fn evaluate(&self, ev: &KernelEvent) -> Option<Decision> {
        match ev {
            KernelEvent::Exec { filename, .. } => {
                Some(self.decide_path(Op::Exec, &self.exec, filename))
            }
            KernelEvent::ExecFailed {
                result,
                resolved_path: Some(path),
                ..
            } if *result != ENOENT && *result != ENOTDIR => {
                Some(self.decide_path(Op::Exec, &self.exec, path))
            }
            // An io_uring open's result is not known: it is judged as attempted.
            KernelEvent::Open {
                result,
                flags,
                resolved_path: Some(path),
                ..
            } if *result != Some(ENOENT) && *result != Some(ENOTDIR) => {
                let writes = flags & O_ACCMODE != 0 || flags & (O_CREAT | O_TRUNC) != 0;
                let (op, rules) = if writes {
                    (Op::WriteFile, &self.write)
                } else {
                    (Op::ReadFile, &self.read)
                };
                Some(self.decide_path(op, rules, path))
            }
            KernelEvent::Net {
                op,
                endpoint: Some(ep),
                ..
            } => {
                use crate::kernel::event::NetOp;
                let (op, rules) = match op {
                    NetOp::Connect => (Op::Connect, &self.connect),
                    NetOp::Send => (Op::Send, &self.send),
                    NetOp::Bind | NetOp::Accept => return None,
                };
                let ip: IpAddr = ep.address.as_deref()?.parse().ok()?;
                Some(self.decide_net(op, rules, ip, ep.port?))
            }
            _ => None,
        }
    }
}

/// The syscall's result, for events that carry one.
pub fn result_of(ev: &KernelEvent) -> Option<i64> {
    match ev {
        KernelEvent::ExecFailed { result, .. } => Some(*result),
        KernelEvent::Open { result, .. } | KernelEvent::Net { result, .. } => *result,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{Endpoint, Header, NetOp};
    use crate::policy::parse;

    fn hdr() -> Header {
        Header {
            version: 1,
            boot_ns: 0,
            cgroup_id: 1,
            pid: 5,
            tid: 5,
            ppid: 1,
            comm: "x".into(),
        }
    }

    fn oracle(yaml: &str) -> Oracle {
        let p = parse(yaml);
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        Oracle::new(
            &p.policy.expect("policy"),
            &Vars {
                workspace: "/w".into(),
                home: "/home/u".into(),
                tmpdir: "/tmp".into(),
            },
        )
    }

    fn open(path: &str, flags: u32, result: i64) -> KernelEvent {
        KernelEvent::Open {
            hdr: hdr(),
            result: Some(result),
            via: "syscall",
            dirfd: -100,
            flags,
            mode: 0,
            path: path.into(),
            path_truncated: false,
            resolved_path: Some(path.into()),
        }
    }

    fn net(op: NetOp, addr: &str, port: u16) -> KernelEvent {
        KernelEvent::Net {
            hdr: hdr(),
            op,
            result: Some(0),
            fd: Some(3),
            observed_at: "syscall_exit",
            endpoint: Some(Endpoint {
                family: "inet".into(),
                address: Some(addr.into()),
                port: Some(port),
            }),
            endpoint_source: "argument",
        }
    }

    const POLICY: &str = "version: 1\nname: t\nmode: audit\ndefault: deny\nfilesystem:\n  read:\n    - id: no-secrets\n      action: deny\n      paths: [/etc/shadow]\n    - id: all\n      paths: [/]\n  write:\n    - id: ws\n      paths: [\"${WORKSPACE}\"]\n  exec:\n    - id: bin\n      paths: [/usr/bin]\nnetwork:\n  connect:\n    - id: web\n      cidrs: [\"0.0.0.0/0\"]\n      ports: [443]\n    - id: local-db\n      cidrs: [\"127.0.0.1\"]\n      ports: [5432]\n";

    #[test]
    fn files_are_judged_by_first_matching_rule_with_variables_expanded() {
        let o = oracle(POLICY);
        let d = o.evaluate(&open("/etc/shadow", 0, 3)).expect("decision");
        assert_eq!(
            (d.op, d.action, d.rule_id.as_str()),
            (Op::ReadFile, Action::Deny, "no-secrets")
        );
        let d = o.evaluate(&open("/etc/hosts", 0, 3)).expect("decision");
        assert_eq!((d.action, d.rule_id.as_str()), (Action::Allow, "all"));
        // Writing (O_WRONLY|O_CREAT) inside the workspace, and escaping it with `..`.
        let d = o.evaluate(&open("/w/out/a.o", 0o101, 3)).expect("decision");
        assert_eq!(
            (d.op, d.action, d.rule_id.as_str()),
            (Op::WriteFile, Action::Allow, "ws")
        );
        let d = o
            .evaluate(&open("/w/../etc/passwd", 0o1, 3))
            .expect("decision");
        assert_eq!(
            (d.action, d.rule_id.as_str(), d.subject.as_str()),
            (Action::Deny, "default", "/etc/passwd")
        );
        // An open that found nothing accessed nothing.
        assert_eq!(o.evaluate(&open("/nope", 0, -2)), None);
        // A denied open (EACCES) is still an attempt.
        assert!(o.evaluate(&open("/etc/shadow", 0, -13)).is_some());
    }

    #[test]
    fn execs_and_networks_follow_their_lists_and_loopback_needs_naming() {
        let o = oracle(POLICY);
        let exec = |f: &str| KernelEvent::Exec {
            hdr: hdr(),
            filename: f.into(),
            argv: vec![],
            argv_truncated: false,
            uid: 0,
            gid: 0,
            cred_changed: false,
        };
        assert_eq!(
            o.evaluate(&exec("/usr/bin/cc")).map(|d| d.action),
            Some(Action::Allow)
        );
        assert_eq!(
            o.evaluate(&exec("/tmp/x")).map(|d| d.action),
            Some(Action::Deny)
        );
        let d = o
            .evaluate(&net(NetOp::Connect, "93.184.216.34", 443))
            .expect("decision");
        assert_eq!(
            (d.action, d.rule_id.as_str(), d.subject.as_str()),
            (Action::Allow, "web", "93.184.216.34:443")
        );
        // 0.0.0.0/0 does not open loopback; the rule naming 127.0.0.1 does, on its port only.
        let d = o
            .evaluate(&net(NetOp::Connect, "127.0.0.1", 443))
            .expect("decision");
        assert_eq!((d.action, d.rule_id.as_str()), (Action::Deny, "default"));
        let d = o
            .evaluate(&net(NetOp::Connect, "127.0.0.1", 5432))
            .expect("decision");
        assert_eq!((d.action, d.rule_id.as_str()), (Action::Allow, "local-db"));
        // No send rules: the default decides. Binds are not policy operations.
        let d = o
            .evaluate(&net(NetOp::Send, "10.0.0.1", 53))
            .expect("decision");
        assert_eq!((d.op, d.action), (Op::Send, Action::Deny));
        assert_eq!(o.evaluate(&net(NetOp::Bind, "0.0.0.0", 80)), None);
    }

    #[test]
    fn normalize_collapses_dots() {
        assert_eq!(normalize("/a/./b/../c"), "/a/c");
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(normalize("/w/"), "/w");
    }
}
