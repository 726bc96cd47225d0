//! Nothing lost under faults, as root on real filesystems: a 2 MiB tmpfs `--out` under a job
//! that prints 6.7 MB, for a run and for a plan; and `--out` filled from outside mid-run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use vigil_e2e::*;

/// A tmpfs of `size` mounted for the test, unmounted when dropped.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        std::fs::create_dir(&path).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs");
        Tmpfs { _dir: dir, path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// 6.7 MB of output, then a last line.
const CHATTY: &str = "head -c 6700000 /dev/zero | tr '\\0' x | fold -w 100; echo done";

fn vigil_run(out: &Path, run_id: &str, args: &[&str]) -> std::process::Output {
    Command::new(vigil_bin())
        .args(["run", "--out"])
        .arg(out)
        .args(["--run-id", run_id])
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("spawn vigil")
}

fn assert_kept_control_evidence(bundle: &Path) {
    let health = read_json(&bundle.join("observation-health.json"));
    let stdout = &health["output"]["stdout"];
    assert_eq!(stdout["truncated"], true, "{health:#}");
    assert_eq!(stdout["truncated_reason"], "disk_pressure", "{health:#}");
    assert!(stdout["bytes_total"].as_u64().expect("total") >= 6_700_000);
    assert!(
        health["notes"].to_string().contains("disk pressure:"),
        "{health:#}"
    );
    let events = read_ndjson(&bundle.join("events.ndjson"));
    assert!(
        events.iter().any(|e| e["kind"] == "run_finished"),
        "control events landed"
    );
    let kernel = read_ndjson(&bundle.join("layers/kernel.ndjson"));
    assert!(
        kernel.iter().any(|e| e["kind"] == "process.exit"),
        "process lifecycle is control evidence and is kept"
    );
}

#[test]
fn a_chatty_job_on_a_full_disk_still_commits_and_says_what_it_could_not_keep() {
    let fs = Tmpfs::mount("2m");
    let o = vigil_run(&fs.path, "chatty", &["--", "sh", "-c", CHATTY]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the job's exit code passes through: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bundle = fs.path.join("chatty");
    assert_valid_bundle(&bundle);
    assert_kept_control_evidence(&bundle);
    assert!(
        !bundle.join(".reserve.tmp").exists(),
        "the reserve is released at commit"
    );
}

#[test]
fn a_chatty_plan_step_on_a_full_disk_still_commits() {
    let fs = Tmpfs::mount("3m");
    let plan_dir = tempfile::tempdir().expect("tempdir");
    let plan = plan_dir.path().join("plan.yaml");
    let step = CHATTY.replace('\'', "''");
    std::fs::write(
        &plan,
        format!("steps:\n  - name: chatty\n    command: '{step}'\n  - name: after\n    command: 'echo after'\n"),
    )
    .expect("plan");
    let plan_arg = plan.display().to_string();
    let o = vigil_run(&fs.path, "gate", &["--plan", &plan_arg]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bundle = fs.path.join("gate");
    assert_valid_bundle(&bundle);
    assert_kept_control_evidence(&bundle.join("steps/01-chatty"));
    let trace: Value = read_json(&bundle.join("run-trace.json"));
    assert_eq!(trace["summary"]["steps"][1]["status"], "passed");
}

/// Someone else fills `--out`'s filesystem to the last byte while the job runs (Linux refuses
/// a read-only remount while vigil holds files open for writing, EBUSY, so a full disk is the
/// fault a CI host really sees mid-run). The reserve taken at bundle creation still lets the
/// run commit; the job's exit code passes through; health says what could not be written.
#[test]
fn a_disk_filled_from_outside_mid_run_still_commits_on_the_reserve() {
    let fs = Tmpfs::mount("8m");
    let mut child = Command::new(vigil_bin())
        .args(["run", "--out"])
        .arg(&fs.path)
        .args(["--run-id", "filled", "--kernel-layer", "off", "--"])
        .args(["sh", "-c", "echo start; read x; echo end; exit 7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vigil");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("read"), "start");
    // Fill every free byte beside the bundle.
    let filler = fs.path.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    use std::io::Write;
    while f.write_all(&chunk).is_ok() {}
    // Then the last bytes a 64 KiB chunk could not take.
    while f.write_all(b"x").is_ok() {}
    drop(f);
    // Let the job finish: it reads one line.
    drop(child.stdin.take());
    let o = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "the job's own code: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_file(&filler).expect("rm filler");
    let bundle = fs.path.join("filled");
    assert_valid_bundle(&bundle);
    let trace = read_json(&bundle.join("run-trace.json"));
    assert_eq!(trace["exit_code"], 7);
}
