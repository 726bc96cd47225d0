//! Secrets across every output vigil makes today, as root on the real kernel: planted in the
//! environment, argv, SDK data, a file path the job opens, its stdout and a policy file, then
//! searched for in every byte of the bundle, the profile copies, vigil's stderr, and what
//! `vigil inspect` and `vigil policy suggest` print. (Promotion packets, exports and the daemon's
//! log and metrics join this test when they exist.)

use std::path::{Path, PathBuf};
use std::process::Command;

use vigil_e2e::*;

const TOKEN: &str = "tok-planted-5f3a9c2e81";
const PASSWORD: &str = "pw-planted-77d1b0c4aa";

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn hits(what: &str, bytes: &[u8]) -> Vec<String> {
    [TOKEN, PASSWORD]
        .iter()
        .filter(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
        .map(|s| format!("{s} in {what}"))
        .collect()
}

#[test]
fn planted_secrets_reach_no_output() {
    require_root();
    let work = tempfile::tempdir().expect("tempdir");
    let policy = work.path().join("audit.yaml");
    // The policy names the secret directory, so its decisions are about a secret path.
    std::fs::write(
        &policy,
        format!(
            "version: 1\nname: audit-secrets\nmode: audit\ndefault: deny\nfilesystem:\n  read:\n    - id: secret-dir\n      paths: [\"/tmp/{TOKEN}\"]\n    - id: all\n      paths: [/]\n  write: []\n  exec:\n    - id: all-exec\n      paths: [/]\nnetwork:\n  connect: []\n  send: []\n"
        ),
    )
    .expect("policy");
    let secret_dir = PathBuf::from(format!("/tmp/{TOKEN}"));
    std::fs::create_dir_all(&secret_dir).expect("mkdir");
    std::fs::write(secret_dir.join("x"), b"content").expect("write");
    let sdk = "import os, socket, json\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.connect(os.environ['VIGIL_SDK_SOCKET'])\n\
        line = {'event': 'checkpoint', 'name': 'n', 'data': {'cmd': 'curl -H ' + os.environ['API_TOKEN']}}\n\
        s.sendall((json.dumps(line) + '\\n').encode())\n\
        s.close()\n";
    let script = format!(
        "printf 'stdout %s\\n' \"$API_TOKEN\"; cat /tmp/$API_TOKEN/x; cat /tmp/$API_TOKEN/missing 2>/dev/null; python3 -c \"{}\"; exit 0",
        sdk.replace('"', "\\\"")
    );
    let profile = work.path().join("profile.json");
    let summary = work.path().join("profile.md");
    let profile_arg = profile.display().to_string();
    let summary_arg = summary.display().to_string();
    let policy_arg = policy.display().to_string();
    let run = VigilRun::new("secrets-everywhere")
        .env("API_TOKEN", TOKEN)
        .args([
            "--profile-level",
            "detailed",
            "--profile-out",
            &profile_arg,
            "--profile-summary-out",
            &summary_arg,
            "--policy",
            &policy_arg,
        ])
        .args([
            "--",
            "sh",
            "-c",
            &script,
            "job",
            "--password",
            PASSWORD,
            &format!("--token={TOKEN}"),
        ]);
    let (f, _dir) = run.run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    // The job really did use the secrets: its own stdout (the terminal's, not an artifact)
    // holds the token, and the kernel saw the secret path opened.
    assert!(String::from_utf8_lossy(&f.output.stdout).contains(TOKEN));
    let kernel = read_ndjson(&f.bundle.join("layers/kernel.ndjson"));
    assert!(
        kernel.iter().any(|e| e["kind"] == "file.open"
            && e["path"].as_str().is_some_and(|p| p.contains("[REDACTED]"))),
        "the open of the secret path was recorded, masked"
    );
    let sdk_layer = read_ndjson(&f.bundle.join("layers/sdk.ndjson"));
    assert!(!sdk_layer.is_empty(), "the SDK event arrived");

    let mut found = Vec::new();
    let mut checked = 0;
    for file in files_under(&f.bundle) {
        found.extend(hits(
            &file.display().to_string(),
            &std::fs::read(&file).expect("read"),
        ));
        checked += 1;
    }
    for copy in [&profile, &summary] {
        found.extend(hits(
            &copy.display().to_string(),
            &std::fs::read(copy).expect("profile copy"),
        ));
    }
    found.extend(hits("vigil's stderr", &f.output.stderr));
    let inspect = Command::new(vigil_bin())
        .arg("inspect")
        .arg(&f.bundle)
        .output()
        .expect("inspect");
    assert!(inspect.status.success());
    found.extend(hits("vigil inspect", &inspect.stdout));
    let suggest = Command::new(vigil_bin())
        .args(["policy", "suggest"])
        .arg(&f.bundle)
        .output()
        .expect("suggest");
    assert!(
        suggest.status.success(),
        "{}",
        String::from_utf8_lossy(&suggest.stderr)
    );
    found.extend(hits("vigil policy suggest", &suggest.stdout));
    let _ = std::fs::remove_dir_all(&secret_dir);
    assert!(checked >= 9, "only {checked} bundle files");
    assert!(found.is_empty(), "{found:#?}");
    assert_valid_bundle(&f.bundle);
}
