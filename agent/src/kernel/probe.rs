//! Host feature probing for `vigil doctor`: what this host supports, found by looking (and, for
//! the eBPF sensor, by really loading and attaching it). Anything that cannot be determined is
//! reported as unknown, with the reason — never guessed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::sensor::{KernelSensor, ProbeStatus, Scope};
use crate::run::cgroup;

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// `yes`, `no` or `unknown`.
    pub status: &'static str,
    pub detail: String,
}

fn feature(status: &'static str, detail: impl Into<String>) -> Feature {
    Feature {
        status,
        detail: detail.into(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub kernel_release: String,
    pub features: BTreeMap<&'static str, Feature>,
    /// Per probe of the eBPF sensor: `attached` or the reason it did not.
    pub probes: BTreeMap<String, String>,
    pub sensor_load_ms: Option<f64>,
}

impl HostReport {
    /// vigil cannot supervise runs without cgroup v2.
    pub fn can_run(&self) -> bool {
        self.features
            .get("cgroup_v2")
            .is_some_and(|f| f.status == "yes")
    }
}

pub fn probe_host() -> HostReport {
    let mut features = BTreeMap::new();
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();

    let btf = Path::new("/sys/kernel/btf/vmlinux");
    features.insert(
        "btf",
        match std::fs::metadata(btf) {
            Ok(m) => feature("yes", format!("{} ({} bytes)", btf.display(), m.len())),
            Err(e) => feature("no", format!("{}: {e}", btf.display())),
        },
    );

    features.insert(
        "cgroup_v2",
        match cgroup::cgroup2_mount() {
            Ok(m) => feature("yes", format!("mounted at {}", m.display())),
            Err(e) => feature("no", e.to_string()),
        },
    );
    // cgroup.kill and cgroup.freeze exist on non-root cgroups only: look at a cgroup of ours.
    let (kill, freeze) = match cgroup::cgroup2_mount() {
        Ok(m) => {
            let dir = m
                .join("vigil")
                .join(format!("doctor-{}", std::process::id()));
            let made = std::fs::create_dir_all(&dir).is_ok();
            let has = |f: &str| {
                if !made {
                    feature("unknown", format!("cannot create {}", dir.display()))
                } else if dir.join(f).exists() {
                    feature("yes", format!("{f} present"))
                } else {
                    feature("no", format!("no {f} (kernel too old)"))
                }
            };
            let r = (has("cgroup.kill"), has("cgroup.freeze"));
            let _ = std::fs::remove_dir(&dir);
            r
        }
        Err(_) => (feature("no", "no cgroup v2"), feature("no", "no cgroup v2")),
    };
    features.insert("cgroup_kill", kill);
    features.insert("cgroup_freeze", freeze);

    let mounts = procfs::mounts().unwrap_or_default();
    let tracefs = mounts.iter().find(|m| m.fs_vfstype == "tracefs");
    features.insert(
        "tracefs",
        match tracefs.map(|m| &m.fs_file) {
            Some(at) => feature("yes", format!("mounted at {at}")),
            None => feature("no", "not mounted: vigil attaches tp_btf/raw_tp programs by BTF id, which do not need it"),
        },
    );

    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns the
    // ABI version; it dereferences nothing.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    features.insert(
        "landlock",
        if abi > 0 {
            feature("yes", format!("ABI {abi}"))
        } else {
            feature(
                "no",
                format!(
                    "landlock_create_ruleset: {}",
                    std::io::Error::last_os_error()
                ),
            )
        },
    );

    features.insert("capabilities", capabilities());
    features.extend(attach_types());

    let start = Instant::now();
    let (probes, sensor_load_ms) = match KernelSensor::load(Scope::Full) {
        Ok(s) => {
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let probes = s
                .probes()
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        ProbeStatus::Attached => "attached".to_string(),
                        ProbeStatus::AttachedTo(via) => format!("attached to {via}"),
                        ProbeStatus::Unavailable(r) => format!("unavailable: {r}"),
                        ProbeStatus::Failed(r) => format!("failed: {r}"),
                    };
                    (k.clone(), text)
                })
                .collect();
            (probes, Some(ms))
        }
        Err(e) => (
            BTreeMap::from([("sensor".to_string(), format!("failed: {e}"))]),
            None,
        ),
    };
    HostReport {
        kernel_release,
        features,
        probes,
        sensor_load_ms,
    }
}

/// The attach-type probes of `vigil doctor` (ebpf/features.bpf.c), embedded at build time.
static FEATURES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/features.bpf.o"));

/// The function the fentry and kprobe probes attach to: a syscall function, in the BTF and the
/// symbols of every x86-64 kernel the matrix runs, and one the fast path attaches to.
/// `do_unlinkat`, the usual example, is gone from 7.x's BTF and symbols (doctor said `no`
/// there); 5.10's BTF has no argument-less wrapper such as `__x64_sys_getppid`.
const PROBE_TARGET: &str = "__x64_sys_openat";

