//! `vigil policy lint` end to end: the shipped policies are clean; a malformed one is refused
//! with file:line:column and exit 2, and nothing else happens.

use std::process::Command;

use vigil_e2e::*;

fn lint(files: &[&std::path::Path]) -> std::process::Output {
    Command::new(vigil_bin())
        .args(["policy", "lint"])
        .args(files)
        .output()
        .expect("vigil policy lint")
}

#[test]
fn shipped_policies_lint_clean() {
    let dir = repo_root().join("policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("policies/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for required in [
        "ci-default",
        "no-network",
        "readonly-workspace",
        "strict-example",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "policies/{required}.yaml missing"
        );
    }
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let out = lint(&refs);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.ends_with(": ok")).count(),
        files.len(),
        "{text}"
    );
}

#[test]
fn a_malformed_policy_exits_2_naming_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nname: bad\nmode: enforce\ndefault: deny\nnetwork:\n  connect:\n    - id: n\n      cidrs: [\"10.0.0.0/8\"]\n      ports: [\"443-80\"]\n",
    )
    .expect("write");
    let out = lint(&[&bad]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let expected = format!(
        "{}:9:15: error: `443-80` is not a port or port range",
        bad.display()
    );
    assert!(text.lines().any(|l| l.starts_with(&expected)), "{text}");
    // A file that does not exist is an error too, named.
    let missing = dir.path().join("missing.yaml");
    let out = lint(&[&missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml: error: cannot read"));
}

#[test]
fn audit_records_would_be_denials_grounded_in_kernel_events_and_blocks_nothing() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let outside = elsewhere.path().join("outside.txt");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let policy = elsewhere.path().join("audit.yaml");
    std::fs::write(
        &policy,
        "version: 1\nname: audit-test\nmode: enforce\ndefault: deny\nfilesystem:\n  read:\n    - id: read-all\n      paths: [/]\n  write:\n    - id: ws-write\n      paths: [\"${WORKSPACE}\", /dev/null]\n  exec:\n    - id: exec-all\n      paths: [/]\n",
    )
    .expect("policy");
    let script = format!(
        "echo a > inside.txt; echo b > {}; {} connect 127.0.0.1:{closed}; exit 0",
        outside.display(),
        fixture_bin().display()
    );
    // The file says enforce; the flag makes this run an audit.
    let run = VigilRun::new("audit")
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--policy-mode", "audit", "--", "sh", "-c", &script]);
    let workspace = run.out.path().canonicalize().expect("workspace");
    let (f, _dir) = run.run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    assert!(outside.exists(), "audit blocks nothing");
    let h = f.health();
    assert_eq!(h["policy_layer"], "audited", "{h:#}");
    let decisions = read_ndjson(&f.bundle.join("layers/policy.ndjson"));
    let kernel = read_ndjson(&f.bundle.join("layers/kernel.ndjson"));
    let find = |decision: &str, subject: &str| {
        decisions
            .iter()
            .find(|d| d["decision"] == decision && d["subject"] == subject)
            .unwrap_or_else(|| panic!("{decision} {subject}: {decisions:#?}"))
            .clone()
    };
    let allowed = find(
        "allow:filesystem.write_file",
        &workspace.join("inside.txt").display().to_string(),
    );
    assert_eq!(allowed["rule_id"], "ws-write");
    let denied = find("deny:filesystem.write_file", &outside.display().to_string());
    assert_eq!(denied["rule_id"], "default");
    assert_eq!(
        (denied["mode"].clone(), denied["lane"].clone()),
        ("audit".into(), "oracle".into())
    );
    // Grounded: the cited kernel event is the open of that file.
    let ev = kernel
        .iter()
        .find(|k| k["seq"] == denied["kernel_event_seq"])
        .expect("the cited kernel event");
    assert_eq!(ev["kind"], "file.open");
    assert_eq!(ev["resolved_path"], denied["subject"]);
    let net = find("deny:network.connect", &format!("127.0.0.1:{closed}"));
    assert_eq!(net["rule_id"], "default");
    assert_valid_bundle(&f.bundle);
    // `vigil inspect` lists the would-be denials.
    let shown = vigil_ok(&["inspect".as_ref(), f.bundle.as_os_str()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(&format!(
            "deny:filesystem.write_file {}  rule default",
            outside.display()
        )),
        "{text}"
    );
}

#[test]
fn a_policy_run_refuses_bad_policies_and_enforce_before_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nname: b\nmode: audit\ndefault: perhaps\n").expect("write");
    let marker = dir.path().join("ran");
    let allow_default = dir.path().join("allow.yaml");
    std::fs::write(
        &allow_default,
        "version: 1\nname: a\nmode: enforce\ndefault: allow\n",
    )
    .expect("write");
    for (policy, expected) in [
        (
            bad.clone(),
            "bad.yaml:4:10: error: `default` is `perhaps`; accepted: allow, deny",
        ),
        (
            allow_default.clone(),
            "cannot enforce: `default: allow` cannot be enforced by Landlock",
        ),
    ] {
        let (f, out) = VigilRun::new("refused")
            .args(["--policy".as_ref(), policy.as_os_str()])
            .args(["--", "touch", marker.to_str().expect("utf8")])
            .run();
        assert_eq!(f.code(), 2, "{}", f.stderr());
        assert!(f.stderr().contains(expected), "{}", f.stderr());
        assert_eq!(f.stderr().lines().count(), 1, "one line: {}", f.stderr());
        assert!(!marker.exists(), "nothing ran");
        assert!(!out.path().join("refused").exists(), "no bundle");
    }
}

/// A policy that holds the filesystem and leaves the network open (so no network programs are
/// attached).
fn fs_only_policy(dir: &std::path::Path, exec_dirs: &str) -> std::path::PathBuf {
    let policy = dir.join("enforce.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nname: fs-only\nmode: enforce\ndefault: deny\nfilesystem:\n  read:\n    - id: read-all\n      paths: [/]\n  write:\n    - id: ws\n      paths: [\"${{WORKSPACE}}\", /dev/null]\n  exec:\n    - id: bins\n      paths: [{exec_dirs}]\nnetwork:\n  connect:\n    - id: any-connect\n      cidrs: [\"0.0.0.0/0\", \"::/0\", \"127.0.0.0/8\", \"::1/128\"]\n  send:\n    - id: any-send\n      cidrs: [\"0.0.0.0/0\", \"::/0\", \"127.0.0.0/8\", \"::1/128\"]\n"
        ),
    )
    .expect("policy");
    policy
}

