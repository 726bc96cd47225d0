//! The bundle writer: one directory per run, every file written to a temporary name and renamed,
//! `artifact_index.json` written last as the commit barrier, then `<out>/LATEST`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::beneath::BundleDir;
use super::durable::BundleTree;
use super::space::Space;
use super::{files, schema};
use crate::clock;
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot create bundle directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bundle {0} already exists; pick another --run-id")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactIndex {
    pub schema: String,
    pub run_id: String,
    pub created_at: String,
    /// `committed` or `repaired`.
    pub state: String,
    pub files: Vec<FileDigest>,
}

pub struct Bundle {
    out_dir: PathBuf,
    /// Where the bundle's files are reached: its path, or `/proc/self/fd/N` of the directory
    /// fd a daemon holds.
    dir: PathBuf,
    /// The path people are shown.
    shown: PathBuf,
    run_id: String,
    /// The reserve for the commit and the data writers' budget.
    space: Arc<Space>,
    /// Created for a daemon client: its `--out` (LATEST is written beneath it) and the bundle
    /// directory, both held open.
    beneath: Option<(BundleDir, BundleDir)>,
}

impl Bundle {
    /// Create `<out>/<run_id>/` with `layers/` and `output/`. Fails if the run id was used.
    pub fn create(out_dir: &Path, run_id: &str) -> Result<Self, BundleError> {
        let dir = out_dir.join(run_id);
        fs::create_dir_all(out_dir).map_err(|source| BundleError::Create {
            path: out_dir.to_path_buf(),
            source,
        })?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(BundleError::Exists(dir));
            }
            Err(source) => return Err(BundleError::Create { path: dir, source }),
        }
        for sub in ["layers", "output"] {
            let p = dir.join(sub);
            fs::create_dir(&p).map_err(|source| BundleError::Create {
                path: p.clone(),
                source,
            })?;
        }
        let space = Space::create(&dir).map_err(|source| BundleError::Create {
            path: dir.clone(),
            source,
        })?;
        Ok(Bundle {
            out_dir: out_dir.to_path_buf(),
            shown: dir.clone(),
            dir,
            run_id: run_id.to_string(),
            space: Arc::new(space),
            beneath: None,
        })
    }

    /// Create `<out>/<run_id>/` beneath a directory a daemon client opened and handed over.
    /// The bundle directory is the daemon's own (root, 0755) until it is committed, so nothing
    /// can be planted in it; every file in it is reached through its fd, never through a
    /// path the client could swap.
    pub fn create_beneath(out: BundleDir, run_id: &str) -> Result<Self, BundleError> {
        let shown = out.path().join(run_id);
        let refused = |e: super::beneath::Refused| BundleError::Create {
            path: shown.clone(),
            source: io::Error::other(e.to_string()),
        };
        let dir = out
            .create_subdir(run_id)
            .map_err(refused)?
            .ok_or_else(|| BundleError::Exists(shown.clone()))?;
        for sub in ["layers", "output"] {
            dir.ensure_dir(sub).map_err(refused)?;
        }
        let via = PathBuf::from(format!("/proc/self/fd/{}", dir.fd().as_raw_fd()));
        let space = Space::create(&via).map_err(|source| BundleError::Create {
            path: shown.clone(),
            source,
        })?;
        Ok(Bundle {
            out_dir: out.path().to_path_buf(),
            dir: via,
            shown,
            run_id: run_id.to_string(),
            space: Arc::new(space),
            beneath: Some((out, dir)),
        })
    }

    /// Give the committed bundle (and LATEST) to the client that asked for it: every entry,
    /// never through a link.
    pub fn give_to(&self, uid: u32, gid: u32) -> Result<(), String> {
        let Some((out, dir)) = &self.beneath else {
            return Ok(());
        };
        let (files, refused) = dir.walk().map_err(|e| e.to_string())?;
        if let Some(r) = refused.first() {
            return Err(r.to_string());
        }
        for rel in files.iter().map(String::as_str).chain(["layers", "output"]) {
            dir.chown(rel, uid, gid).map_err(|e| e.to_string())?;
        }
        dir.chown_self(uid, gid).map_err(|e| e.to_string())?;
        out.chown("LATEST", uid, gid).map_err(|e| e.to_string())
    }

    /// The bundle's disk budget: data writers ask it before writing.
    pub fn space(&self) -> &Arc<Space> {
        &self.space
    }

    /// Whether the bundle was created beneath a client's directory fd.
    pub fn is_beneath(&self) -> bool {
        self.beneath.is_some()
    }

    /// The bundle's path as people know it.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write_json(&self, rel: &str, value: &impl Serialize) -> Result<(), BundleError> {
        let bytes = pretty_json(value).map_err(|e| BundleError::Write {
            path: self.path(rel),
            source: e.into(),
        })?;
        write_atomic(&self.path(rel), &bytes)
    }

    /// The run's closing documents, each written whole to a temporary and renamed over its
    /// name, none fsync'd: `commit` makes every file and directory of the bundle durable in one
    /// batch, before the index. A crash before then leaves a bundle `reindex --repair` salvages.
    ///
    /// No inode is freed for them: the reserve, given back here, is the first temporary, and a
    /// document that replaces a file (the in-progress trace, an empty layer) is exchanged with
    /// it (`RENAME_EXCHANGE`), so the old file becomes the next temporary. On ext4 without a
    /// journal every inode allocation steps over each inode freed in the last minute.
    pub fn write_documents(&self, docs: &[(&str, Vec<u8>)]) -> Result<(), BundleError> {
        let mut spare = self.space.release_as_file();
        for (rel, bytes) in docs {
            let path = self.path(rel);
            let written = match spare.take() {
                Some((tmp, f)) => put_through(&tmp, f, &path, bytes).map(|again| spare = again),
                None => replace(&path, bytes, false),
            };
            written.map_err(|source| BundleError::Write { path, source })?;
        }
        if let Some((tmp, _)) = spare {
            let _ = fs::remove_file(tmp);
        }
        Ok(())
    }

    pub fn write_bytes(&self, rel: &str, bytes: &[u8]) -> Result<(), BundleError> {
        write_atomic(&self.path(rel), bytes)
    }

    /// Write without fsync, for files that repair can recreate (empty layers, in-progress trace).
    pub fn write_plain(&self, rel: &str, bytes: &[u8]) -> Result<(), BundleError> {
        let path = self.path(rel);
        fs::write(&path, bytes).map_err(|source| BundleError::Write { path, source })
    }

    /// Write the index (the commit barrier) and then LATEST.
    /// `known` digests (computed while a file was streamed) are used for files whose size still
    /// matches; every other file is hashed.
    pub fn commit(&self, known: &[FileDigest]) -> Result<ArtifactIndex, BundleError> {
        self.space.release();
        let failed = |source| BundleError::Write {
            path: self.shown.clone(),
            source,
        };
        let tree = BundleTree::open(&self.dir, known).map_err(failed)?;
        let index = ArtifactIndex {
            schema: schema::ARTIFACT_INDEX.to_string(),
            run_id: self.run_id.clone(),
            created_at: clock::rfc3339(clock::now_ns()),
            state: "committed".to_string(),
            files: tree.digests(),
        };
        let index_path = self.dir.join(files::INDEX);
        let bytes = pretty_json(&index).map_err(|e| BundleError::Write {
            path: index_path.clone(),
            source: e.into(),
        })?;
        let (tmp, staged) = stage(&index_path, &bytes).map_err(failed)?;
        // Every byte and every name the index lists is durable before the index is (the
        // index's own bytes go out in the same batch; its name only after).
        tree.sync(&[&staged]).map_err(failed)?;
        drop(staged);
        fs::rename(&tmp, &index_path)
            .and_then(|()| File::open(&self.dir)?.sync_all())
            .map_err(failed)?;
        let latest = format!("{}\n", self.run_id);
        match &self.beneath {
            // The client's directory: never through a link it planted.
            Some((out, _)) => {
                out.write_atomic("LATEST", latest.as_bytes())
                    .map_err(|e| BundleError::Write {
                        path: self.out_dir.join("LATEST"),
                        source: io::Error::other(e.to_string()),
                    })?
            }
            None => write_atomic(&self.out_dir.join("LATEST"), latest.as_bytes())?,
        }
        Ok(index)
    }
}

