//! The kernel layer's benchmarks (part of `cargo xtask bench`): fork/exec-, build- and
//! open-heavy workloads bare, under vigil and under `strace -f`; what watching one run costs
//! the rest of the host; how fast events drain without loss; vigil's peak RSS.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::{Env, Row, median, paired, ratio_row, sh, time_ms};

const SPAWNS: &str = "i=0; while [ $i -lt 5000 ]; do sh -c true; i=$((i+1)); done";

fn need(tool: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()?
        .success();
    if !found {
        bail!("the kernel benchmarks need `{tool}`: apt-get install strace make gcc");
    }
    Ok(())
}

fn strace(argv: &[&str]) -> Command {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o", "/dev/null"]).args(argv);
    c
}

/// A small C project of `files` translation units and its Makefile.
fn generate_c_project(dir: &Path, files: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut main = String::from("#include <stdio.h>\n");
    for i in 0..files {
        let body = (0..8)
            .map(|j| format!("int f{i}_{j}(int x) {{ return x * {j} + {i}; }}\n"))
            .collect::<String>();
        std::fs::write(dir.join(format!("u{i}.c")), body)?;
        main.push_str(&format!("int f{i}_0(int);\n"));
    }
    main.push_str("int main(void) { int s = 0;\n");
    for i in 0..files {
        main.push_str(&format!("  s += f{i}_0({i});\n"));
    }
    main.push_str("  printf(\"%d\\n\", s); return 0; }\n");
    std::fs::write(dir.join("main.c"), main)?;
    std::fs::write(
        dir.join("Makefile"),
        "SRCS := $(wildcard *.c)\nOBJS := $(SRCS:.c=.o)\napp: $(OBJS)\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O1 -c $< -o $@\n",
    )?;
    Ok(())
}

/// A `vigil run` of a silent `sleep`, started and watching its cgroup until dropped.
pub(crate) struct Watcher(Child);

impl Watcher {
    fn start(env: &Env, kernel_layer: &str) -> Result<Self> {
        Self::start_on(env, kernel_layer, None)
    }

