//! The sensor: the programs of `ebpf/vigil.bpf.c` (process lifecycle, signals, write progress,
//! file opens, network calls, OOM kills) and their maps, loaded and attached as a unit (a
//! tetragon "sensor"). A program that cannot load or attach is recorded with its reason and the
//! others go on: a weaker observation, never a fatal one.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::RawTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use super::event::{KIND_MAX, kind_name};
use super::net_hooks::NetHooks;
pub use super::net_hooks::{NET_HOOK_PROBE, TCP_STATE_PROBE};
use super::syscall_path::SyscallPath;

/// The compiled object, embedded at build time (see build.rs).
pub static SENSOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vigil.bpf.o"));

/// The sensor's programs: (program, raw tracepoint, the probes health reports it as).
/// Each program, the tracepoints it may attach to (the first that exists wins: a tracepoint
/// renamed across kernels keeps its program), and the probes of health it stands for.
const PROGRAMS: [(&str, &[&str], &[&str]); 7] = [
    (
        "vigil_fork",
        &["sched_process_fork"],
        &["process.sched_process_fork"],
    ),
    (
        "vigil_exec",
        &["sched_process_exec"],
        &["process.sched_process_exec"],
    ),
    (
        "vigil_exit",
        &["sched_process_exit"],
        &["process.sched_process_exit"],
    ),
    (
        "vigil_cgroup_mkdir",
        &["cgroup_mkdir"],
        &["process.cgroup_mkdir"],
    ),
    (
        "vigil_signal",
        &["signal_generate"],
        &["process.signal_generate"],
    ),
    (
        "vigil_write",
        // writeback_dirty_page before 5.17; the program reads none of its arguments.
        &["writeback_dirty_folio", "writeback_dirty_page"],
        &["process.writeback_dirty_folio"],
    ),
    ("vigil_oom", &["mark_victim"], &["oom.mark_victim"]),
];

/// The probes of health the syscall path (fexit or tracepoint: `syscall_path.rs`) stands for.
const SYSCALL_PROBES: [&str; 2] = ["file.open", "network.socket"];

/// Which of the sensor's programs to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Full,
    /// All but the syscall program: while it is attached every task of the host takes the
    /// slow syscall path, which a host full of syscall-heavy neighbours may not want to pay.
    Process,
    /// Process, plus network evidence from cgroup hooks attached to the run's cgroup only (and
    /// a TCP-state tracepoint for connect outcomes): no syscall hook at all.
    Network,
}

impl Scope {
    /// Whether a run of this scope takes `ev`. The daemon's one stream carries what any run
    /// asked for: a run in `network` scope must not also get the syscall program's copy of its
    /// connects (attached for a neighbour), nor a `process` run the neighbour's file opens.
    pub fn takes(self, ev: &super::KernelEvent) -> bool {
        use super::KernelEvent as E;
        match (self, ev) {
            (Scope::Full, _) => true,
            (_, E::Open { .. } | E::ExecFailed { .. } | E::Unfollowed { .. }) => false,
            (Scope::Process, E::Net { .. }) => false,
            (Scope::Network, E::Net { observed_at, .. }) => *observed_at != "syscall_exit",
            _ => true,
        }
    }

    /// The `--kernel-layer` value that asks for it.
    pub fn flag(self) -> &'static str {
        match self {
            Scope::Full => "auto",
            Scope::Process => "process",
            Scope::Network => "network",
        }
    }
}

/// Attach `prog` to the first of `tracepoints` this kernel has.
pub(super) fn attach_first(prog: &mut RawTracePoint, tracepoints: &[&str]) -> ProbeStatus {
    let mut errors = Vec::new();
    for (i, tp) in tracepoints.iter().enumerate() {
        match prog.attach(tp) {
            Ok(_) if i == 0 => return ProbeStatus::Attached,
            Ok(_) => {
                return ProbeStatus::AttachedTo(format!(
                    "raw_tp/{tp} ({} is not in this kernel)",
                    tracepoints[0]
                ));
            }
            Err(e) => errors.push(format!("raw_tp/{tp}: {e}")),
        }
    }
    ProbeStatus::Failed(errors.join("; "))
}

