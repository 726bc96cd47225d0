//! The process-lifecycle sensor on the real kernel: real programs loaded and attached, real
//! processes in a real cgroup. Needs root; fails (never skips) without it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vigil::kernel::event::rust_layout;
use vigil::kernel::sensor::SENSOR_OBJECT;
use vigil::kernel::{KernelEvent, KernelSensor, decode};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kernel sensor tests need root (eBPF, cgroups)"
    );
}

/// A scratch cgroup under the cgroup2 mount, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Self {
        let mount = vigil::run::cgroup::cgroup2_mount().expect("cgroup2");
        let dir = mount
            .join("vigil-test")
            .join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir cgroup");
        TestCgroup(dir)
    }
    fn id(&self) -> u64 {
        std::fs::metadata(&self.0).expect("stat").ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for sub in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if sub.path().is_dir() {
                let _ = std::fs::remove_dir(sub.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Run `sh -c 'move into CG; exec ARGV…'` and wait for it; the exec happens inside the cgroup.
fn run_in(cg: &Path, argv: &[&str]) -> (u32, std::process::ExitStatus) {
    let script = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cg.display());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(argv)
        .spawn()
        .expect("spawn");
    let pid = child.id();
    (pid, child.wait().expect("wait"))
}

fn drain(sensor: &mut KernelSensor) -> Vec<KernelEvent> {
    let mut ring = sensor.take_events().expect("ring buffer");
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(decode(&item).expect("decode"));
    }
    out
}

#[test]
fn rust_event_layout_matches_the_object() {
    let file = object::File::parse(SENSOR_OBJECT).expect("parse vigil.bpf.o");
    use object::{Object, ObjectSection, ObjectSymbol};
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok("vigil_layout"))
        .expect("vigil_layout symbol");
    let section = file
        .section_by_index(sym.section_index().expect("section"))
        .expect("section");
    let data = section.data().expect("data");
    let start = usize::try_from(sym.address() - section.address()).expect("offset");
    let table: Vec<u32> = data[start..start + usize::try_from(sym.size()).expect("size")]
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        table,
        rust_layout(),
        "agent/src/kernel/event.rs drifted from ebpf/include/vigil_event.h"
    );
}

#[test]
fn exec_exit_and_nesting_are_seen_only_inside_the_watched_cgroup() {
    require_root();
    let mut sensor = KernelSensor::load(vigil::kernel::sensor::Scope::Full).expect("load sensor");
    for (probe, status) in sensor.probes() {
        // file.open and network.socket name their path (fexit or the tracepoint).
        assert!(status.is_attached(), "{probe}: {status:?}");
    }
    let cg = TestCgroup::new("sensor");
    sensor.watch(cg.id()).expect("watch");

    let marker = "vigil-argv-marker-7f3a";
    let (pid, status) = run_in(&cg.0, &["/bin/sh", "-c", "exit 3", marker]);
    assert_eq!(status.code(), Some(3));
    // The same thing outside the cgroup must never appear.
    let outside = Command::new("/bin/sh")
        .args(["-c", "exit 0", "vigil-outside-marker"])
        .status()
        .expect("outside");
    assert!(outside.success());
    // A cgroup created beneath the watched one after watching began is watched too.
    let nested = cg.0.join("nested");
    std::fs::create_dir(&nested).expect("nested cgroup");
    let nested_id = std::fs::metadata(&nested).expect("stat").ino();
    let (nested_pid, _) = run_in(&nested, &["/bin/sh", "-c", "exit 0", "vigil-nested-marker"]);

    let events = drain(&mut sensor);
    let execs: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            KernelEvent::Exec {
                hdr,
                argv,
                filename,
                argv_truncated,
                ..
            } if argv.iter().any(|a| a == marker) => {
                Some((hdr.clone(), argv.clone(), filename.clone(), *argv_truncated))
            }
            _ => None,
        })
        .collect();
    assert_eq!(execs.len(), 1, "the exec appears exactly once: {events:#?}");
    let (hdr, argv, filename, truncated) = &execs[0];
    assert_eq!(argv, &["/bin/sh", "-c", "exit 3", marker]);
    assert_eq!(filename, "/bin/sh");
    assert!(!truncated);
    assert_eq!(
        hdr.pid, pid,
        "exec keeps the pid of the process that moved itself"
    );
    assert_eq!(hdr.ppid, std::process::id(), "parent is this test process");
    assert_eq!(hdr.cgroup_id, cg.id());
    let exit = events.iter().find_map(|e| match e {
        KernelEvent::Exit {
            hdr,
            exit_code,
            group_dead: true,
            ..
        } if hdr.pid == pid => Some(*exit_code),
        _ => None,
    });
    assert_eq!(exit, Some(Some(3)), "exit code 3 of pid {pid}");
    let text = format!("{events:?}");
    assert!(
        !text.contains("vigil-outside-marker"),
        "an outside process leaked through the filter"
    );
    assert!(
        events.iter().any(|e| matches!(e, KernelEvent::Exec { hdr, argv, .. }
            if hdr.pid == nested_pid && hdr.cgroup_id == nested_id && argv.iter().any(|a| a == "vigil-nested-marker"))),
        "nested cgroup's exec missing"
    );
    assert!(sensor.lost().expect("lost").is_empty());
}
