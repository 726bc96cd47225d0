//! Which programs bring file opens, failed execs and network calls: fexit programs on the
//! syscall functions (`ebpf/fastpath.bpf.c`) where the kernel allows tracing programs, else the
//! `sys_exit` raw tracepoint (`ebpf/syscalls.bpf.c`). Same events either way; the difference is
//! what the rest of the host pays while a run is watched: with the tracepoint every task of the
//! host takes the slow syscall path for every syscall, with fexit nothing but the twelve
//! followed functions are touched (a trampoline and the cgroup lookup).
//!
//! The path is chosen when a standalone run asks for file evidence (loading it costs verifier
//! time a `--kernel-layer process|network` run should not pay), or at a daemon's start, and
//! kept: detaching and re-attaching is cheap, re-verifying is not. `VIGIL_SYSCALL_PATH=tracepoint` forces the
//! tracepoint (to compare both paths on one kernel); `fexit` makes its refusal a failure
//! instead of a fallback (to test it).

use aya::programs::fexit::FExitLinkId;
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::{FExit, RawTracePoint};
use aya::{Btf, Ebpf};

use super::sensor::{ProbeStatus, brief};

/// The tracepoint path's program.
pub const SYSCALL_PROGRAM: &str = "vigil_sys_exit";

/// The environment variable that chooses the path: `auto` (default), `tracepoint`, `fexit`.
pub const PATH_ENV: &str = "VIGIL_SYSCALL_PATH";

/// (program, kernel function): the native functions, each required for the fast path.
const NATIVE: [(&str, &str); 12] = [
    ("vigil_fx_open", "__x64_sys_open"),
    ("vigil_fx_creat", "__x64_sys_creat"),
    ("vigil_fx_openat", "__x64_sys_openat"),
    ("vigil_fx_openat2", "__x64_sys_openat2"),
    ("vigil_fx_execve", "__x64_sys_execve"),
    ("vigil_fx_execveat", "__x64_sys_execveat"),
    ("vigil_fx_connect", "__x64_sys_connect"),
    ("vigil_fx_bind", "__x64_sys_bind"),
    ("vigil_fx_accept", "__x64_sys_accept"),
    ("vigil_fx_accept4", "__x64_sys_accept4"),
    ("vigil_fx_sendto", "__x64_sys_sendto"),
    ("vigil_fx_sendmsg", "__x64_sys_sendmsg"),
];

/// The 32-bit entry points of the same kinds (the i386 table's functions), each required too:
/// without one, a 32-bit call of that kind would pass unseen (the tracepoint sees them all).
const COMPAT: [(&str, &str); 12] = [
    ("vigil_cx_5", "__ia32_compat_sys_open"),
    ("vigil_cx_8", "__ia32_sys_creat"),
    ("vigil_cx_11", "__ia32_compat_sys_execve"),
    ("vigil_cx_102", "__ia32_compat_sys_socketcall"),
    ("vigil_cx_295", "__ia32_compat_sys_openat"),
    ("vigil_cx_358", "__ia32_compat_sys_execveat"),
    ("vigil_cx_361", "__ia32_sys_bind"),
    ("vigil_cx_362", "__ia32_sys_connect"),
    ("vigil_cx_364", "__ia32_sys_accept4"),
    ("vigil_cx_369", "__ia32_sys_sendto"),
    ("vigil_cx_370", "__ia32_compat_sys_sendmsg"),
    ("vigil_cx_437", "__ia32_sys_openat2"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Auto,
    Tracepoint,
    Fexit,
}

fn wanted() -> Result<Wanted, String> {
    parse_wanted(std::env::var(PATH_ENV).ok().as_deref())
}

fn parse_wanted(value: Option<&str>) -> Result<Wanted, String> {
    match value {
        None | Some("") | Some("auto") => Ok(Wanted::Auto),
        Some("tracepoint") => Ok(Wanted::Tracepoint),
        Some("fexit") => Ok(Wanted::Fexit),
        Some(other) => Err(format!(
            "{PATH_ENV}={other:?} is not a path: auto, tracepoint or fexit"
        )),
    }
}

enum Chosen {
    Fexit(Vec<Option<FExitLinkId>>),
    /// The tracepoint, and why not fexit.
    Tracepoint(Option<RawTracePointLinkId>, String),
    Failed(String),
}

pub struct SyscallPath {
    /// The kernel's BTF, kept until the path is chosen (fexit programs load against it).
    btf: Option<Btf>,
    chosen: Option<Chosen>,
}

fn fexit<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut FExit, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))
        .and_then(|p| <&mut FExit>::try_from(p).map_err(|e| e.to_string()))
}