#[test]
fn enforce_denies_writes_and_execs_outside_the_policy_with_kernel_evidence() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let outside = elsewhere.path().join("outside.txt");
    // A copy of a system binary where the policy allows no exec.
    let stray = elsewhere.path().join("stray-true");
    std::fs::copy("/bin/true", &stray).expect("copy");
    let policy = fs_only_policy(elsewhere.path(), "/usr, /bin, /lib, /lib64");
    let script = format!(
        "echo a > inside.txt || exit 10; echo b > {} && exit 11; {} && exit 12; exit 0",
        outside.display(),
        stray.display()
    );
    let run = VigilRun::new("enforce")
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--", "sh", "-c", &script]);
    let workspace = run.out.path().canonicalize().expect("workspace");
    let (f, _dir) = run.run();
    assert_eq!(
        f.code(),
        0,
        "inside allowed, outside and stray exec denied: {}",
        f.stderr()
    );
    assert!(workspace.join("inside.txt").exists());
    assert!(!outside.exists(), "the write outside was blocked");
    let h = f.health();
    assert_eq!(h["policy_layer"], "enforced", "{h:#}");
    assert!(
        h["policy_mechanisms"][0]
            .as_str()
            .expect("mechanism")
            .starts_with("landlock ABI "),
        "{h:#}"
    );
    let decisions = read_ndjson(&f.bundle.join("layers/policy.ndjson"));
    let kernel = read_ndjson(&f.bundle.join("layers/kernel.ndjson"));
    for (decision, subject) in [
        ("deny:filesystem.write_file", outside.display().to_string()),
        ("deny:process.exec", stray.display().to_string()),
    ] {
        let d = decisions
            .iter()
            .find(|d| d["decision"] == decision && d["subject"] == subject.as_str())
            .unwrap_or_else(|| panic!("{decision} {subject}: {decisions:#?}"));
        assert_eq!(
            (d["mode"].clone(), d["lane"].clone()),
            ("enforce".into(), "scenario".into())
        );
        assert_eq!(d["enforcement_evidence"], "EACCES", "{d}");
        let ev = kernel
            .iter()
            .find(|k| k["seq"] == d["kernel_event_seq"])
            .expect("the cited kernel event");
        assert_eq!(
            ev["result"], -13,
            "the syscall in the run's cgroup returned EACCES: {ev}"
        );
    }
    // The bundle sits in the workspace the policy lets the run write: health says so.
    assert!(
        h["notes"]
            .to_string()
            .contains("is writable by the run (write rule `ws`)"),
        "{h:#}"
    );
    // Only the run was restricted: this process, outside it, writes there freely.
    std::fs::write(&outside, "fine").expect("outside the run, nothing is enforced");
    assert_valid_bundle(&f.bundle);
}

