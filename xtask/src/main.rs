//! cargo xtask: the project's own commands.
//!
//!   cargo xtask test            build vigil and the fixtures, run every test (needs root)
//!   cargo xtask run [--plan FILE | -- CMD…]   run vigil on a real example (a plan, or CMD), then validate and inspect it
//!   cargo xtask bench           release build; overhead, throughput and latency vs bare runs
//!   cargo xtask lint            rustfmt --check and clippy -D warnings
//!   cargo xtask ebpf            recompile the eBPF objects committed under ebpf/obj/<arch>/
//!   cargo xtask fuzz [--cases N]  every parser's property tests with N cases each (default 10,000)
//!   cargo xtask soak [--minutes M]  mixed runs for M minutes; leaks, leftovers, invalid bundles
//!   cargo xtask codegen         regenerate ebpf/include/<arch>/vmlinux.h from this host's BTF
//!   cargo xtask vm [--kernel 5.10|6.1|6.12|7.x|all] [-- CMD…]  the kernel-facing tests (or CMD)
//!                               in a qemu guest booting Debian's kernel of that version
//!
//! `run` and `test` set up what they need on a fresh machine (setup.rs): a missing Debian or
//! Python package is installed, said once with the reason; a missing host fact (root, cgroup v2,
//! BTF) is one line naming it.

mod bench;
mod bench_contracts;
mod bench_daemon;
mod bench_export;
mod bench_kernel;
mod bench_observer;
mod bench_paths;
mod bench_policy;
mod bench_watch;
mod ebpf;
mod setup;
mod soak;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("run") => run(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("lint") => lint(),
        Some("ebpf") => ebpf::regenerate(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("soak") => soak::soak_command(&args[1..]),
        Some("codegen") => codegen(),
        Some("vm") => vm::vm(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test | run [--plan FILE | -- CMD…] | bench [--quick] [--no-kernel|--kernel-only|--observer-only|--policy-only|--contracts-only|--daemon-only|--export-only|--watch-only|--tee-only] | lint | fuzz [--cases N] | soak [--minutes M] | ebpf | codegen | vm [--kernel K|all] [-- CMD…]"
            );
            std::process::exit(2);
        }
    };
    // One line, the causes joined: what is missing and what to do, not a backtrace.
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// The kernels `cargo xtask test` boots (`cargo xtask vm --kernel all` runs every one).
const VM_KERNELS_IN_TEST: [&str; 2] = ["5.10", "7.x"];

/// How long `cargo xtask test` soaks (`cargo xtask soak --minutes M` for longer).
const SOAK_MINUTES: f64 = 2.0;

/// Python packages the tests use, pinned where a test depends on a version's internals.
const TEST_PYTHON: [(&str, &str, &str); 7] = [
    (
        "pytest",
        "pytest",
        "the plan tests triage a real pytest run's JUnit report",
    ),
    (
        "agents",
        "openai-agents==0.24.0",
        "the --agent-shim tests run an unmodified openai-agents agent (offline, scripted model)",
    ),
    (
        "google.genai",
        "google-genai==3.4.0",
        "the --agent-shim tests run an unmodified google-genai agent (offline, scripted model)",
    ),
    (
        "prometheus_client",
        "prometheus_client==0.26.0",
        "the daemon tests parse a real metrics scrape with the official Prometheus client's parser",
    ),
    (
        "opentelemetry.proto",
        "opentelemetry-proto==1.45.2",
        "the export tests parse otlp-json strictly with the official OpenTelemetry protos",
    ),
    (
        "junitparser",
        "junitparser==5.0.3",
        "the export tests read the JUnit export with a third-party JUnit parser",
    ),
    (
        "perfetto",
        "perfetto==0.59.1",
        "the export tests parse the .pftrace with the official Perfetto protos (perfetto_trace_pb2)",
    ),
];

/// Debian packages the tests use besides the eBPF toolchain.
const TEST_DEBIAN: [(&str, &str); 3] = [
    (
        "systemd",
        "the daemon tests check contrib/systemd/ with systemd-analyze verify",
    ),
    (
        "util-linux",
        "the daemon tests run it under the unit's capability bounding set with setpriv",
    ),
    (
        "chromium",
        "the export tests load the HTML report in a real headless Chromium",
    ),
];

