//! The network hooks of `--kernel-layer network` (`ebpf/network.bpf.c`): cgroup programs
//! attached to a run's cgroup only — connect4/6, sendmsg4/6, post_bind4/6 — so the rest of the
//! host never runs them and no syscall tracepoint is needed, plus the TCP-state program that
//! gives a TCP connect its outcome. Loaded the first time a run asks, attached per run cgroup,
//! detached when the run is unwatched.

use std::collections::HashMap;
use std::path::Path;

use aya::Ebpf;
use aya::programs::cgroup_sock::CgroupSockLinkId;
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::{CgroupAttachMode, Program, RawTracePoint};

use super::abi::{Net, NetPod};
use super::sensor::ProbeStatus;

/// The cgroup programs, in attach order.
const HOOKS: [&str; 6] = [
    "vigil_connect4",
    "vigil_connect6",
    "vigil_sendmsg4",
    "vigil_sendmsg6",
    "vigil_post_bind4",
    "vigil_post_bind6",
];
/// How health names the hooks, and the tracepoint program.
pub const NET_HOOK_PROBE: &str = "network.cgroup_hooks";
pub const TCP_STATE_PROBE: &str = "network.tcp_state";
/// The kernel's table of TCP connects awaiting their outcome, by socket cookie.
const PENDING_MAP: &str = "tcp_connecting";

enum Link {
    Addr(&'static str, CgroupSockAddrLinkId),
    Sock(&'static str, CgroupSockLinkId),
}

#[derive(Default)]
pub struct NetHooks {
    /// None until a run first asks, then whether the hooks loaded.
    loaded: Option<Result<(), String>>,
    /// Links by the run cgroup they are attached to.
    links: HashMap<u64, Vec<Link>>,
}

impl NetHooks {
    /// Load the hooks once; the TCP-state program's status comes back the first time.
    fn load(&mut self, ebpf: &mut Ebpf) -> (Result<(), String>, Option<ProbeStatus>) {
        if let Some(done) = &self.loaded {
            return (done.clone(), None);
        }
        let load_all = |ebpf: &mut Ebpf| -> Result<(), String> {
            for name in HOOKS {
                let loaded = match ebpf.program_mut(name) {
                    Some(Program::CgroupSockAddr(p)) => p.load(),
                    Some(Program::CgroupSock(p)) => p.load(),
                    Some(_) => return Err(format!("{name}: not a cgroup sock program")),
                    None => return Err(format!("program {name} missing from the object")),
                };
                loaded.map_err(|e| format!("{name}: {}", super::sensor::brief(&e)))?;
            }
            Ok(())
        };
        let done = load_all(ebpf);
        let tcp = match ebpf
            .program_mut("vigil_tcp_state")
            .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
        {
            None => ProbeStatus::Failed("program vigil_tcp_state missing from the object".into()),
            Some(prog) => match prog.load() {
                Err(e) => ProbeStatus::Failed(format!(
                    "raw_tp/inet_sock_set_state: {}",
                    super::sensor::brief(&e)
                )),
                Ok(()) => super::sensor::attach_first(prog, &["inet_sock_set_state"]),
            },
        };
        self.loaded = Some(done.clone());
        (done, Some(tcp))
    }

    /// Attach every hook to the cgroup at `dir`; on any failure none stays attached. Returns
    /// the hooks' status and, the first time, the TCP-state program's.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        cgroup_id: u64,
        dir: &Path,
    ) -> (ProbeStatus, Option<ProbeStatus>) {
        let (loaded, tcp) = self.load(ebpf);
        if let Err(e) = loaded {
            return (ProbeStatus::Failed(e), tcp);
        }
        let cgroup = match std::fs::File::open(dir) {
            Ok(f) => f,
            Err(e) => return (ProbeStatus::Failed(format!("{}: {e}", dir.display())), tcp),
        };
        let mut links = Vec::new();
        let mut failed = None;
        for name in HOOKS {
            // Single is aya's "no flags": on 5.7+ that is a bpf_link, always multi-attach in the
            // kernel, so a policy's enforcing programs share these attach points.
            let mode = CgroupAttachMode::Single;
            let link = match ebpf.program_mut(name) {
                Some(Program::CgroupSockAddr(p)) => {
                    p.attach(&cgroup, mode).map(|l| Link::Addr(name, l))
                }
                Some(Program::CgroupSock(p)) => {
                    p.attach(&cgroup, mode).map(|l| Link::Sock(name, l))
                }
                _ => continue,
            };
            match link {
                Ok(l) => links.push(l),
                Err(e) => {
                    let why =
                        std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
                    failed = Some(format!("{name}: {e}{why}"));
                    break;
                }
            }
        }
        self.links.insert(cgroup_id, links);
        match failed {
            Some(e) => {
                self.detach(ebpf, cgroup_id);
                (ProbeStatus::Failed(e), tcp)
            }
            None => (ProbeStatus::Attached, tcp),
        }
    }

    /// Detach the hooks from a run cgroup (a no-op when none are attached).
    pub fn detach(&mut self, ebpf: &mut Ebpf, cgroup_id: u64) {
        for link in self.links.remove(&cgroup_id).unwrap_or_default() {
            let _ = match link {
                Link::Addr(name, id) => match ebpf.program_mut(name) {
                    Some(Program::CgroupSockAddr(p)) => p.detach(id),
                    _ => Ok(()),
                },
                Link::Sock(name, id) => match ebpf.program_mut(name) {
                    Some(Program::CgroupSock(p)) => p.detach(id),
                    _ => Ok(()),
                },
            };
        }
    }
}

/// Every TCP connect still awaiting its outcome, by socket cookie.
pub fn pending_connects(ebpf: &mut Ebpf) -> Vec<(u64, Net)> {
    let Some(map) = ebpf.map_mut(PENDING_MAP) else {
        return Vec::new();
    };
    match aya::maps::HashMap::<_, u64, NetPod>::try_from(map) {
        Ok(pending) => pending
            .iter()
            .filter_map(Result::ok)
            .map(|(cookie, net)| (cookie, net.0))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Take one connect out of the kernel's table.
pub fn forget_connect(ebpf: &mut Ebpf, cookie: u64) {
    if let Some(map) = ebpf.map_mut(PENDING_MAP)
        && let Ok(mut pending) = aya::maps::HashMap::<_, u64, NetPod>::try_from(map)
    {
        let _ = pending.remove(&cookie);
    }
}