#[test]
fn enforce_holds_connect_rules_for_ipv4_and_ipv6_in_the_run_only() {
    use std::net::TcpListener;
    let listen = |a: &str| {
        let l = TcpListener::bind(a).expect("listen");
        let p = l.local_addr().expect("addr").port();
        (l, p)
    };
    let (_a4, allowed4) = listen("127.0.0.1:0");
    let (_b4, other4) = listen("127.0.0.1:0");
    let (_a6, allowed6) = listen("[::1]:0");
    let (_b6, other6) = listen("[::1]:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("net.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nname: net\nmode: enforce\ndefault: deny\nfilesystem:\n  read:\n    - id: r\n      paths: [/]\n  write:\n    - id: w\n      paths: [\"${{WORKSPACE}}\", /dev/null]\n  exec:\n    - id: x\n      paths: [/]\nnetwork:\n  connect:\n    - id: db4\n      cidrs: [\"127.0.0.1/32\"]\n      ports: [{allowed4}]\n    - id: db6\n      cidrs: [\"::1/128\"]\n      ports: [{allowed6}]\n"
        ),
    )
    .expect("policy");
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let f = fixture_bin().display().to_string();
    // Each connect's outcome as a word on stdout; then wait until the test has tried from
    // outside, while the programs are attached.
    let script = format!(
        "for a in 127.0.0.1:{allowed4} 127.0.0.1:{other4} [::1]:{allowed6} [::1]:{other6}; do {f} connect $a >/dev/null && echo ok || echo refused; done; read x < {}",
        fifo.display()
    );
    let run = VigilRun::new("netenforce")
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--", "sh", "-c", &script]);
    let handle = std::thread::spawn(move || run.run());
    // Opening the fifo for writing waits for the child to open it: the run is live.
    let mut go = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("fifo");
    for port in [other4, other6] {
        let addr = if port == other4 {
            format!("127.0.0.1:{port}")
        } else {
            format!("[::1]:{port}")
        };
        std::net::TcpStream::connect(&addr).expect("outside the run, nothing is enforced");
    }
    use std::io::Write as _;
    go.write_all(b"go\n").expect("go");
    drop(go);
    let (f, _out) = handle.join().expect("run thread");
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let said: Vec<String> = String::from_utf8_lossy(&f.output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        said,
        ["ok", "refused", "ok", "refused"],
        "allowed, other port; v4 then v6"
    );
    let h = f.health();
    assert_eq!(h["policy_layer"], "enforced");
    assert!(
        h["policy_mechanisms"]
            .to_string()
            .contains("cgroup sock_addr"),
        "{h:#}"
    );
    let decisions = read_ndjson(&f.bundle.join("layers/policy.ndjson"));
    for (subject, verdict, rule) in [
        (
            format!("127.0.0.1:{allowed4}"),
            "allow:network.connect",
            "db4",
        ),
        (
            format!("127.0.0.1:{other4}"),
            "deny:network.connect",
            "default",
        ),
        (format!("[::1]:{allowed6}"), "allow:network.connect", "db6"),
        (format!("[::1]:{other6}"), "deny:network.connect", "default"),
    ] {
        let d = decisions
            .iter()
            .find(|d| d["subject"] == subject.as_str())
            .unwrap_or_else(|| panic!("{subject}: {decisions:#?}"));
        assert_eq!(
            (d["decision"].as_str(), d["rule_id"].as_str()),
            (Some(verdict), Some(rule)),
            "{d}"
        );
        if verdict.starts_with("deny") {
            assert_eq!(d["enforcement_evidence"], "EPERM", "{d}");
        }
    }
    assert_valid_bundle(&f.bundle);
}