/// The cargo that runs xtask.
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `cargo ARGS…` in the workspace root, with the cargo that runs xtask.
fn cargo_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(args).current_dir(root());
    cmd
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let status = cargo_cmd(args)
        .status()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test() -> Result<()> {
    setup::check_host("test", true)?;
    // The eBPF toolchain: one test recompiles the committed objects and compares the bytes.
    setup::debian(&ebpf::TOOLCHAIN)?;
    setup::debian(&TEST_DEBIAN)?;
    setup::python(&TEST_PYTHON)?;
    // The end-to-end tests drive the real binaries; build them first.
    cargo(&["build", "--workspace", "--bins"])?;
    // Stream cargo's output through, tallying every suite, and close with one plain line: the
    // last suite cargo runs (doc tests) has none, and its "0 passed" must not read as the total.
    let mut child = cargo_cmd(&["test", "--workspace", "--no-fail-fast"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, "passed");
            failed += count(rest, "failed");
        }
    }
    let status = child.wait()?;
    // Then two minutes of mixed runs: what only time shows (leaks, leftovers).
    match soak::soak(SOAK_MINUTES) {
        Ok(()) => passed += 1,
        Err(e) => {
            eprintln!("xtask: soak: {e:#}");
            failed += 1;
        }
    }
    // Then the kernel matrix's two ends in qemu guests, side by side: the kernel tests on the
    // oldest and the newest Debian kernel (the guests take both cores, so after everything
    // else).
    match vm::test_matrix(&VM_KERNELS_IN_TEST) {
        Ok(outcomes) => {
            for (name, outcome) in outcomes {
                match outcome {
                    Ok(()) => passed += 1,
                    Err(e) => {
                        eprintln!("xtask: vm {name}: {e:#}");
                        failed += 1;
                    }
                }
            }
        }
        Err(e) => {
            eprintln!("xtask: vm: {e:#}");
            failed += 1;
        }
    }
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if failed > 0 {
        bail!("the soak or a kernel of the matrix failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The number before `what` in a libtest summary ("ok. 36 passed; 0 failed; …").
fn count(summary: &str, what: &str) -> u64 {
    let words: Vec<&str> = summary
        .split([' ', ';'])
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find(|w| w[1] == what)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}

/// The property tests of every parser (agent/tests/parsers.rs) with `--cases N` each (CI runs
/// them with the default 256 as part of `cargo xtask test`). Stable Rust: no nightly needed.
fn fuzz(args: &[String]) -> Result<()> {
    let cases = match args {
        [] => 10_000,
        [flag, n] if flag == "--cases" => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("--cases {n}: expected a whole number ≥ 1"))?,
        _ => bail!("usage: cargo xtask fuzz [--cases N]"),
    };
    println!("xtask: property tests of every parser, {cases} cases each");
    let status = cargo_cmd(&["test", "-p", "vigil", "--test", "parsers"])
        .env("PROPTEST_CASES", cases.to_string())
        .status()
        .context("cargo test")?;
    if !status.success() {
        bail!(
            "a parser property failed ({status}); pin its minimal input in agent/tests/parsers.rs `regressions`"
        );
    }
    Ok(())
}

/// vmlinux.h for CO-RE: the kernel's types as C, from /sys/kernel/btf/vmlinux (Debian bpftool).
/// Committed, so builds need no BTF; CO-RE relocates field accesses on every other kernel.
fn codegen() -> Result<()> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => bail!("no vmlinux.h directory for {other}"),
    };
    let out = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "c",
        ])
        .output()
        .context("running bpftool (apt-get install bpftool)")?;
    if !out.status.success() {
        bail!("bpftool failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = root().join("ebpf/include").join(arch).join("vmlinux.h");
    std::fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({} bytes)", path.display(), out.stdout.len());
    Ok(())
}

fn lint() -> Result<()> {
    setup::rust_components(&[("rustfmt", "fmt"), ("clippy", "clippy")])?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// The README's example: a job that prints, then goes silent; basic liveness (2 s stall) kills
/// it, the bundle is validated and summarised.
fn run(args: &[String]) -> Result<()> {
    setup::check_host("run", false)?;
    let plan = args
        .iter()
        .position(|a| a == "--plan")
        .and_then(|i| args.get(i + 1));
    if plan.is_some() {
        // The example gate (examples/gate) runs a pytest step.
        setup::python(&TEST_PYTHON[..1])?;
    }
    cargo(&["build", "-p", "vigil"])?;
    let vigil = root().join("target/debug/vigil");
    let out = root().join(".artifacts/runs");
    let user_cmd: Vec<String> = args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .cloned()
        .collect();
    let mut cmd = Command::new(&vigil);
    cmd.arg("run").arg("--out").arg(&out);
    if let Some(plan) = plan {
        cmd.args(["--plan", plan]);
    } else if user_cmd.is_empty() {
        let script = "echo 'building…'; for i in 1 2 3; do echo \"step $i\"; sleep 0.2; done; \
                      echo 'waiting on a lock that never frees'; sleep 600";
        cmd.args([
            "--liveness-stall-ms",
            "2000",
            "--liveness-kill-grace-ms",
            "1000",
            "--profile-level",
            "detailed",
        ]);
        cmd.args([
            "--profile-out",
            ".artifacts/run-trace.json",
            "--profile-summary-out",
            ".artifacts/run-trace-summary.md",
        ]);
        cmd.args(["--", "sh", "-c", script]);
    } else {
        cmd.arg("--").args(&user_cmd);
    }
    let status = cmd.current_dir(root()).status().context("running vigil")?;
    println!(
        "\nvigil exited with {}",
        status.code().map_or("a signal".into(), |c| c.to_string())
    );
    let latest = std::fs::read_to_string(out.join("LATEST")).context("reading LATEST")?;
    let bundle = out.join(latest.trim());
    println!("bundle: {}\n", bundle.display());
    for sub in ["validate", "inspect"] {
        let st = Command::new(&vigil).arg(sub).arg(&bundle).status()?;
        if !st.success() {
            bail!("vigil {sub} failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_libtest_summaries() {
        let line =
            "ok. 36 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.06s";
        assert_eq!(super::count(line, "passed"), 36);
        assert_eq!(super::count(line, "failed"), 2);
        assert_eq!(super::count("FAILED. 1 passed; 3 failed;", "failed"), 3);
    }
}