pub fn is_temporary(rel: &str) -> bool {
    rel.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

/// A value as the bundle's JSON documents are written: pretty, with a final newline.
pub fn pretty_json(value: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A temporary's name for `name`, unique to this writer: runs sharing an `--out` replace its
/// LATEST at the same moment, and one's temporary must never be another's. `.<name>.<pid>-<n>.tmp`
/// ([`is_temporary`] names it so).
pub fn temporary_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{name}.{}-{n}.tmp", std::process::id())
}

/// `bytes` written to a new temporary beside `path` (created, never through a link): its path
/// and the open file.
fn stage(path: &Path, bytes: &[u8]) -> io::Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(temporary_name(&name));
    let mut f = File::create_new(&tmp)?;
    f.write_all(bytes)?;
    Ok((tmp, f))
}

/// Write `bytes` into the empty temporary `tmp` (open as `f`) and put it at `path`: exchanged
/// with the file there, which is emptied and handed back as the next temporary, or renamed
/// when there is none (or the filesystem cannot exchange).
fn put_through(
    tmp: &Path,
    mut f: File,
    path: &Path,
    bytes: &[u8],
) -> io::Result<Option<(PathBuf, File)>> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    use std::os::unix::fs::OpenOptionsExt;
    f.write_all(bytes)?;
    drop(f);
    match renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {
            let old = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(tmp)?;
            Ok(Some((tmp.to_path_buf(), old)))
        }
        Err(_) => fs::rename(tmp, path).map(|()| None),
    }
}