fn tracepoint(ebpf: &mut Ebpf) -> Result<&mut RawTracePoint, String> {
    ebpf.program_mut(SYSCALL_PROGRAM)
        .ok_or_else(|| format!("program {SYSCALL_PROGRAM} missing from the object"))
        .and_then(|p| <&mut RawTracePoint>::try_from(p).map_err(|e| e.to_string()))
}

/// Load every fast-path program; the first refusal ends the attempt (a kernel that refuses
/// one tracing program refuses them all: lockdown, no trampolines).
fn load_fexit(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    for (i, (name, func)) in NATIVE.iter().chain(&COMPAT).enumerate() {
        let loaded = fexit(ebpf, name).and_then(|p| {
            p.load(func, btf)
                .map_err(|e| format!("fexit/{func}: {}", brief(&e)))
        });
        if let Err(e) = loaded {
            // The ones loaded so far would only hold kernel memory.
            for (name, _) in NATIVE.iter().chain(&COMPAT).take(i) {
                if let Ok(p) = fexit(ebpf, name) {
                    let _ = p.unload();
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Bring one program's link to `on`: attached when missing, detached when present.
fn toggle<P, L, E: std::fmt::Display>(
    p: &mut P,
    link: &mut Option<L>,
    on: bool,
    attach: impl FnOnce(&mut P) -> Result<L, E>,
    detach: impl FnOnce(&mut P, L),
) -> Result<(), String> {
    match (on, link.take()) {
        (true, None) => *link = Some(attach(p).map_err(|e| e.to_string())?),
        (true, Some(l)) => *link = Some(l),
        (false, Some(l)) => detach(p, l),
        (false, None) => {}
    }
    Ok(())
}

/// The health text of an attached path.
fn describe(chosen: &Chosen) -> ProbeStatus {
    match chosen {
        Chosen::Fexit(_) => ProbeStatus::AttachedTo(format!(
            "fexit on the syscall functions ({} native, {} 32-bit: __x64_sys_openat, …): no syscall tracepoint, the rest of the host pays nothing per syscall",
            NATIVE.len(),
            COMPAT.len()
        )),
        Chosen::Tracepoint(_, why) => ProbeStatus::AttachedTo(format!(
            "raw_tp/sys_exit: every task of the host takes the slow syscall path ({why})"
        )),
        Chosen::Failed(e) => ProbeStatus::Failed(e.clone()),
    }
}

impl SyscallPath {
    pub fn new(btf: Btf) -> Self {
        SyscallPath {
            btf: Some(btf),
            chosen: None,
        }
    }

    pub fn attached(&self) -> bool {
        match &self.chosen {
            Some(Chosen::Fexit(links)) => links.iter().any(Option::is_some),
            Some(Chosen::Tracepoint(link, _)) => link.is_some(),
            _ => false,
        }
    }

    /// Choose and load the path now, attaching nothing.
    pub fn prepare(&mut self, ebpf: &mut Ebpf) {
        if self.chosen.is_none() {
            self.chosen = Some(self.choose(ebpf));
        }
    }

    /// Choose (the first time) and attach, or detach. The status of file.open and
    /// network.socket when attached; `None` when detached (the caller says why).
    pub fn set(&mut self, ebpf: &mut Ebpf, on: bool) -> Option<ProbeStatus> {
        if self.chosen.is_none() {
            if !on {
                return None;
            }
            self.prepare(ebpf);
        }
        let chosen = self.chosen.as_mut()?;
        let result = match chosen {
            Chosen::Failed(_) => Ok(()),
            Chosen::Fexit(links) => {
                let mut result = Ok(());
                for ((name, func), link) in NATIVE.iter().chain(&COMPAT).zip(links.iter_mut()) {
                    result = fexit(ebpf, name).and_then(|p| {
                        toggle(
                            p,
                            link,
                            on,
                            |p| p.attach(),
                            |p, l| {
                                let _ = p.detach(l);
                            },
                        )
                        .map_err(|e| format!("fexit/{func}: {e}"))
                    });
                    if result.is_err() {
                        break;
                    }
                }
                if result.is_err() {
                    // All or nothing: a function left out would be a blind spot.
                    for ((name, _), link) in NATIVE.iter().chain(&COMPAT).zip(links.iter_mut()) {
                        if let (Some(l), Ok(p)) = (link.take(), fexit(ebpf, name)) {
                            let _ = p.detach(l);
                        }
                    }
                }
                result
            }
            Chosen::Tracepoint(link, _) => tracepoint(ebpf).and_then(|p| {
                toggle(
                    p,
                    link,
                    on,
                    |p| p.attach("sys_exit"),
                    |p, l| {
                        let _ = p.detach(l);
                    },
                )
                .map_err(|e| format!("raw_tp/sys_exit: {e}"))
            }),
        };
        if let Err(e) = result {
            *chosen = Chosen::Failed(e);
        }
        let failed = matches!(chosen, Chosen::Failed(_));
        (on || failed).then(|| describe(chosen))
    }

    fn choose(&mut self, ebpf: &mut Ebpf) -> Chosen {
        let wanted = match wanted() {
            Ok(w) => w,
            Err(e) => return Chosen::Failed(e),
        };
        // The BTF is needed once: drop it after (a parsed kernel BTF is megabytes a daemon
        // would carry for nothing).
        let btf = self.btf.take();
        let why = match (wanted, btf) {
            (Wanted::Tracepoint, _) => format!("{PATH_ENV}=tracepoint"),
            (_, None) => "no kernel BTF to load fexit programs against".into(),
            (_, Some(btf)) => match load_fexit(ebpf, &btf) {
                Ok(()) => {
                    return Chosen::Fexit((0..NATIVE.len() + COMPAT.len()).map(|_| None).collect());
                }
                Err(e) if wanted == Wanted::Fexit => {
                    return Chosen::Failed(format!("{PATH_ENV}=fexit: {e}"));
                }
                Err(e) => format!("fexit refused: {e}"),
            },
        };
        match tracepoint(ebpf).and_then(|p| {
            p.load()
                .map_err(|e| format!("raw_tp/sys_exit: {}", brief(&e)))
        }) {
            Ok(()) => Chosen::Tracepoint(None, why),
            Err(e) => Chosen::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_variable_accepts_three_values_and_names_them_when_wrong() {
        assert_eq!(parse_wanted(None), Ok(Wanted::Auto));
        assert_eq!(parse_wanted(Some("")), Ok(Wanted::Auto));
        assert_eq!(parse_wanted(Some("auto")), Ok(Wanted::Auto));
        assert_eq!(parse_wanted(Some("tracepoint")), Ok(Wanted::Tracepoint));
        assert_eq!(parse_wanted(Some("fexit")), Ok(Wanted::Fexit));
        let Err(e) = parse_wanted(Some("kprobe")) else {
            panic!("kprobe accepted")
        };
        assert!(
            e.contains("\"kprobe\"") && e.contains("auto, tracepoint or fexit"),
            "{e}"
        );
    }

    /// The programs named here are the object's, and fexit ones: a rename on one side fails
    /// here, not as a silent fallback on a kernel that has fexit.
    #[test]
    fn every_fast_path_program_is_an_fexit_program_of_the_object() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "creates the maps: run as root"
        );
        let mut ebpf = aya::EbpfLoader::new()
            .load(super::super::sensor::SENSOR_OBJECT)
            .expect("load the object");
        for (name, _) in NATIVE.iter().chain(&COMPAT) {
            assert!(fexit(&mut ebpf, name).is_ok(), "{name}");
        }
        assert!(tracepoint(&mut ebpf).is_ok());
    }
}
