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
