//! Put the sensor's eBPF objects into OUT_DIR, where `include_bytes_aligned!` embeds them.
//!
//! The CO-RE objects are committed (`ebpf/obj/<arch>/`, as cilium/ebpf's bpf2go does), so a
//! plain `cargo build` or `cargo install` needs no clang: when the sources' digest matches the
//! one recorded beside the objects, they are copied as they are. When the sources changed (a
//! developer editing `ebpf/`), or `VIGIL_EBPF_BUILD=1`, they are compiled with clang-19
//! (`VIGIL_CLANG`, `VIGIL_LLVM_STRIP` override the tools) and `cargo xtask ebpf` commits the
//! result. A test in xtask proves the committed objects are what the sources compile to.

#[path = "build/ebpf.rs"]
mod ebpf;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed=build/ebpf.rs");
    println!("cargo:rerun-if-env-changed=VIGIL_EBPF_BUILD");
    let (arch, _) = ebpf::arch_dirs(&target_arch)?;
    let digest = ebpf::sources_digest(&src)?;
    let forced = std::env::var_os("VIGIL_EBPF_BUILD").is_some_and(|v| v == "1");
    if !forced && ebpf::committed_digest(&src, arch).as_deref() == Some(digest.as_str()) {
        let dir = ebpf::committed_dir(&src, arch);
        for name in ebpf::OBJECTS {
            let file = format!("{name}.bpf.o");
            std::fs::copy(dir.join(&file), out.join(&file))
                .with_context(|| format!("copying ebpf/obj/{arch}/{file}"))?;
        }
        return Ok(());
    }
    println!("cargo:rerun-if-env-changed=VIGIL_CLANG");
    println!("cargo:rerun-if-env-changed=VIGIL_LLVM_STRIP");
    if !forced {
        println!(
            "cargo:warning=ebpf/ sources differ from the committed objects in ebpf/obj/{arch}: compiling them; run `cargo xtask ebpf` to commit the new objects"
        );
    }
    let clang = std::env::var("VIGIL_CLANG").unwrap_or_else(|_| "clang-19".into());
    let strip = std::env::var("VIGIL_LLVM_STRIP").unwrap_or_else(|_| "llvm-strip-19".into());
    ebpf::compile(&src, &out, &target_arch, &clang, &strip)
}