/// Each shipped policy on a small workload, showing what it is for.
#[test]
fn each_shipped_policy_does_what_it_says() {
    let policies = repo_root().join("policies");
    let arg = |name: &str| policies.join(format!("{name}.yaml"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let f = fixture_bin().display().to_string();
    let blocked_connect = format!("127.0.0.1:{closed}");
    // (policy, script, expected stdout, a decision that must be there)
    let cases = [
        (
            "ci-default",
            format!("echo a > built.txt && echo wrote; {f} udp-send 192.0.2.1:9 && echo sent"),
            vec!["wrote", "sent"],
            ("deny:network.send", "192.0.2.1:9"),
        ),
        (
            "no-network",
            format!("echo a > built.txt && echo wrote; {f} connect 127.0.0.1:{closed} || echo blocked"),
            vec!["wrote", "blocked"],
            ("deny:network.connect", blocked_connect.as_str()),
        ),
        (
            "readonly-workspace",
            "echo a > built.txt || echo blocked; cat /etc/hostname > /dev/null && echo read".into(),
            vec!["blocked", "read"],
            ("deny:filesystem.write_file", "built.txt"),
        ),
        (
            "strict-example",
            "mkdir -p target 2>/dev/null; echo a > target/out && echo wrote; echo b > elsewhere.txt || echo blocked".into(),
            vec!["blocked"],
            ("deny:filesystem.write_file", "elsewhere.txt"),
        ),
    ];
    // The workspaces of these runs live under /tmp; a TMPDIR elsewhere keeps
    // readonly-workspace's `${TMPDIR}` rule from covering them.
    let scratch = tempfile::tempdir_in("/var/tmp").expect("scratch");
    for (name, script, said, (decision, subject)) in cases {
        let (run, _out) = VigilRun::new(name)
            .env("TMPDIR", scratch.path().to_str().expect("utf8"))
            .args(["--policy".as_ref(), arg(name).as_os_str()])
            .args(["--", "sh", "-c", &script])
            .run();
        let stdout = String::from_utf8_lossy(&run.output.stdout).into_owned();
        for word in said {
            assert!(
                stdout.lines().any(|l| l == word),
                "{name}: `{word}` missing: {stdout} {}",
                run.stderr()
            );
        }
        let decisions = read_ndjson(&run.bundle.join("layers/policy.ndjson"));
        assert!(
            decisions.iter().any(|d| d["decision"] == decision
                && d["subject"].as_str().is_some_and(|s| s.ends_with(subject))),
            "{name}: {decision} {subject}: {decisions:#?}"
        );
        assert_valid_bundle(&run.bundle);
    }
}

/// `vigil policy suggest` round trip: a policy derived from a run lints clean, lets the same
/// workload pass under enforcement, and denies anything new.
#[test]
fn a_suggested_policy_passes_the_same_workload_and_denies_a_new_action() {
    let (_listener, port) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let p = l.local_addr().expect("addr").port();
        (l, p)
    };
    let (_other, other) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let p = l.local_addr().expect("addr").port();
        (l, p)
    };
    let f = fixture_bin().display().to_string();
    let workload =
        format!("cat /etc/hostname > copy.txt && {f} connect 127.0.0.1:{port} && echo done");
    let (observed, _o) = VigilRun::new("observed")
        .args(["--", "sh", "-c", &workload])
        .run();
    assert_eq!(observed.code(), 0, "{}", observed.stderr());

    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("suggested.yaml");
    vigil_ok(&[
        "policy".as_ref(),
        "suggest".as_ref(),
        observed.bundle.as_os_str(),
        "--out".as_ref(),
        policy.as_os_str(),
    ]);
    let lint = Command::new(vigil_bin())
        .args(["policy", "lint"])
        .arg(&policy)
        .output()
        .expect("lint");
    let lint_text = String::from_utf8_lossy(&lint.stderr);
    assert_eq!(lint.status.code(), Some(0), "{lint_text}");
    assert!(
        lint_text.trim_end().ends_with(": ok"),
        "no warnings either: {lint_text}"
    );

    // The same workload, enforced, in a fresh workspace: it passes.
    let (same, _s) = VigilRun::new("same")
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--", "sh", "-c", &workload])
        .run();
    assert_eq!(
        same.code(),
        0,
        "{}\n{}",
        same.stderr(),
        std::fs::read_to_string(&policy).unwrap_or_default()
    );
    assert_eq!(same.health()["policy_layer"], "enforced");

    // Something new — another port, a write elsewhere — is denied.
    let elsewhere = tempfile::tempdir_in("/var/tmp").expect("elsewhere");
    let stray = elsewhere.path().join("stray.txt");
    let new = format!(
        "{workload}; {f} connect 127.0.0.1:{other} && echo connected-other; echo x > {} && echo wrote-stray; exit 0",
        stray.display()
    );
    let (more, _m) = VigilRun::new("more")
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--", "sh", "-c", &new])
        .run();
    let said = String::from_utf8_lossy(&more.output.stdout).into_owned();
    assert!(said.contains("done"), "the known part still works: {said}");
    assert!(!said.contains("connected-other"), "{said}");
    assert!(!said.contains("wrote-stray") && !stray.exists(), "{said}");
    let decisions = read_ndjson(&more.bundle.join("layers/policy.ndjson"));
    assert!(
        decisions
            .iter()
            .any(|d| d["decision"] == "deny:network.connect"
                && d["subject"] == format!("127.0.0.1:{other}").as_str()
                && d["enforcement_evidence"] == "EPERM")
    );
    assert_valid_bundle(&more.bundle);
}

