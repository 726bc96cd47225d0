//! What the xtask commands need on the host, checked or installed before they start: a fresh
//! machine with only the Rust toolchain and root must run `cargo xtask run` and `cargo xtask
//! test` as written. What can be installed (Debian and Python packages) is installed, said once
//! with the reason; what cannot (root, cgroup v2, BTF) is one line naming it and what to do.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The host facts vigil's privileged commands need. `btf` is needed by the tests (they load
/// the real sensor); a run without it goes on with `kernel_layer: absent`, so `run` only warns.
pub fn check_host(what: &str, btf_required: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root (vigil creates cgroups and loads eBPF programs): run it as root, e.g. `sudo -E cargo xtask {what}`"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    {
        bail!(
            "{what} needs cgroup v2, and /proc/self/mounts has no cgroup2 mount: boot with systemd.unified_cgroup_hierarchy=1, or mount it (`mount -t cgroup2 none /sys/fs/cgroup/unified`)"
        );
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        let msg = "this kernel has no BTF (/sys/kernel/btf/vmlinux): vigil's eBPF sensor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's and Ubuntu's are)";
        if btf_required {
            bail!("{what}: {msg}");
        }
        eprintln!("xtask: warning: {msg}; the run goes on with kernel_layer: absent");
    }
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian packages, each with why it is needed; the missing ones are installed with apt-get.
pub fn debian(pkgs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&(&str, &str)> = pkgs
        .iter()
        .filter(|(pkg, _)| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    for (pkg, why) in &missing {
        println!("xtask: installing Debian package {pkg}: {why}");
    }
    if !quiet(Command::new("apt-get").arg("--version")) {
        bail!(
            "{} missing and there is no apt-get: install them with this system's package manager",
            names.join(", ")
        );
    }
    let apt = |args: &[&str]| -> Result<()> {
        let st = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("running apt-get")?;
        if !st.success() {
            bail!("apt-get {} failed ({st})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&names);
    apt(&install)
}

/// Python packages: (module to import, pip requirement, why). Missing ones are installed with
/// the `python3` the tests run.
pub fn python(pkgs: &[(&str, &str, &str)]) -> Result<()> {
    if !quiet(Command::new("python3").arg("--version")) {
        debian(&[(
            "python3-pip",
            "the tests run Python workloads (pytest, agent SDKs)",
        )])?;
    }
    let missing: Vec<&(&str, &str, &str)> = pkgs
        .iter()
        .filter(|(module, _, _)| {
            !quiet(Command::new("python3").args(["-c", &format!("import {module}")]))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (_, req, why) in &missing {
        println!("xtask: installing Python package {req}: {why}");
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
    cmd.args(missing.iter().map(|(_, req, _)| *req));
    let st = cmd.status().context("running python3 -m pip")?;
    if !st.success() {
        bail!("python3 -m pip install failed ({st})");
    }
    Ok(())
}

/// rustup components the lint needs (rustfmt, clippy).
pub fn rust_components(components: &[(&str, &str)]) -> Result<()> {
    for (component, cargo_sub) in components {
        if quiet(Command::new(crate::cargo_bin()).args([cargo_sub, "--version"])) {
            continue;
        }
        println!("xtask: installing rustup component {component}: `cargo xtask lint` runs it");
        if !quiet(Command::new("rustup").args(["component", "add", component])) {
            bail!(
                "{component} is missing and `rustup component add {component}` failed: install it with the toolchain"
            );
        }
    }
    Ok(())
}
