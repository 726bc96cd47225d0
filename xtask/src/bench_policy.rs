//! The policy layer's benchmark (part of `cargo xtask bench`): what enforcing a policy adds to
//! an open-heavy and a connect-heavy run, against the same run under vigil without a policy.

use std::path::Path;

use anyhow::{Context, Result};

use crate::bench::{Env, Row, paired, ratio_row};

pub fn bench(env: &Env, tmp: &Path, quick: bool) -> Result<Vec<Row>> {
    let reps = if quick { 1 } else { 5 };
    let fixture = env.fixture.to_str().context("utf8")?;
    // A closed loopback port: each connect is refused at once, so the loop is all syscall.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let policy = tmp.join("bench-policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nname: bench\nmode: enforce\ndefault: deny\nfilesystem:\n  read:\n    - id: r\n      paths: [/]\n  write:\n    - id: w\n      paths: [\"${{WORKSPACE}}\", /dev/null]\n  exec:\n    - id: x\n      paths: [/]\nnetwork:\n  connect:\n    - id: other\n      cidrs: [\"10.0.0.0/8\"]\n      ports: [443]\n    - id: local\n      cidrs: [\"127.0.0.1/32\"]\n      ports: [{port}]\n"
        ),
    )?;
    let policy = policy.to_str().context("utf8")?.to_string();
    let mut rows = Vec::new();
    for (name, argv) in [
        (
            "enforced policy: 200,000 open/close (Landlock), vs no policy",
            vec![
                fixture.to_string(),
                "open-storm".into(),
                "200000".into(),
                "/etc/hostname".into(),
            ],
        ),
        (
            "enforced policy: 50,000 connects (cgroup sock_addr, 2 rules), vs no policy",
            vec![
                fixture.to_string(),
                "connect-storm".into(),
                "50000".into(),
                format!("127.0.0.1:{port}"),
            ],
        ),
    ] {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (b, v) = paired(
            reps,
            || env.vigil_run(&[], &argv),
            || env.vigil_run(&["--policy", &policy], &argv),
        )?;
        rows.push(ratio_row(name, b, v, "≤ 1.05", |r| r <= 1.05));
    }
    Ok(rows)
}