/// Lanes and `vigil compare`: a difference the policy made is attributed to it, one it did not
/// make is put down to the environment.
#[test]
fn compare_attributes_outcome_differences_to_the_policy_or_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = fs_only_policy(dir.path(), "/");
    let elsewhere = tempfile::tempdir_in("/var/tmp").expect("elsewhere");
    let outside = elsewhere.path().join("out.txt");
    let marker = elsewhere.path().join("marker");
    let run = |id: &str, lane: &str, script: &str| {
        let (f, out) = VigilRun::new(id)
            .args(["--policy".as_ref(), policy.as_os_str()])
            .args(["--lane", lane, "--", "sh", "-c", script])
            .run();
        (f, out)
    };
    let compare = |b: &std::path::Path, s: &std::path::Path| {
        let out = vigil_ok(&["compare".as_ref(), b.as_os_str(), s.as_os_str()]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // The policy's doing: the write outside the workspace.
    let write = format!("echo x > {} || exit 1", outside.display());
    let (base, _b) = run("base", "baseline", &write);
    assert_eq!(base.code(), 0, "baseline: not applied: {}", base.stderr());
    assert!(outside.exists());
    std::fs::remove_file(&outside).expect("rm");
    let (scen, _s) = run("scen", "scenario", &write);
    assert_eq!(scen.code(), 1, "scenario: applied: {}", scen.stderr());
    let decisions = read_ndjson(&base.bundle.join("layers/policy.ndjson"));
    assert!(
        decisions
            .iter()
            .all(|d| d["lane"] == "baseline" && d["mode"] == "audit")
    );
    let text = compare(&base.bundle, &scen.bundle);
    assert!(
        text.contains("outcome differs: attributed to the policy"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "filesystem.write_file {} (rule default)",
            outside.display()
        )),
        "{text}"
    );

    // The environment's: a file that was there for the baseline only.
    std::fs::write(&marker, "").expect("marker");
    let check = format!("test -e {}", marker.display());
    let (base2, _b2) = run("base2", "baseline", &check);
    std::fs::remove_file(&marker).expect("rm marker");
    let (scen2, _s2) = run("scen2", "scenario", &check);
    assert_eq!((base2.code(), scen2.code()), (0, 1));
    let text = compare(&base2.bundle, &scen2.bundle);
    assert!(text.contains("not attributable to the policy"), "{text}");

    // A lane and a mode that contradict each other are a usage error.
    let (bad, _x) = VigilRun::new("conflict")
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args([
            "--lane",
            "baseline",
            "--policy-mode",
            "enforce",
            "--",
            "true",
        ])
        .run();
    assert_eq!(bad.code(), 2);
    assert!(
        bad.stderr().contains("--lane and --policy-mode disagree"),
        "{}",
        bad.stderr()
    );
}