    /// With `VIGIL_SYSCALL_PATH` set to `path`.
    pub(crate) fn start_on(env: &Env, kernel_layer: &str, path: Option<&str>) -> Result<Self> {
        let mut cmd = env.vigil_run(
            &["--liveness-level", "off", "--kernel-layer", kernel_layer],
            &["sh", "-c", "echo ready; exec sleep 3600"],
        );
        if let Some(path) = path {
            cmd.env("VIGIL_SYSCALL_PATH", path);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start watcher")?;
        // The child prints after the sensor is attached (vigil loads it before spawning).
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("watcher run did not start: {line:?}");
        }
        Ok(Watcher(child))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// Run vigil to the end and return its exit code and peak RSS in MiB (wait4's ru_maxrss: the
/// largest of vigil and the descendants it waited for).
fn peak_rss_mib(mut cmd: Command) -> Result<(i32, f64)> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut status = 0;
    // SAFETY: plain zeroed out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, writing into locals.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok((libc::WEXITSTATUS(status), usage.ru_maxrss as f64 / 1024.0))
}

fn lost(env: &Env) -> Result<u64> {
    let health: Value = serde_json::from_str(&env.latest_file("observation-health.json")?)?;
    health["lost_events"]["kernel_ring_buffer"]
        .as_u64()
        .context("lost_events")
}

pub fn bench(env: &Env, tmp: &Path, quick: bool) -> Result<Vec<Row>> {
    for tool in ["strace", "make", "cc"] {
        need(tool)?;
    }
    let reps = |full: usize, q: usize| if quick { q } else { full };
    let fixture = env.fixture.to_str().context("utf8")?;
    let mut rows = Vec::new();
    let project = tmp.join("cproject");
    generate_c_project(&project, 40)?;
    let project_s = project.to_str().context("utf8")?.to_string();
    let make = format!("make -s -B -j2 -C {project_s}");
    let opens = "200000";

    // 1. Workloads bare vs under vigil (kernel layer on, its per-run load included) vs under
    //    strace -f, the tool people reach for otherwise.
    let workloads: [(&'static str, &'static str, Vec<String>, &'static str); 3] = [
        (
            "5,000 `sh -c true` spawns under vigil (kernel layer on)",
            "5,000 `sh -c true` spawns under `strace -f`",
            vec!["sh".into(), "-c".into(), SPAWNS.into()],
            "≤ 1.05",
        ),
        (
            "`make -j2` of a generated 41-file C project under vigil (kernel layer on)",
            "`make -j2` of the C project under `strace -f`",
            vec!["sh".into(), "-c".into(), make.clone()],
            "≤ 1.05",
        ),
        (
            "200,000 open/close of one file under vigil (kernel layer on)",
            "200,000 open/close under `strace -f`",
            vec![
                fixture.into(),
                "open-storm".into(),
                opens.into(),
                "/etc/hostname".into(),
            ],
            "(report)",
        ),
    ];
    for (name, strace_name, argv, target) in workloads {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let bare = || {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        };
        let (b, v) = paired(reps(5, 1), bare, || env.vigil_run(&[], &argv))?;
        let lost = lost(env)?;
        let mut row = ratio_row(name, b, v, target, |r| r <= 1.05 || target == "(report)");
        if lost > 0 {
            row.figure += &format!(" ({lost} events lost, counted)");
        }
        rows.push(row);
        if target != "(report)" {
            let (b, p) = paired(reps(5, 1), bare, || {
                env.vigil_run(&["--kernel-layer", "process"], &argv)
            })?;
            rows.push(ratio_row(
                "  … the same with `--kernel-layer process` (no syscall probes)",
                b,
                p,
                target,
                |r| r <= 1.05,
            ));
        }
        let (b, s) = paired(reps(3, 1), bare, || strace(&argv))?;
        rows.push(ratio_row(strace_name, b, s, "(reference)", |_| true));
    }

    // 2. The rest of the host: the same workloads outside, while vigil watches another run.
    let storm = format!("{fixture} open-storm {opens} /etc/hostname");
    let getppid = format!("{fixture} getppid-loop 2000000");
    for (name, script, scope, target) in [
        (
            "host cost: 5,000 `sh -c true` spawns outside, while vigil watches a run",
            SPAWNS,
            "auto",
            "≤ 1.02",
        ),
        (
            "host cost: `make -j2` outside, while vigil watches a run",
            make.as_str(),
            "auto",
            "≤ 1.02",
        ),
        (
            "host cost: 200,000 open/close outside, while vigil watches a run",
            storm.as_str(),
            "auto",
            "≤ 1.02",
        ),
        (
            "host cost: 200,000 open/close outside, while vigil watches with `--kernel-layer process`",
            storm.as_str(),
            "process",
            "≤ 1.02",
        ),
        (
            "host cost: 200,000 open/close outside, while vigil watches with `--kernel-layer network`",
            storm.as_str(),
            "network",
            "≤ 1.02",
        ),
        (
            "host cost: 2,000,000 getppid() outside, while vigil watches a run",
            getppid.as_str(),
            "auto",
            "(stated)",
        ),
        (
            "host cost: 2,000,000 getppid() outside, while vigil watches with `--kernel-layer network`",
            getppid.as_str(),
            "network",
            "≤ 1.02",
        ),
    ] {
        let (mut b, mut v) = (Vec::new(), Vec::new());
        time_ms(&mut sh(script))?;
        for _ in 0..reps(5, 1) {
            b.push(time_ms(&mut sh(script))?);
            let watcher = Watcher::start(env, scope)?;
            v.push(time_ms(&mut sh(script))?);
            drop(watcher);
        }
        // With the syscall program attached the cost is stated, not bounded (getppid is the
        // worst case: nothing but syscall entry and exit).
        let stated = target == "(stated)";
        rows.push(ratio_row(name, median(b), median(v), target, |r| {
            stated || r <= 1.02
        }));
    }

    // 3. Events drained without loss: paced opens (one file.open event each) for about a
    //    second at rising rates.
    let mut best = 0u64;
    let mut figures = Vec::new();
    for rate in [50_000u64, 100_000, 200_000, 400_000] {
        let n = rate.to_string();
        time_ms(&mut env.vigil_run(
            &[],
            &[fixture, "open-paced", &n, &n, "/nonexistent/vigil-bench"],
        ))?;
        let lost = lost(env)?;
        figures.push(format!("{}k/s: {lost} lost", rate / 1000));
        if lost == 0 {
            best = rate;
        }
    }
    rows.push(Row {
        name: "file.open events drained without loss (1 s at each rate)",
        baseline: "50k–400k events/s".into(),
        vigil: figures.join("; "),
        figure: format!("{}k events/s", best / 1000),
        target: "zero loss at 50k/s",
        ok: best >= 50_000,
    });

    // 4. Peak RSS of vigil: a trivial run, and a run that floods the kernel layer.
    let mut rss = Vec::new();
    for (label, argv) in [
        ("`true`", vec!["true"]),
        (
            "1,000,000-open storm",
            vec![fixture, "open-storm", "1000000", "/nonexistent/vigil-bench"],
        ),
    ] {
        let (code, mib) = peak_rss_mib(env.vigil_run(&[], &argv))?;
        if code != 0 {
            bail!("vigil run of {label} exited {code}");
        }
        rss.push((label, mib));
    }
    let worst = rss.iter().map(|r| r.1).fold(0.0, f64::max);
    rows.push(Row {
        name: "vigil peak RSS (kernel layer on)",
        baseline: "-".into(),
        vigil: rss
            .iter()
            .map(|(l, m)| format!("{l}: {m:.1} MiB"))
            .collect::<Vec<_>>()
            .join("; "),
        figure: format!("{worst:.1} MiB"),
        target: "≤ 40 MB",
        ok: worst <= 40.0,
    });
    Ok(rows)
}