/// fentry, BPF LSM and kprobe support, found by loading and attaching a do-nothing program of
/// each type (and detaching it at once): `no` carries the kernel's reason.
fn attach_types() -> Vec<(&'static str, Feature)> {
    use aya::programs::{FEntry, KProbe, Lsm};
    let names = ["fentry", "bpf_lsm", "kprobe"];
    let btf = match aya::Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => {
            return names
                .map(|n| (n, feature("unknown", format!("no BTF: {e}"))))
                .to_vec();
        }
    };
    let mut ebpf = match aya::EbpfLoader::new().btf(Some(&btf)).load(FEATURES_OBJECT) {
        Ok(e) => e,
        Err(e) => {
            return names
                .map(|n| (n, feature("unknown", format!("features.bpf.o: {e}"))))
                .to_vec();
        }
    };
    let verdict = |what: &str, r: Result<(), aya::programs::ProgramError>| match r {
        Ok(()) => feature("yes", format!("{what}: loaded and attached")),
        Err(e) => feature("no", format!("{what}: {}", error_line(&e))),
    };
    fn prog<'a>(
        ebpf: &'a mut aya::Ebpf,
        name: &str,
    ) -> Result<&'a mut aya::programs::Program, aya::programs::ProgramError> {
        ebpf.program_mut(name)
            .ok_or(aya::programs::ProgramError::UnexpectedProgramType)
    }
    let fentry = prog(&mut ebpf, "probe_fentry").and_then(|p| {
        let p: &mut FEntry = p.try_into()?;
        p.load(PROBE_TARGET, &btf)?;
        p.attach().map(|_| ())
    });
    let lsm = prog(&mut ebpf, "probe_lsm").and_then(|p| {
        let p: &mut Lsm = p.try_into()?;
        p.load("file_open", &btf)?;
        p.attach().map(|_| ())
    });
    let kprobe = prog(&mut ebpf, "probe_kprobe").and_then(|p| {
        let p: &mut KProbe = p.try_into()?;
        p.load()?;
        p.attach(PROBE_TARGET, 0).map(|_| ())
    });
    let lsm_list = std::fs::read_to_string("/sys/kernel/security/lsm").ok();
    let bpf_lsm = lsm_verdict(verdict("lsm/file_open", lsm), lsm_list.as_deref());
    vec![
        ("fentry", verdict(&format!("fentry/{PROBE_TARGET}"), fentry)),
        ("bpf_lsm", bpf_lsm),
        ("kprobe", verdict(&format!("kprobe/{PROBE_TARGET}"), kprobe)),
    ]
}

/// BPF LSM: an attach is not enough — a program attached while `bpf` is not an active LSM
/// (5.10's default list, or `lsm=` without it) never runs, so it is not claimed.
fn lsm_verdict(attached: Feature, active: Option<&str>) -> Feature {
    match active {
        Some(list) if attached.status == "yes" && !list.trim().split(',').any(|l| l == "bpf") => {
            feature(
                "no",
                format!(
                    "lsm/file_open attached, but `bpf` is not an active LSM ({}): its programs never run (boot with lsm=…,bpf)",
                    list.trim()
                ),
            )
        }
        Some(list) => feature(
            attached.status,
            format!("{}; active LSMs: {}", attached.detail, list.trim()),
        ),
        // Attached, but whether it runs cannot be seen: not claimed either way.
        None if attached.status == "yes" => feature(
            "unknown",
            "lsm/file_open attached; /sys/kernel/security/lsm unreadable (securityfs not mounted), so whether `bpf` is an active LSM is unknown",
        ),
        None => feature(
            attached.status,
            format!(
                "{}; /sys/kernel/security/lsm unreadable (securityfs not mounted)",
                attached.detail
            ),
        ),
    }
}

/// An error and the sources its message does not already hold, on one line (aya nests the
/// syscall's error under its own, and leaves an empty "Verifier output:" when there is none).
fn error_line(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    if let Some(head) = out.strip_suffix("Verifier output: ") {
        out = head.trim_end().trim_end_matches('.').to_string();
    }
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        src = s.source();
    }
    out
}

/// The effective capabilities vigil needs, from /proc/self/status.
fn capabilities() -> Feature {
    let Ok(eff) = procfs::process::Process::myself()
        .and_then(|p| p.status())
        .map(|s| s.capeff)
    else {
        return feature("unknown", "no CapEff in /proc/self/status");
    };
    let needed = [
        ("CAP_SYS_ADMIN", 21),
        ("CAP_BPF", 39),
        ("CAP_PERFMON", 38),
        ("CAP_KILL", 5),
        ("CAP_SETUID", 7),
        ("CAP_SETGID", 6),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, bit)| eff & (1 << bit) == 0)
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        feature("yes", format!("CapEff {eff:#x}"))
    } else {
        feature("no", format!("missing {}", missing.join(", ")))
    }
}

/// The human version of the report.
pub fn render(r: &HostReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!("vigil doctor — kernel {}\n\n", r.kernel_release);
    for (name, f) in &r.features {
        let _ = writeln!(out, "  {name:<14} {:<8} {}", f.status, f.detail);
    }
    let _ = writeln!(
        out,
        "\n  eBPF sensor{}",
        r.sensor_load_ms
            .map(|ms| format!(" (load+attach {ms:.0} ms)"))
            .unwrap_or_default()
    );
    for (probe, status) in &r.probes {
        let _ = writeln!(out, "    {probe:<32} {status}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_lsm_is_claimed_only_when_bpf_is_an_active_lsm() {
        let attached = || feature("yes", "lsm/file_open: loaded and attached");
        let active = lsm_verdict(attached(), Some("lockdown,capability,yama,bpf\n"));
        assert_eq!(active.status, "yes", "{}", active.detail);
        let inactive = lsm_verdict(attached(), Some("lockdown,capability,yama,apparmor"));
        assert_eq!(inactive.status, "no", "attached but never run");
        assert!(
            inactive.detail.contains("`bpf` is not an active LSM"),
            "{}",
            inactive.detail
        );
        let refused = lsm_verdict(feature("no", "EPERM"), Some("bpf"));
        assert_eq!(refused.status, "no");
        assert_eq!(
            lsm_verdict(attached(), None).status,
            "unknown",
            "an attach alone does not show the program runs"
        );
    }
}
