//! What the syscall program cannot see, seen and said, as root on the real kernel: an open
//! through io_uring (no open syscall at all) becomes a `file.open` the audit policy judges; a
//! 32-bit syscall (int 0x80) from a 64-bit process is recorded, never read as the x86-64 call
//! with the same number, and health names it with a `partial` claim. `cargo xtask vm` runs
//! this binary in the guests too.

use serde_json::Value;
use vigil_e2e::*;

/// An audit policy that would refuse reading `/etc/hostname`.
fn policy(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("audit.yaml");
    std::fs::write(
        &p,
        "version: 1\nname: unfollowed\nmode: audit\ndefault: allow\nfilesystem:\n  read:\n    - id: no-hostname\n      action: deny\n      paths: [/etc/hostname]\n    - id: read-all\n      paths: [/]\n",
    )
    .expect("policy");
    p
}

fn run(dir: &std::path::Path, name: &str, fixture_args: &[&str]) -> (Finished, tempfile::TempDir) {
    let p = policy(dir);
    let f = fixture_bin();
    VigilRun::new(name)
        .args([
            "--policy".as_ref(),
            p.as_os_str(),
            "--".as_ref(),
            f.as_os_str(),
        ])
        .args(fixture_args)
        .run()
}

#[test]
fn an_io_uring_open_is_a_file_open_the_audit_policy_judges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _out) = run(dir.path(), "uring", &["io-uring-open", "/etc/hostname"]);
    assert_eq!(r.code(), 0, "the ring opened the file: {}", r.stderr());
    let h = r.health();
    let k = read_ndjson(&r.bundle.join("layers/kernel.ndjson"));
    let probe = &h["probes"]["io_uring.submit"];
    assert_eq!(probe["status"], "attached", "{}", h["probes"]);
    assert!(
        k.iter().all(|e| !(e["kind"] == "file.open"
            && e["via"] == "syscall"
            && e["path"] == "/etc/hostname")),
        "no open syscall of the file: the ring opened it"
    );
    assert_eq!(
        h["kernel_layer"], "partial",
        "the NOP is not followed: {h:#}"
    );
    let submits: Vec<&Value> = k
        .iter()
        .filter(|e| e["kind"] == "io_uring.submit")
        .collect();
    let read_open = k
        .iter()
        .any(|e| e["kind"] == "file.open" && e["via"] == "io_uring");
    if probe["reason"].is_null() && !read_open {
        // io_uring_submit_req, but this kernel's io_open holds no `struct filename *` to read
        // the path from: the open is recorded by its opcode, unjudged, and said.
        let ops: Vec<&Value> = submits.iter().map(|s| &s["op"]).collect();
        assert!(ops.contains(&&"openat".into()), "{submits:#?}");
        assert!(ops.contains(&&"nop".into()), "{submits:#?}");
        assert_eq!(h["unfollowed_events_by_kind"]["io_uring.submit"], 2);
    } else if probe["reason"].is_null() {
        // io_uring_submit_req (6.x): the request is read.
        let open = k
            .iter()
            .find(|e| e["kind"] == "file.open" && e["via"] == "io_uring")
            .unwrap_or_else(|| panic!("the ring's open: {k:#?}"));
        assert_eq!(open["path"], "/etc/hostname");
        assert_eq!(open["resolved_path"], "/etc/hostname");
        assert_eq!(open["access"], "read");
        assert!(open["result"].is_null(), "not known at submission: {open}");
        assert_eq!(open["comm"], "vigil-fixture");
        assert_eq!(submits.len(), 1, "the NOP, not the open: {submits:#?}");
        assert_eq!(
            (&submits[0]["opcode"], &submits[0]["op"]),
            (&0.into(), &"nop".into())
        );
        assert_eq!(h["unfollowed_events_by_kind"]["io_uring.submit"], 1);
        let decisions = read_ndjson(&r.bundle.join("layers/policy.ndjson"));
        let denied = decisions
            .iter()
            .find(|d| {
                d["decision"] == "deny:filesystem.read_file" && d["subject"] == "/etc/hostname"
            })
            .unwrap_or_else(|| panic!("the oracle judged the ring's open: {decisions:#?}"));
        assert_eq!(denied["rule_id"], "no-hostname");
        assert_eq!(
            denied["kernel_event_seq"], open["seq"],
            "grounded in the ring's open"
        );
    } else {
        // Before io_uring_submit_req its tracepoint's arguments changed from release to
        // release: vigil reads none, so both submissions are counted, the open unjudged.
        let why = probe["reason"].as_str().expect("reason");
        assert!(why.contains("io_uring_submit_sqe"), "{why}");
        // Identical lines of one process are coalesced: a line may stand for both.
        let n: u64 = submits
            .iter()
            .map(|s| s["count"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(n, 2, "{submits:#?}");
        assert!(submits.iter().all(|s| s["opcode"].is_null()));
        assert_eq!(h["unfollowed_events_by_kind"]["io_uring.submit"], 2);
    }
    assert_valid_bundle(&r.bundle);
}

#[test]
fn a_32_bit_open_from_a_64_bit_process_is_recorded_and_named_in_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _out) = run(dir.path(), "int80", &["int80-open", "/etc/hostname"]);
    assert_eq!(
        r.code(),
        0,
        "int 0x80 open of /etc/hostname (needs the kernel's ia32 emulation): {}",
        r.stderr()
    );
    let k = read_ndjson(&r.bundle.join("layers/kernel.ndjson"));
    let compat: Vec<&Value> = k.iter().filter(|e| e["kind"] == "syscall.compat").collect();
    assert_eq!(compat.len(), 1, "{k:#?}");
    assert_eq!(compat[0]["nr"], 5, "i386 open");
    assert!(
        compat[0]["result"].as_i64().is_some_and(|fd| fd >= 0),
        "{}",
        compat[0]
    );
    assert_eq!(compat[0]["comm"], "vigil-fixture");
    assert!(
        k.iter()
            .all(|e| e["kind"] != "file.open" || e["path"] != "/etc/hostname"),
        "the 32-bit call is not decoded as an x86-64 one"
    );
    let h = r.health();
    assert_eq!(h["kernel_layer"], "partial", "{h:#}");
    assert_eq!(h["unfollowed_events_by_kind"]["syscall.compat"], 1);
    let notes = h["notes"].to_string();
    assert!(notes.contains("32-bit syscalls"), "{notes}");
    assert_valid_bundle(&r.bundle);
}
