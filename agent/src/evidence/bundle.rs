//! The bundle writer: one directory per run, every file written to a temporary name and renamed,
//! `artifact_index.json` written last as the commit barrier, then `<out>/LATEST`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::beneath::BundleDir;
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

    /// The run's closing documents, each as `write_atomic` writes one (a temporary, fsync'd,
    /// renamed over) but without a directory fsync each: `commit` syncs every directory of the
    /// bundle once, before the index. For a run's three or four documents that is three or
    /// four fsyncs fewer at the end of every run.
    pub fn write_documents(&self, docs: &[(&str, Vec<u8>)]) -> Result<(), BundleError> {
        for (rel, bytes) in docs {
            let path = self.path(rel);
            replace(&path, bytes).map_err(|source| BundleError::Write { path, source })?;
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
        // Every name the index will list is durable before the index is: the documents'
        // renames, the layers' and captures' creation (their writers fsync'd their data).
        sync_dirs(&self.dir).map_err(|source| BundleError::Write {
            path: self.shown.clone(),
            source,
        })?;
        let index = write_index_with(&self.dir, &self.run_id, "committed", known)?;
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

/// Compute and atomically write `artifact_index.json` for a bundle directory.
pub fn write_index(dir: &Path, run_id: &str, state: &str) -> Result<ArtifactIndex, BundleError> {
    write_index_with(dir, run_id, state, &[])
}

fn write_index_with(
    dir: &Path,
    run_id: &str,
    state: &str,
    known: &[FileDigest],
) -> Result<ArtifactIndex, BundleError> {
    let files = digest_files_with(dir, known).map_err(|source| BundleError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let index = ArtifactIndex {
        schema: schema::ARTIFACT_INDEX.to_string(),
        run_id: run_id.to_string(),
        created_at: clock::rfc3339(clock::now_ns()),
        state: state.to_string(),
        files,
    };
    let mut bytes = serde_json::to_vec_pretty(&index).map_err(|e| BundleError::Write {
        path: dir.join(files::INDEX),
        source: e.into(),
    })?;
    bytes.push(b'\n');
    write_atomic(&dir.join(files::INDEX), &bytes)?;
    Ok(index)
}

fn digest_files_with(dir: &Path, known: &[FileDigest]) -> io::Result<Vec<FileDigest>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .map_err(io::Error::other)?
                .to_string_lossy()
                .into_owned();
            if rel == files::INDEX || is_temporary(&rel) {
                continue;
            }
            let len = entry.metadata()?.len();
            if let Some(k) = known.iter().find(|k| k.path == rel && k.bytes == len) {
                out.push(k.clone());
                continue;
            }
            let (sha256, bytes) = sha256_file(&path)?;
            out.push(FileDigest {
                path: rel,
                sha256,
                bytes,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

pub fn is_temporary(rel: &str) -> bool {
    rel.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// fsync `dir` and every directory beneath it.
fn sync_dirs(dir: &Path) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
        File::open(&d)?.sync_all()?;
    }
    Ok(())
}

/// A value as the bundle's JSON documents are written: pretty, with a final newline.
pub fn pretty_json(value: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Write `bytes` to `.<name>.tmp` beside `path`, fsync it and rename it over `path`: the file
/// is either the old one or the whole new one. The directory is not synced.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

/// `replace`, then fsync the directory: the new name is durable too.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    replace(path, bytes)
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
}
