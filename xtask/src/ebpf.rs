//! `cargo xtask ebpf`: recompile the eBPF objects and commit them under `ebpf/obj/<arch>/` with
//! the digest of their sources, so that `cargo build` needs no clang (agent/build.rs copies
//! them). The test below proves the committed objects are byte-identical to a fresh compile.

#[path = "../../agent/build/ebpf.rs"]
mod objects;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::root;

/// The toolchain that compiles the objects, as Debian packages with the reason.
pub const TOOLCHAIN: [(&str, &str); 3] = [
    (
        "clang-19",
        "compiles the CO-RE eBPF programs (ebpf/*.bpf.c)",
    ),
    (
        "llvm-19",
        "llvm-strip-19 drops DWARF from the eBPF objects, keeping BTF",
    ),
    (
        "libbpf-dev",
        "bpf_helpers.h and the CO-RE macros the eBPF programs include",
    ),
];

fn ebpf_dir() -> PathBuf {
    root().join("ebpf")
}

fn arch() -> Result<&'static str> {
    Ok(objects::arch_dirs(std::env::consts::ARCH)?.0)
}

/// Compile into `out` with Debian's clang-19 (or `VIGIL_CLANG`).
fn compile_into(src: &Path, out: &Path) -> Result<()> {
    let clang = std::env::var("VIGIL_CLANG").unwrap_or_else(|_| "clang-19".into());
    let strip = std::env::var("VIGIL_LLVM_STRIP").unwrap_or_else(|_| "llvm-strip-19".into());
    objects::compile(src, out, std::env::consts::ARCH, &clang, &strip)
}

pub fn regenerate() -> Result<()> {
    crate::setup::debian(&TOOLCHAIN)?;
    let src = ebpf_dir();
    let arch = arch()?;
    let dir = objects::committed_dir(&src, arch);
    let before = objects::committed_digest(&src, arch);
    compile_into(&src, &dir)?;
    let digest = objects::sources_digest(&src)?;
    if before.as_deref() == Some(digest.as_str()) {
        println!("the sources had not changed since the committed objects; recompiled anyway");
    }
    let file = dir.join(objects::DIGEST_FILE);
    std::fs::write(&file, format!("{digest}  ebpf/ sources (*.c, *.h)\n"))
        .with_context(|| format!("writing {}", file.display()))?;
    for name in objects::OBJECTS {
        let obj = dir.join(format!("{name}.bpf.o"));
        let bytes = std::fs::metadata(&obj).map(|m| m.len()).unwrap_or(0);
        println!("wrote {} ({bytes} bytes)", obj.display());
    }
    println!("sources digest {digest}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copy the sources (not the committed objects) of `from` to `to`, recursively.
    fn copy_sources(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "obj") {
                continue;
            }
            let dest = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_sources(&path, &dest);
            } else {
                std::fs::copy(&path, &dest).expect("copy");
            }
        }
    }

    /// The committed objects are what the committed sources compile to, byte for byte — compiled
    /// from a copy of the sources elsewhere, so the bytes do not depend on where the tree is.
    /// Needs Debian's clang-19, llvm-19 and libbpf-dev (`cargo xtask test` installs them); it
    /// fails, never skips, without them.
    #[test]
    fn committed_objects_are_what_the_sources_compile_to() {
        let src = ebpf_dir();
        let arch = arch().expect("arch");
        let digest = objects::sources_digest(&src).expect("digest");
        assert_eq!(
            objects::committed_digest(&src, arch).as_deref(),
            Some(digest.as_str()),
            "ebpf/obj/{arch}/{} is stale: the sources changed; run `cargo xtask ebpf` and commit the objects",
            objects::DIGEST_FILE
        );
        let tmp = std::env::temp_dir().join(format!("vigil-ebpf-repro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let copy = tmp.join("src");
        copy_sources(&src, &copy);
        assert_eq!(objects::sources_digest(&copy).expect("digest"), digest);
        let out = tmp.join("out");
        compile_into(&copy, &out).expect(
            "compiling the eBPF sources (needs clang-19, llvm-19, libbpf-dev: `cargo xtask test` installs them)",
        );
        for name in objects::OBJECTS {
            let file = format!("{name}.bpf.o");
            let fresh = std::fs::read(out.join(&file)).expect("fresh object");
            let committed = std::fs::read(objects::committed_dir(&src, arch).join(&file))
                .expect("committed object");
            assert!(
                fresh == committed,
                "ebpf/obj/{arch}/{file} ({} bytes) differs from a fresh compile ({} bytes): run `cargo xtask ebpf`",
                committed.len(),
                fresh.len()
            );
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
