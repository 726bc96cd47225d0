//! Compile the sensor object ../ebpf/vigil.bpf.c (which includes one .bpf.c per concern) with
//! clang (CO-RE, BTF kept, DWARF stripped, reproducible paths) into OUT_DIR, where
//! `include_bytes_aligned!` embeds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let ebpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let clang = std::env::var("VIGIL_CLANG").unwrap_or_else(|_| "clang-19".into());
    let strip = std::env::var("VIGIL_LLVM_STRIP").unwrap_or_else(|_| "llvm-strip-19".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH")?.as_str() {
        "x86_64" => ("x86", "x86"),
        "aarch64" => ("arm64", "arm64"),
        other => bail!("no vmlinux.h for target arch {other}"),
    };
    println!("cargo:rerun-if-changed={}", ebpf.display());
    println!("cargo:rerun-if-env-changed=VIGIL_CLANG");
    // The concern files are included by vigil.bpf.c, not compiled on their own; features.bpf.c
    // holds the attach-type probes of `vigil doctor`, netpolicy.bpf.c the network enforcement.
    for name in ["vigil", "features", "netpolicy"] {
        let path = ebpf.join(format!("{name}.bpf.c"));
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{}", arch.0))
            .arg("-fdebug-compilation-dir=.")
            .arg("-I")
            .arg(ebpf.join("include"))
            .arg("-I")
            .arg(ebpf.join("include").join(arch.1))
            .arg("-c")
            .arg(&path)
            .arg("-o")
            .arg(&obj)
            .current_dir(&ebpf)
            .status()
            .with_context(|| {
                format!("running {clang}: install clang-19 (cargo xtask test and .ci/run do)")
            })?;
        if !status.success() {
            bail!("{clang} failed on {}", path.display());
        }
        let status = Command::new(&strip)
            .arg("-g")
            .arg(&obj)
            .status()
            .with_context(|| format!("running {strip}: install llvm-19"))?;
        if !status.success() {
            bail!("{strip} failed on {}", obj.display());
        }
    }
    Ok(())
}
