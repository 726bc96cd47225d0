//! The eBPF objects: which ones there are, how the sources compile to them, and the digest that
//! says whether the committed objects (`ebpf/obj/<arch>/`) are what the sources compile to.
//!
//! Shared by `agent/build.rs` (which embeds the committed objects, or compiles when the sources
//! changed) and xtask (`cargo xtask ebpf` regenerates them; its test proves them byte-identical
//! to a fresh compile). Included with `#[path]` because a build script can depend on no crate of
//! the workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Objects compiled from `ebpf/<name>.bpf.c`. The concern files (process, syscalls, oom) are
/// included by vigil.bpf.c, not compiled on their own; features.bpf.c holds the attach-type
/// probes of `vigil doctor`, netpolicy.bpf.c the network enforcement.
pub const OBJECTS: [&str; 3] = ["vigil", "features", "netpolicy"];

/// The file beside the committed objects that holds [`sources_digest`] of what they came from.
pub const DIGEST_FILE: &str = "SOURCES.sha256";

/// The vmlinux.h directory (under `ebpf/include/`) and the `__TARGET_ARCH_` of a Rust target arch.
pub fn arch_dirs(target_arch: &str) -> Result<(&'static str, &'static str)> {
    match target_arch {
        "x86_64" => Ok(("x86", "x86")),
        other => bail!("no vmlinux.h for target arch {other} (ebpf/include/ has x86 only)"),
    }
}

/// Where the committed objects of `arch` live.
pub fn committed_dir(ebpf: &Path, arch: &str) -> PathBuf {
    ebpf.join("obj").join(arch)
}

/// SHA-256 over every source the objects are compiled from: the `.c` and `.h` files under
/// `ebpf/` (not `obj/`), by relative path and content, in path order. The libbpf headers come
/// from Debian's libbpf-dev and clang from clang-19; the reproducibility test pins those.
pub fn sources_digest(ebpf: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect_sources(ebpf, ebpf, &mut files)?;
    files.sort();
    let mut hash = Sha256::new();
    for rel in &files {
        let bytes = std::fs::read(ebpf.join(rel)).with_context(|| format!("reading {rel}"))?;
        hash.update(rel.as_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Ok(hex(&hash.finalize()))
}

fn collect_sources(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            if path != root.join("obj") {
                collect_sources(root, &path, out)?;
            }
        } else if ty.is_file()
            && matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h"))
        {
            let rel = path.strip_prefix(root).context("source outside ebpf/")?;
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest the committed objects of `arch` were compiled from, if they are all there.
pub fn committed_digest(ebpf: &Path, arch: &str) -> Option<String> {
    let dir = committed_dir(ebpf, arch);
    if !OBJECTS
        .iter()
        .all(|n| dir.join(format!("{n}.bpf.o")).is_file())
    {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(DIGEST_FILE)).ok()?;
    Some(text.split_whitespace().next()?.to_string())
}

/// Compile every object into `out` with `clang` and strip DWARF with `strip` (BTF is kept, so
/// CO-RE relocates on every kernel). Paths are relative to `ebpf/` and the debug compilation
/// directory is `.`, so the bytes do not depend on where the tree is checked out.
pub fn compile(ebpf: &Path, out: &Path, target_arch: &str, clang: &str, strip: &str) -> Result<()> {
    let (define, include) = arch_dirs(target_arch)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for name in OBJECTS {
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(clang)
            .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{define}"))
            .arg("-fdebug-compilation-dir=.")
            .args(["-I", "include", "-I"])
            .arg(format!("include/{include}"))
            .arg("-c")
            .arg(format!("{name}.bpf.c"))
            .arg("-o")
            .arg(&obj)
            .current_dir(ebpf)
            .status()
            .with_context(|| {
                format!(
                    "running {clang}: recompiling the eBPF objects needs Debian's clang-19, llvm-19 and libbpf-dev (`cargo xtask test` installs them)"
                )
            })?;
        if !status.success() {
            bail!("{clang} failed on ebpf/{name}.bpf.c");
        }
        let status = Command::new(strip)
            .arg("-g")
            .arg(&obj)
            .status()
            .with_context(|| format!("running {strip}: install Debian's llvm-19"))?;
        if !status.success() {
            bail!("{strip} failed on {}", obj.display());
        }
    }
    Ok(())
}