/// `stage`, then rename over `path`: the file is either the old one or the whole new one
/// (an fsync'd one when `sync`). The directory is not synced.
fn replace(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let (tmp, f) = stage(path, bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)
}

/// `replace`, fsync'd, then fsync the directory: the new name is durable too.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    replace(path, bytes, true)
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|source| BundleError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_indexes_every_file_and_updates_latest() {
        let out = tempfile::tempdir().expect("tempdir");
        let b = Bundle::create(out.path(), "r1").expect("create");
        b.write_bytes("output/stdout.log", b"hello").expect("write");
        b.write_json("run-trace.json", &serde_json::json!({"a": 1}))
            .expect("write");
        let idx = b.commit(&[]).expect("commit");
        let paths: Vec<_> = idx.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["output/stdout.log", "run-trace.json"]);
        assert_eq!(idx.files[0].bytes, 5);
        assert_eq!(
            idx.files[0].sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            fs::read_to_string(out.path().join("LATEST")).expect("LATEST"),
            "r1\n"
        );
        assert!(matches!(
            Bundle::create(out.path(), "r1"),
            Err(BundleError::Exists(_))
        ));
    }

    #[test]
    fn the_documents_take_the_reserve_and_the_files_they_replace_instead_of_new_inodes() {
        use std::os::unix::fs::MetadataExt;
        let out = tempfile::tempdir().expect("tempdir");
        let b = Bundle::create(out.path(), "r1").expect("create");
        let ino = |rel: &str| fs::metadata(b.path(rel)).expect(rel).ino();
        b.write_plain("run-trace.json", b"{\"in\": \"progress\"}")
            .expect("write");
        let (reserve, old_trace) = (
            ino(super::super::space::RESERVE_NAME),
            ino("run-trace.json"),
        );
        b.write_documents(&[
            ("run-trace.json", b"{\"final\": true}\n".to_vec()),
            ("observation-health.json", b"{}\n".to_vec()),
            ("run-trace-summary.md", b"# r1\n".to_vec()),
        ])
        .expect("documents");
        assert_eq!(ino("run-trace.json"), reserve);
        assert_eq!(ino("observation-health.json"), old_trace);
        let read = |rel: &str| fs::read_to_string(b.path(rel)).expect(rel);
        assert_eq!(read("run-trace.json"), "{\"final\": true}\n");
        assert_eq!(read("observation-health.json"), "{}\n");
        assert_eq!(read("run-trace-summary.md"), "# r1\n");
        let left: Vec<_> = fs::read_dir(b.path(""))
            .expect("read")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| is_temporary(n))
            .collect();
        assert!(left.is_empty(), "temporaries left: {left:?}");
        b.commit(&[]).expect("commit");
    }

    #[test]
    fn runs_sharing_an_out_commit_side_by_side() {
        // Each commit replaces the shared LATEST; with one temporary name for all, one run's
        // rename took another's temporary and the other's commit failed (ENOENT).
        let out = tempfile::tempdir().expect("tempdir");
        let ids: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
        std::thread::scope(|s| {
            for id in &ids {
                let out = out.path();
                s.spawn(move || {
                    for n in 0..10 {
                        let b = Bundle::create(out, &format!("{id}-{n}")).expect("create");
                        b.write_plain("events.ndjson", b"{}\n").expect("write");
                        b.commit(&[]).expect("every commit lands");
                    }
                });
            }
        });
        let latest = fs::read_to_string(out.path().join("LATEST")).expect("LATEST");
        assert!(out.path().join(latest.trim()).is_dir(), "{latest}");
        let left: Vec<_> = fs::read_dir(out.path())
            .expect("read")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| is_temporary(n))
            .collect();
        assert!(left.is_empty(), "temporaries left: {left:?}");
    }
}