/// Ten kinds of malformed policy, each given to `vigil run`: its exact error, exit 2, no
/// bundle, and the command never ran.
#[test]
fn malformed_policies_stop_a_run_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = "version: 1\nname: m\nmode: audit\ndefault: deny\n";
    let cases: [(&str, String, &str); 10] = [
        (
            "syntax",
            "version: 1\nname: [x\n".into(),
            ":3:1: error: YAML syntax",
        ),
        (
            "unknown key",
            format!("{head}rules: []\n"),
            ":5:1: error: unknown key `rules` in the policy",
        ),
        (
            "duplicate key",
            format!("{head}name: n\n"),
            ":5:1: error: duplicate key `name` (first at line 2)",
        ),
        (
            "missing default",
            "version: 1\nname: m\nmode: audit\n".into(),
            ":1:1: error: missing `default`",
        ),
        (
            "bad mode",
            "version: 1\nname: m\nmode: strict\ndefault: deny\n".into(),
            ":3:7: error: `mode` is `strict`; accepted: audit, enforce",
        ),
        (
            "bad version",
            "version: 3\nname: m\nmode: audit\ndefault: deny\n".into(),
            ":1:10: error: `version` is `3`; accepted: 1",
        ),
        (
            "relative path",
            format!("{head}filesystem:\n  read:\n    - id: r\n      paths: [etc]\n"),
            ":8:15: error: path `etc` is relative",
        ),
        (
            "unknown variable",
            format!("{head}filesystem:\n  read:\n    - id: r\n      paths: [\"${{SRC}}\"]\n"),
            ":8:15: error: path `${SRC}`: unknown variable `${SRC}`",
        ),
        (
            "bad cidr",
            format!("{head}network:\n  connect:\n    - id: c\n      cidrs: [\"10.0.0.256/8\"]\n"),
            ":8:15: error: `10.0.0.256/8` is not a CIDR",
        ),
        (
            "bad port",
            format!(
                "{head}network:\n  send:\n    - id: s\n      cidrs: [\"::1\"]\n      ports: [\"65536\"]\n"
            ),
            ":9:15: error: `65536` is not a port or port range",
        ),
    ];
    let marker = dir.path().join("ran");
    for (what, yaml, expected) in cases {
        let file = dir.path().join(format!("{}.yaml", what.replace(' ', "-")));
        std::fs::write(&file, yaml).expect("write");
        let (f, out) = VigilRun::new("malformed")
            .args(["--policy".as_ref(), file.as_os_str()])
            .args(["--", "touch", marker.to_str().expect("utf8")])
            .run();
        let want = format!("{}{expected}", file.display());
        assert_eq!(f.code(), 2, "{what}: {}", f.stderr());
        assert!(
            f.stderr().contains(&want),
            "{what}: expected `{want}` in {}",
            f.stderr()
        );
        assert_eq!(f.stderr().lines().count(), 1, "{what}: one line");
        assert!(!marker.exists(), "{what}: the command ran");
        assert!(
            !out.path().join("malformed").exists(),
            "{what}: a bundle was made"
        );
    }
}

/// A first exec Landlock refuses never starts the command (126), and the kernel's record of the
/// refused exec still reaches the policy layer: the denial is in the bundle, grounded.
#[test]
fn a_denied_first_exec_is_not_started_and_still_gets_its_decision() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let stray = elsewhere.path().join("stray-true");
    std::fs::copy("/bin/true", &stray).expect("copy");
    let policy = fs_only_policy(elsewhere.path(), "/usr, /bin, /lib, /lib64");
    let (f, _dir) = VigilRun::new("enforce-first-exec")
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--".as_ref(), stray.as_os_str()])
        .run();
    assert_eq!(
        f.code(),
        126,
        "not executable under the policy: {}",
        f.stderr()
    );
    let decisions = read_ndjson(&f.bundle.join("layers/policy.ndjson"));
    let subject = stray.display().to_string();
    let d = decisions
        .iter()
        .find(|d| d["decision"] == "deny:process.exec" && d["subject"] == subject.as_str())
        .unwrap_or_else(|| panic!("no decision for the refused first exec: {decisions:#?}"));
    assert_eq!(d["enforcement_evidence"], "EACCES", "{d}");
    assert_valid_bundle(&f.bundle);
}
