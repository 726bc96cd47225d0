//! Bundles as untrusted input, as root: vigil's readers (validate, reindex, inspect, compare,
//! policy suggest) open files beneath the bundle only, refuse links, FIFOs, devices and `..`,
//! and bound what they read — each with a clear error, nothing followed, nothing hung.

use std::path::Path;
use std::process::{Command, Output};

use vigil_e2e::*;

fn vigil(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(vigil_bin())
        .args(args)
        .output()
        .expect("spawn vigil")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A committed bundle of a real run, and its out dir.
fn bundle(id: &str) -> (Finished, tempfile::TempDir) {
    let (f, dir) = VigilRun::new(id)
        .args(["--kernel-layer", "off"])
        .fixture(&["echo-env", "HOME"])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    assert_valid_bundle(&f.bundle);
    (f, dir)
}

fn validate(b: &Path) -> Output {
    vigil(&["validate".as_ref(), b.as_os_str()])
}

#[test]
fn a_planted_symlink_is_refused_never_read_and_repair_does_not_write_through_it() {
    let (f, _dir) = bundle("untrusted-link");
    let secret = tempfile::NamedTempFile::new().expect("secret");
    // A size nothing in a bundle has, so a report of it would show the target was read.
    std::fs::write(secret.path(), vec![b's'; 4242]).expect("write");
    let log = f.bundle.join("output/stdout.log");
    std::fs::remove_file(&log).expect("rm");
    std::os::unix::fs::symlink(secret.path(), &log).expect("symlink");
    let v = validate(&f.bundle);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains("output/stdout.log: a symlink"),
        "{}",
        text(&v)
    );
    assert!(
        !text(&v).contains("4242"),
        "the target was read: {}",
        text(&v)
    );
    let r = vigil(&[
        "reindex".as_ref(),
        "--repair".as_ref(),
        f.bundle.as_os_str(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert_eq!(
        std::fs::read(secret.path()).expect("secret").len(),
        4242,
        "untouched"
    );
    // A symlinked directory is refused the same way, by inspect too.
    let layers = f.bundle.join("layers");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::fs::rename(&layers, elsewhere.path().join("layers")).expect("move");
    std::os::unix::fs::symlink(elsewhere.path().join("layers"), &layers).expect("symlink");
    let v = validate(&f.bundle);
    assert!(text(&v).contains("layers: a symlink"), "{}", text(&v));
    // The bundle path itself may not be a link.
    let link = elsewhere.path().join("bundle-link");
    std::os::unix::fs::symlink(&f.bundle, &link).expect("symlink");
    for sub in ["validate", "inspect"] {
        let o = vigil(&[sub.as_ref(), link.as_os_str()]);
        assert_ne!(o.status.code(), Some(0), "{sub}: {}", text(&o));
        assert!(text(&o).contains("a symlink"), "{sub}: {}", text(&o));
    }
}

#[test]
fn fifos_and_devices_are_refused_without_hanging() {
    let (f, _dir) = bundle("untrusted-fifo");
    let sdk = f.bundle.join("layers/sdk.ndjson");
    std::fs::remove_file(&sdk).expect("rm");
    nix::unistd::mkfifo(&sdk, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("fifo");
    let dev = f.bundle.join("output/stderr.log");
    std::fs::remove_file(&dev).expect("rm");
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod /dev/null twin");
    let start = std::time::Instant::now();
    let v = validate(&f.bundle);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    let t = text(&v);
    assert!(t.contains("layers/sdk.ndjson: a FIFO"), "{t}");
    assert!(t.contains("output/stderr.log: a character device"), "{t}");
    let r = vigil(&[
        "reindex".as_ref(),
        "--repair".as_ref(),
        f.bundle.as_os_str(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
}

#[test]
fn dot_dot_in_the_index_oversized_and_deeply_nested_documents_are_refused() {
    let (f, _dir) = bundle("untrusted-index");
    let index_path = f.bundle.join("artifact_index.json");
    let mut index = read_json(&index_path);
    index["files"]
        .as_array_mut()
        .expect("files")
        .push(serde_json::json!({"path": "../outside", "sha256": "00", "bytes": 0}));
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("write");
    let v = validate(&f.bundle);
    assert!(
        text(&v).contains("../outside: not a plain relative path inside the bundle"),
        "{}",
        text(&v)
    );

    // An index past the file bound (100,000) is refused before any file is opened.
    let entries: Vec<serde_json::Value> = (0..100_001)
        .map(|i| serde_json::json!({"path": format!("f{i}"), "sha256": "00", "bytes": 0}))
        .collect();
    index["files"] = serde_json::Value::Array(entries);
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("write");
    let v = validate(&f.bundle);
    assert!(
        text(&v).contains("the index lists 100001 files; vigil reads at most 100000"),
        "{}",
        text(&v)
    );

    // A 10 GiB (sparse) trace is refused by its size, not read.
    let trace = f.bundle.join("run-trace.json");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&trace)
        .expect("open");
    file.set_len(10 << 30).expect("sparse");
    drop(file);
    let i = vigil(&["inspect".as_ref(), f.bundle.as_os_str()]);
    assert_ne!(i.status.code(), Some(0));
    assert!(
        text(&i).contains("more than the 268435456 bytes vigil reads"),
        "{}",
        text(&i)
    );

    // Deep nesting stops at serde_json's recursion bound with a clear error.
    std::fs::write(&trace, "[".repeat(100_000)).expect("write");
    let i = vigil(&["inspect".as_ref(), f.bundle.as_os_str()]);
    assert_ne!(i.status.code(), Some(0));
    assert!(
        text(&i).contains("run-trace.json: not valid JSON: recursion limit exceeded"),
        "{}",
        text(&i)
    );
}

#[test]
fn compare_and_suggest_refuse_linked_layers() {
    let (a, _da) = bundle("untrusted-cmp-a");
    let (b, _db) = bundle("untrusted-cmp-b");
    let secret = tempfile::NamedTempFile::new().expect("secret");
    std::fs::write(
        secret.path(),
        b"{\"kind\":\"process.exec\",\"filename\":\"/secret\"}\n",
    )
    .expect("write");
    for bundle in [&a.bundle, &b.bundle] {
        let k = bundle.join("layers/kernel.ndjson");
        std::fs::remove_file(&k).expect("rm");
        std::os::unix::fs::symlink(secret.path(), &k).expect("symlink");
    }
    let s = vigil(&["policy".as_ref(), "suggest".as_ref(), a.bundle.as_os_str()]);
    assert_ne!(s.status.code(), Some(0), "{}", text(&s));
    assert!(text(&s).contains("a symlink"), "{}", text(&s));
    assert!(!text(&s).contains("/secret"), "{}", text(&s));
    let c = vigil(&[
        "compare".as_ref(),
        a.bundle.as_os_str(),
        b.bundle.as_os_str(),
    ]);
    assert_ne!(c.status.code(), Some(0), "{}", text(&c));
}
