//! Promotion packets and ops summaries from real bundles: a promotable run signs and verifies
//! against its bundle; a changed byte, a repaired bundle, downgraded events, an audit-only
//! policy and a wrong key are each refused with their reason; a packet and its bundle summarize
//! alike; no secret reaches a packet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use vigil_e2e::*;

fn vigil(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(vigil_bin())
        .args(args)
        .output()
        .expect("vigil")
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A committed run of `args` (after `--`), with extra flags before it.
fn run(dir: &Path, id: &str, flags: &[&str], args: &[&str]) -> PathBuf {
    let out = dir.join("out");
    let st = Command::new(vigil_bin())
        .args(["run", "--no-daemon", "--run-id", id, "--out"])
        .arg(&out)
        .args(flags)
        .arg("--")
        .args(args)
        .env("API_TOKEN", "hunter22-secret")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("vigil run");
    assert!(st.code().is_some(), "{st}");
    out.join(id)
}

fn emit(bundle: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a = vec![
        os("emit-promotion"),
        bundle.as_os_str(),
        os("--out"),
        out.as_os_str(),
    ];
    a.extend(extra.iter().map(|s| os(s)));
    vigil(&a)
}

fn reasons(packet: &Path) -> String {
    read_json(packet)["predicate"]["promotability"]["reasons"].to_string()
}

#[test]
fn a_promotable_run_signs_verifies_and_summarizes_like_its_bundle() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = fixture_bin();
    let connect = format!(
        "{} connect 127.0.0.1:9 || true; echo --token=hunter22-secret",
        fixture.display()
    );
    let b = run(
        dir.path(),
        "good",
        &[
            "--policy",
            &repo_root()
                .join("policies/no-network.yaml")
                .display()
                .to_string(),
        ],
        &["sh", "-c", &connect],
    );
    assert_valid_bundle(&b);
    let key = dir.path().join("k");
    let o = vigil(&[os("keygen"), os("--out"), key.as_os_str()]);
    assert!(o.status.success(), "{}", err(&o));
    let packet = dir.path().join("packet.json");
    let o = emit(
        &b,
        &packet,
        &[
            "--require-promotable",
            "--sign-key",
            &key.with_extension("key").display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    let bytes = std::fs::read_to_string(&packet).expect("packet");
    assert!(!bytes.contains("hunter22"), "a secret in the packet");
    let o = vigil(&[
        os("verify-promotion"),
        packet.as_os_str(),
        os("--key"),
        key.with_extension("pub").as_os_str(),
        os("--bundle"),
        b.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("signature good") && said.contains("promotable: true"),
        "{said}"
    );

    // The statement inside: every bundle file is a subject; the denial is grounded.
    let envelope: Value = serde_json::from_str(&bytes).expect("json");
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    let payload = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(envelope["payload"].as_str().expect("payload").as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64");
    let st: Value = serde_json::from_slice(&payload.stdout).expect("statement");
    assert_matches_schema("promotion_statement.v1.json", &st);
    assert_matches_schema("ops_summary.v1.json", &st["predicate"]["ops"]);
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    let index = read_json(&b.join("artifact_index.json"));
    assert_eq!(
        st["subject"].as_array().map(Vec::len),
        index["files"].as_array().map(Vec::len)
    );
    let denials = &st["predicate"]["policy"]["denials"];
    assert!(
        denials.as_array().is_some_and(|d| d
            .iter()
            .any(|x| x["decision"] == "deny:network.connect" && x["grounded"] == true)),
        "{denials:#}"
    );

    // The same numbers from the bundle and from its packet.
    let (from_b, from_p) = (dir.path().join("ops-b.json"), dir.path().join("ops-p.json"));
    for (input, out) in [(b.as_path(), &from_b), (packet.as_path(), &from_p)] {
        let o = vigil(&[
            os("summarize-ops"),
            input.as_os_str(),
            os("--out"),
            out.as_os_str(),
        ]);
        assert!(o.status.success(), "{}", err(&o));
    }
    let (sb, sp) = (read_json(&from_b), read_json(&from_p));
    assert_eq!(sb, sp);
    assert_matches_schema("ops_summary.v1.json", &sb);
    let connect = &sb["ops"]["network.connect"]["scenario"];
    assert_eq!(connect["denied"], 1, "{sb:#}");
    assert!(sb["ops"]["process.exec"].to_string().contains("allowed"));

    // A wrong key is refused.
    let other = dir.path().join("other");
    assert!(
        vigil(&[os("keygen"), os("--out"), other.as_os_str()])
            .status
            .success()
    );
    let o = vigil(&[
        os("verify-promotion"),
        packet.as_os_str(),
        os("--key"),
        other.with_extension("pub").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("signature does not verify"), "{}", err(&o));

    // A byte changed in the bundle: the packet no longer matches it, and no new one is made.
    let unsigned = dir.path().join("unsigned.json");
    assert!(emit(&b, &unsigned, &[]).status.success());
    let log = b.join("output/stdout.log");
    let mut text = std::fs::read(&log).expect("log");
    text[0] ^= 1;
    std::fs::write(&log, text).expect("tamper");
    let o = vigil(&[
        os("verify-promotion"),
        unsigned.as_os_str(),
        os("--bundle"),
        b.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("stdout.log"), "{}", err(&o));
    let again = dir.path().join("again.json");
    let o = emit(&b, &again, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("not committed and intact"), "{}", err(&o));
    assert!(!again.exists());
}

#[test]
fn unpromotable_runs_are_refused_with_their_reasons() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let fixture = fixture_bin();
    let fx = fixture.to_str().expect("utf-8");
    // Audit only: the oracle's decisions are not enforcement.
    let audited = run(
        p,
        "audited",
        &[
            "--policy",
            &repo_root()
                .join("policies/ci-default.yaml")
                .display()
                .to_string(),
        ],
        &["true"],
    );
    // Data past the evidence budget: downgraded to counts.
    let downgraded = run(
        p,
        "downgraded",
        &["--evidence-max-bytes", "4096"],
        &[fx, "open-distinct", "2000", "100000"],
    );
    // A failing run.
    let failed = run(p, "failed", &[], &["false"]);
    for (bundle, reason) in [
        (&audited, "policy_not_enforced"),
        (&downgraded, "downgraded_events"),
        (&failed, "run_failed"),
    ] {
        let out = p.join("refused.json");
        let o = emit(bundle, &out, &["--require-promotable"]);
        assert_eq!(o.status.code(), Some(1), "{}", err(&o));
        assert!(err(&o).contains(reason), "{reason}: {}", err(&o));
        assert!(!out.exists(), "written although not promotable");
        // Without --require-promotable the packet says why.
        assert!(emit(bundle, &out, &[]).status.success());
        assert!(reasons(&out).contains(reason), "{}", reasons(&out));
        std::fs::remove_file(&out).expect("rm");
    }

    // A repaired bundle: vigil SIGKILLed mid-run, salvaged by reindex --repair.
    let out = p.join("out");
    let mut child = Command::new(vigil_bin())
        .args(["run", "--no-daemon", "--run-id", "killed", "--out"])
        .arg(&out)
        .args(["--", fx, "hang"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("vigil");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("ready");
    assert_eq!(line.trim(), "ready");
    child.kill().expect("kill");
    let _ = child.wait();
    let killed = out.join("killed");
    let o = vigil(&[os("reindex"), killed.as_os_str(), os("--repair")]);
    assert!(o.status.success(), "{}", err(&o));
    let packet = p.join("repaired.json");
    let o = emit(&killed, &packet, &["--require-promotable"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("bundle_repaired"), "{}", err(&o));
}

#[test]
fn plan_lint_checks_without_running() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("plan.yaml");
    std::fs::write(
        &bad,
        "steps:\n  - name: a\n    command: \"true\"\n    bogus: 1\n",
    )
    .expect("write");
    let o = vigil(&[os("plan"), os("lint"), bad.as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    let e = err(&o);
    assert!(e.contains(&format!("{}:4:", bad.display())), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let good = repo_root().join("examples/gate/plan.yaml");
    let o = vigil(&[os("plan"), os("lint"), good.as_os_str()]);
    assert!(o.status.success(), "{}", err(&o));
}