/// A load error for health: the kernel's refusal without the whole verifier log (which can run
/// to hundreds of lines): the text before it and the verifier's last word.
pub(super) fn brief(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return text;
    };
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The log ends with statistics ("verification time", "processed … insns"); the error is
    // the line before them.
    let last = lines
        .iter()
        .rev()
        .find(|l| {
            !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed ")
                && !l.starts_with("insns processed")
        })
        .copied()
        .unwrap_or("");
    if last.is_empty() {
        return head.trim_end().trim_end_matches('.').to_string();
    }
    format!(
        "{} (verifier: {last})",
        head.trim_end().trim_end_matches('.')
    )
}

impl ProbeStatus {
    pub fn is_attached(&self) -> bool {
        matches!(self, ProbeStatus::Attached | ProbeStatus::AttachedTo(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeStatus {
    Attached,
    /// Attached to the older name of its tracepoint (this one).
    AttachedTo(String),
    Unavailable(String),
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("kernel BTF unavailable (/sys/kernel/btf/vmlinux): {0}")]
    NoBtf(String),
    #[error("loading vigil.bpf.o: {0}")]
    Load(String),
    #[error("map {map}: {error}")]
    Map { map: &'static str, error: String },
}

pub struct KernelSensor {
    ebpf: Ebpf,
    probes: BTreeMap<String, ProbeStatus>,
    /// The programs behind file.open and network.socket (a daemon attaches them only while a
    /// run needs them).
    syscalls: SyscallPath,
    /// The network hooks (`--kernel-layer network`) and the run cgroups they are attached to.
    net: NetHooks,
    /// The io_uring program, attached and detached with the syscall program.
    uring: super::uring::Uring,
}

fn map_err(map: &'static str) -> impl Fn(String) -> SensorError {
    move |error| SensorError::Map { map, error }
}

/// The syscall program's status while it is not attached.
fn syscalls_off(why: &str) -> ProbeStatus {
    ProbeStatus::Unavailable(format!(
        "not attached: {why} (syscall probes put every task of the host on the slow syscall path)"
    ))
}

impl KernelSensor {
    /// Load the object with the host's BTF (CO-RE relocations) and attach the programs of
    /// `scope`.
    pub fn load(scope: Scope) -> Result<Self, SensorError> {
        // The kernel's BTF, for CO-RE and for the fexit programs' targets: the one parse of a
        // run (~60 ms, most of start-up).
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(SensorError::NoBtf("/sys/kernel/btf/vmlinux missing".into()));
        }
        let btf = Btf::from_sys_fs().map_err(|e| SensorError::NoBtf(e.to_string()))?;
        let ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(SENSOR_OBJECT)
            .map_err(|e| SensorError::Load(e.to_string()))?;
        let mut me = KernelSensor {
            ebpf,
            probes: BTreeMap::new(),
            syscalls: SyscallPath::new(btf),
            net: NetHooks::default(),
            uring: Default::default(),
        };
        for (name, tracepoints, names) in PROGRAMS {
            let tracepoint = tracepoints[0];
            let status = match me.ebpf.program_mut(name) {
                None => ProbeStatus::Failed(format!("program {name} missing from the object")),
                Some(p) => match <&mut RawTracePoint>::try_from(p) {
                    Err(e) => ProbeStatus::Failed(e.to_string()),
                    Ok(prog) => match prog.load() {
                        Err(e) => {
                            ProbeStatus::Failed(format!("raw_tp/{tracepoint}: {}", brief(&e)))
                        }
                        Ok(()) => attach_first(prog, tracepoints),
                    },
                },
            };
            for probe in names {
                me.probes.insert((*probe).to_string(), status.clone());
            }
        }
        let off = syscalls_off(&format!("--kernel-layer {}", scope.flag()));
        for probe in SYSCALL_PROBES {
            me.probes.insert(probe.to_string(), off.clone());
        }
        if scope == Scope::Full {
            me.set_syscalls(true);
        } else {
            me.probes.insert(
                super::uring::URING_PROBE.into(),
                ProbeStatus::Unavailable(format!("not attached: --kernel-layer {}", scope.flag())),
            );
        }
        Ok(me)
    }

    /// Attach the network hooks to the run cgroup `cgroup_id` (directory `dir`): its sockets'
    /// connects, addressed sends and binds are reported from now on, and nobody else's. The
    /// hooks load the first time a run asks (with the TCP-state program, which health lists
    /// from then on).
    pub fn attach_net(&mut self, cgroup_id: u64, dir: &std::path::Path) -> ProbeStatus {
        let (status, tcp) = self.net.attach(&mut self.ebpf, cgroup_id, dir);
        if let Some(tcp) = tcp {
            self.probes.insert(TCP_STATE_PROBE.into(), tcp);
        }
        status
    }

    /// Detach the network hooks from a run cgroup (a no-op when none are attached).
    pub fn detach_net(&mut self, cgroup_id: u64) {
        self.net.detach(&mut self.ebpf, cgroup_id);
    }

    /// TCP connects of the run `root` whose outcome the kernel never reported (refused before
    /// their SYN: a policy's EPERM, no route), taken out of the kernel's table: they are still
    /// connects the run made, reported with their result unknown.
    pub fn take_unresolved_connects(&mut self, root: u64) -> Vec<super::KernelEvent> {
        let pending = super::net_hooks::pending_connects(&mut self.ebpf);
        let mut mine = Vec::new();
        for (cookie, net) in pending {
            let cg = net.h.cgroup_id;
            if cg == root || self.root_of(cg) == Some(root) {
                super::net_hooks::forget_connect(&mut self.ebpf, cookie);
                if let Ok(ev) = super::decode(zerocopy::IntoBytes::as_bytes(&net)) {
                    mine.push(ev);
                }
            }
        }
        mine.sort_by_key(|e| e.header().boot_ns);
        mine
    }

    pub fn probes(&self) -> &BTreeMap<String, ProbeStatus> {
        &self.probes
    }

    /// Whether the syscall path is attached now.
    pub fn syscalls_attached(&self) -> bool {
        self.syscalls.attached()
    }

    /// Choose and load the syscall path without attaching it (a daemon, at its start).
    pub fn prepare_syscalls(&mut self) {
        self.syscalls.prepare(&mut self.ebpf);
    }

    /// Attach or detach the syscall path (file.open, network.socket), choosing it the first
    /// time. A path that failed stays failed.
    pub fn set_syscalls(&mut self, on: bool) {
        // io_uring opens are file evidence too, for the same runs.
        let uring = self.uring.set(&mut self.ebpf, on);
        self.probes.insert(super::uring::URING_PROBE.into(), uring);
        let status = self
            .syscalls
            .set(&mut self.ebpf, on)
            .unwrap_or_else(|| syscalls_off("no run of this daemon needs them now"));
        for probe in SYSCALL_PROBES {
            self.probes.insert(probe.to_string(), status.clone());
        }
    }

    fn watched(&mut self) -> Result<HashMap<&mut MapData, u64, u64>, SensorError> {
        let map = self
            .ebpf
            .map_mut("watched")
            .ok_or_else(|| map_err("watched")("missing".into()))?;
        HashMap::try_from(map).map_err(|e| map_err("watched")(e.to_string()))
    }

    /// Report events of this cgroup (and of cgroups created beneath it from now on).
    pub fn watch(&mut self, cgroup_id: u64) -> Result<(), SensorError> {
        self.watched()?
            .insert(cgroup_id, cgroup_id, 0)
            .map_err(|e| map_err("watched")(e.to_string()))
    }

    /// Report events of `root`, of every cgroup already beneath it (`vigil watch`), and of
    /// cgroups created beneath it from now on. `beneath` lists the existing ones; it is called
    /// after `root` is in the filter, and again until a listing brings nothing new, so a cgroup
    /// made meanwhile is caught by the listing or by the kernel's `cgroup_mkdir` program.
    /// Returns how many cgroups beneath `root` were added.
    pub fn watch_subtree(
        &mut self,
        root: u64,
        beneath: &dyn Fn() -> Vec<u64>,
    ) -> Result<usize, SensorError> {
        self.watch(root)?;
        let mut known = std::collections::HashSet::new();
        for _ in 0..4 {
            let new: Vec<u64> = beneath()
                .into_iter()
                .filter(|id| known.insert(*id))
                .collect();
            if new.is_empty() {
                break;
            }
            let mut watched = self.watched()?;
            for id in new {
                watched
                    .insert(id, root, 0)
                    .map_err(|e| map_err("watched")(e.to_string()))?;
            }
        }
        Ok(known.len())
    }

    /// Stop reporting the run whose cgroup is `root`, and every cgroup created beneath it.
    pub fn unwatch(&mut self, root: u64) -> Result<usize, SensorError> {
        self.detach_net(root);
        let mut watched = self.watched()?;
        let ids: Vec<u64> = watched
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, r)| *r == root)
            .map(|(id, _)| id)
            .collect();
        for id in &ids {
            let _ = watched.remove(id);
        }
        Ok(ids.len())
    }

    /// The run cgroup (root of a watched subtree) that `cgroup_id` belongs to.
    pub fn root_of(&mut self, cgroup_id: u64) -> Option<u64> {
        self.watched().ok()?.get(&cgroup_id, 0).ok()
    }

    /// Events the kernel could not reserve ring-buffer space for, summed over CPUs, by kind
    /// (kinds with no loss are left out).
    pub fn lost(&self) -> Result<BTreeMap<&'static str, u64>, SensorError> {
        let map = self
            .ebpf
            .map("lost")
            .ok_or_else(|| map_err("lost")("missing".into()))?;
        let lost: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| map_err("lost")(e.to_string()))?;
        let mut by_kind = BTreeMap::new();
        for kind in 0..KIND_MAX {
            let per_cpu = lost
                .get(&kind, 0)
                .map_err(|e| map_err("lost")(e.to_string()))?;
            let n: u64 = per_cpu.iter().sum();
            if n > 0 {
                *by_kind.entry(kind_name(kind)).or_insert(0) += n;
            }
        }
        Ok(by_kind)
    }

    /// Ring-buffer losses of the run whose cgroup is `root`, by kind; with `forget`, its
    /// counters are removed (the run is over).
    pub fn lost_of_run(
        &mut self,
        root: u64,
        forget: bool,
    ) -> Result<BTreeMap<&'static str, u64>, SensorError> {
        let map = self
            .ebpf
            .map_mut("lost_by_run")
            .ok_or_else(|| map_err("lost_by_run")("missing".into()))?;
        let mut by_run: HashMap<_, u64, u64> =
            HashMap::try_from(map).map_err(|e| map_err("lost_by_run")(e.to_string()))?;
        let mut by_kind = BTreeMap::new();
        for kind in 0..KIND_MAX {
            let key = (root << 5) | u64::from(kind);
            if let Ok(n) = by_run.get(&key, 0) {
                *by_kind.entry(kind_name(kind)).or_insert(0) += n;
                if forget {
                    let _ = by_run.remove(&key);
                }
            }
        }
        Ok(by_kind)
    }

    /// The event ring buffer (taken once; the reader owns it).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, SensorError> {
        let map = self
            .ebpf
            .take_map("events")
            .ok_or_else(|| map_err("events")("already taken".into()))?;
        RingBuf::try_from(map).map_err(|e| map_err("events")(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_refusal_is_told_in_one_line() {
        let e = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: 0: R1=ctx()\n1: (85) call bpf_x\n176: (85) call unknown#195896080\ninvalid func unknown#195896080\nverification time 31848 usec\nstack depth 32 max 0\nprocessed 308 insns (limit 1000000)\n";
        assert_eq!(
            brief(&e),
            "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22) (verifier: invalid func unknown#195896080)"
        );
        assert_eq!(brief(&"no such file"), "no such file");
    }

    /// On the real kernel (root, BTF): a program whose first tracepoint name this kernel lacks
    /// attaches to the next, and health says which; none existing is a failure naming each.
    #[test]
    fn a_renamed_tracepoint_falls_back_to_the_name_this_kernel_has() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "loads eBPF: run as root");
        let mut ebpf = EbpfLoader::new()
            .load(SENSOR_OBJECT)
            .expect("load the object");
        let prog: &mut RawTracePoint = ebpf
            .program_mut("vigil_write")
            .expect("vigil_write")
            .try_into()
            .expect("raw_tp");
        prog.load().expect("verifier");
        match attach_first(prog, &["vigil_no_such_tracepoint", "writeback_dirty_folio"]) {
            ProbeStatus::AttachedTo(via) => assert!(
                via.contains("raw_tp/writeback_dirty_folio") && via.contains("not in this kernel"),
                "{via}"
            ),
            other => panic!("{other:?}"),
        }
        match attach_first(prog, &["vigil_nope_a", "vigil_nope_b"]) {
            ProbeStatus::Failed(why) => {
                assert!(
                    why.contains("vigil_nope_a") && why.contains("vigil_nope_b"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
