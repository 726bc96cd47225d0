//! What the xtask commands need on the host, checked or installed before they start: a fresh
//! machine with only the Rust toolchain and root must run `cargo xtask run` and `cargo xtask
//! test` as written. What can be installed (Debian and Python packages) is installed, said once
//! with the reason; what cannot (root, cgroup v2, BTF) is one line naming it and what to do.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// What the privileged commands need from the host and no package provides.
#[derive(Debug, Clone, Copy)]
struct HostFacts {
    root: bool,
    cgroup2: bool,
    btf: bool,
}

impl HostFacts {
    fn read() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        HostFacts {
            // SAFETY: geteuid has no preconditions.
            root: unsafe { libc::geteuid() } == 0,
            cgroup2: mounts
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some("cgroup2")),
            btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        }
    }
}

/// The first missing prerequisite as one line (an error), or a warning for BTF when the
/// command can go on without it.
fn host_problem(what: &str, f: &HostFacts, btf_required: bool) -> Result<Option<String>, String> {
    if !f.root {
        return Err(format!(
            "{what} needs root (vigil creates cgroups and loads eBPF programs): run it as root, e.g. `sudo -E cargo xtask {what}`"
        ));
    }
    if !f.cgroup2 {
        return Err(format!(
            "{what} needs cgroup v2, and /proc/self/mounts has no cgroup2 mount: boot with systemd.unified_cgroup_hierarchy=1, or mount it (`mount -t cgroup2 none /sys/fs/cgroup/unified`)"
        ));
    }
    if !f.btf {
        let msg = "this kernel has no BTF (/sys/kernel/btf/vmlinux): vigil's eBPF sensor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's and Ubuntu's are)";
        if btf_required {
            return Err(format!("{what}: {msg}"));
        }
        return Ok(Some(format!(
            "{msg}; the run goes on with kernel_layer: absent"
        )));
    }
    Ok(None)
}

/// The host facts vigil's privileged commands need. `btf` is needed by the tests (they load
/// the real sensor); a run without it goes on with `kernel_layer: absent`, so `run` only warns.
pub fn check_host(what: &str, btf_required: bool) -> Result<()> {
    match host_problem(what, &HostFacts::read(), btf_required) {
        Err(e) => bail!("{e}"),
        Ok(Some(warning)) => eprintln!("xtask: warning: {warning}"),
        Ok(None) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_prerequisite_is_one_line_naming_it_and_what_to_do() {
        let ok = HostFacts {
            root: true,
            cgroup2: true,
            btf: true,
        };
        assert_eq!(host_problem("test", &ok, true), Ok(None));
        let cases = [
            (
                HostFacts { root: false, ..ok },
                "needs root",
                "sudo -E cargo xtask test",
            ),
            (
                HostFacts {
                    cgroup2: false,
                    ..ok
                },
                "needs cgroup v2",
                "mount -t cgroup2",
            ),
            (
                HostFacts { btf: false, ..ok },
                "no BTF",
                "CONFIG_DEBUG_INFO_BTF=y",
            ),
        ];
        for (facts, what, todo) in cases {
            let e = host_problem("test", &facts, true).expect_err(what);
            assert!(
                e.contains(what) && e.contains(todo) && !e.contains('\n'),
                "{e}"
            );
        }
        // `run` goes on without BTF, with a warning.
        let warned = host_problem("run", &HostFacts { btf: false, ..ok }, false);
        assert!(matches!(warned, Ok(Some(w)) if w.contains("kernel_layer: absent")));
    }
}
