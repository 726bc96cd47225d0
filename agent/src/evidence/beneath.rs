//! A bundle directory as untrusted input. vigil runs as root and reads (and repairs) bundles
//! that others could have written, so every file is opened relative to the bundle's directory
//! fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a symlink anywhere in the path is
//! refused, never followed (`output/stdout.log` → `/etc/shadow` reads nothing), `..` and
//! absolute paths are refused before the kernel sees them, and only regular files are read
//! (a FIFO would hang a reader, a device could be anything). What is read is bounded.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2, renameat};
use nix::sys::stat::Mode;

/// The largest JSON document vigil parses from a bundle (index, trace, health).
pub const MAX_DOCUMENT: u64 = 256 * 1024 * 1024;
/// The most files an index may list, and a bundle may hold.
pub const MAX_FILES: usize = 100_000;
/// The deepest directory nesting walked.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error(
        "{0}: not a plain relative path inside the bundle (`..`, `.`, absolute and empty components are refused)"
    )]
    BadPath(String),
    #[error("{0}: a symlink; bundle readers never follow links")]
    Symlink(String),
    #[error("{path}: a {kind}, not a regular file; refused")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path}: {size} bytes, more than the {limit} bytes vigil reads")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error(
        "{0}: the bundle holds more than {MAX_FILES} files, or nests deeper than {MAX_DEPTH} directories"
    )]
    TooMany(String),
    #[error("{0}: no such file in the bundle")]
    Missing(String),
    #[error("{path}: {error}")]
    Io { path: String, error: String },
}

impl Refused {
    fn io(path: &str, e: impl std::fmt::Display) -> Self {
        Refused::Io {
            path: path.to_string(),
            error: e.to_string(),
        }
    }

    /// The file is simply not there.
    pub fn is_missing(&self) -> bool {
        matches!(self, Refused::Missing(_))
    }
}

/// A relative path of plain components, or why not.
fn check_rel(rel: &str) -> Result<(), Refused> {
    let ok = !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(Refused::BadPath(rel.to_string()))
    }
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "file"
    }
}

/// One bundle directory, opened without following a link.
#[derive(Debug)]
pub struct BundleDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl BundleDir {
    /// Open `path` as a directory; a symlink in its last component is refused.
    pub fn open(path: &Path) -> Result<Self, Refused> {
        let shown = path.display().to_string();
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_NOFOLLOW with O_DIRECTORY answers ENOTDIR for a link.
            Errno::ELOOP => Refused::Symlink(shown.clone()),
            Errno::ENOTDIR if path.symlink_metadata().is_ok_and(|m| m.is_symlink()) => {
                Refused::Symlink(shown.clone())
            }
            Errno::ENOTDIR => Refused::NotRegular {
                path: shown.clone(),
                kind: "non-directory",
            },
            other => Refused::io(&shown, other.desc()),
        })?;
        Ok(BundleDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// A directory already opened by someone else (a daemon client's `--out`), shown as `path`.
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> Self {
        BundleDir { fd, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Create the directory `name` (one component) beneath this one and open it: `Ok(None)`
    /// when it exists already. The new directory must be this process's and empty once opened,
    /// so a directory someone swapped in between the mkdir and the open is refused.
    pub fn create_subdir(&self, name: &str) -> Result<Option<BundleDir>, Refused> {
        check_rel(name)?;
        if name.contains('/') {
            return Err(Refused::io(name, "not a single path component"));
        }
        match nix::sys::stat::mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Ok(None),
            Err(e) => return Err(Refused::io(name, e.desc())),
        }
        let fd = self.open_at(name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| Refused::io(name, e.desc()))?;
        // An empty directory has two links ("." and its entry); one we made is ours.
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_nlink != 2 {
            return Err(Refused::io(
                name,
                "replaced between its creation and its opening",
            ));
        }
        Ok(Some(BundleDir {
            fd,
            path: self.path.join(name),
        }))
    }

    /// Give `rel` (a file or directory beneath, never through a link) to `uid:gid`.
    pub fn chown(&self, rel: &str, uid: u32, gid: u32) -> Result<(), Refused> {
        let (parent, name) = self.parent_of(rel)?;
        nix::unistd::fchownat(
            parent.as_fd(),
            name,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Refused::io(rel, e.desc()))
    }

    /// Give this directory itself to `uid:gid`.
    pub fn chown_self(&self, uid: u32, gid: u32) -> Result<(), Refused> {
        nix::unistd::fchown(
            self.fd.as_fd(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| Refused::io(".", e.desc()))
    }

    /// RESOLVE_NO_SYMLINKS refuses a link in every component, the last one included (with
    /// ELOOP; O_NOFOLLOW would turn that into ENOTDIR for directory opens).
    fn how(flags: OFlag) -> OpenHow {
        OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
    }

    fn open_at(&self, rel: &str, flags: OFlag) -> Result<OwnedFd, Refused> {
        check_rel(rel)?;
        openat2(self.fd.as_fd(), rel, Self::how(flags)).map_err(|e| match e {
            Errno::ELOOP | Errno::EXDEV => Refused::Symlink(rel.to_string()),
            Errno::ENOENT => Refused::Missing(rel.to_string()),
            other => Refused::io(rel, other.desc()),
        })
    }

    /// Open a regular file beneath the bundle for reading. `O_NONBLOCK` so that a FIFO planted
    /// under a file's name cannot block the open; it is refused by type right after.
    pub fn open_file(&self, rel: &str) -> Result<File, Refused> {
        let fd = self.open_at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
        let file = File::from(fd);
        let ft = file
            .metadata()
            .map_err(|e| Refused::io(rel, e))?
            .file_type();
        if !ft.is_file() {
            return Err(Refused::NotRegular {
                path: rel.to_string(),
                kind: kind_of(ft),
            });
        }
        Ok(file)
    }

    /// A whole regular file, at most `limit` bytes.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>, Refused> {
        let file = self.open_file(rel)?;
        let size = file.metadata().map_err(|e| Refused::io(rel, e))?.len();
        if size > limit {
            return Err(Refused::TooLarge {
                path: rel.to_string(),
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // `take` holds even if the file grows while it is read.
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Refused::io(rel, e))?;
        if bytes.len() as u64 > limit {
            return Err(Refused::TooLarge {
                path: rel.to_string(),
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok(bytes)
    }

    /// A JSON document of the bundle, bounded in size (serde_json bounds its nesting at 128).
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T, Refused> {
        let bytes = self.read(rel, MAX_DOCUMENT)?;
        serde_json::from_slice(&bytes).map_err(|e| Refused::io(rel, format!("not valid JSON: {e}")))
    }

    /// Every regular file beneath the bundle, by relative path, sorted; and what was refused
    /// on the way (symlinks, FIFOs, devices, sockets: listed, never opened or followed).
    pub fn walk(&self) -> Result<(Vec<String>, Vec<Refused>), Refused> {
        let mut files = Vec::new();
        let mut refused = Vec::new();
        let mut stack: Vec<(String, usize)> = vec![(String::new(), 0)];
        while let Some((rel, depth)) = stack.pop() {
            let fd = if rel.is_empty() {
                self.fd.try_clone().map_err(|e| Refused::io(".", e))?
            } else {
                self.open_at(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?
            };
            let mut dir = Dir::from_fd(fd).map_err(|e| Refused::io(&rel, e.desc()))?;
            for entry in dir.iter() {
                let entry = entry.map_err(|e| Refused::io(&rel, e.desc()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                match entry.file_type() {
                    Some(Type::Directory) => {
                        if depth + 1 > MAX_DEPTH {
                            return Err(Refused::TooMany(path));
                        }
                        stack.push((path, depth + 1));
                    }
                    Some(Type::File) => files.push(path),
                    Some(Type::Symlink) => refused.push(Refused::Symlink(path)),
                    Some(Type::Fifo) => refused.push(Refused::NotRegular { path, kind: "FIFO" }),
                    Some(Type::Socket) => refused.push(Refused::NotRegular {
                        path,
                        kind: "socket",
                    }),
                    Some(Type::CharacterDevice) => refused.push(Refused::NotRegular {
                        path,
                        kind: "character device",
                    }),
                    Some(Type::BlockDevice) => refused.push(Refused::NotRegular {
                        path,
                        kind: "block device",
                    }),
                    // DT_UNKNOWN on some filesystems: ask without following.
                    None => match self.open_file(&path) {
                        Ok(_) => files.push(path),
                        Err(r) => refused.push(r),
                    },
                }
                if files.len() + refused.len() > MAX_FILES {
                    return Err(Refused::TooMany(self.path.display().to_string()));
                }
            }
        }
        files.sort();
        Ok((files, refused))
    }

    /// The directory fd of `rel`'s parent beneath the bundle (the bundle itself for a top-level
    /// name), and the last component.
    fn parent_of<'a>(&self, rel: &'a str) -> Result<(OwnedFd, &'a str), Refused> {
        check_rel(rel)?;
        match rel.rsplit_once('/') {
            Some((parent, name)) => Ok((
                self.open_at(parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?,
                name,
            )),
            None => Ok((self.fd.try_clone().map_err(|e| Refused::io(".", e))?, rel)),
        }
    }

    /// Remove the file `rel` beneath the bundle (never a directory, never through a link).
    pub fn remove(&self, rel: &str) -> Result<(), Refused> {
        let (parent, name) = self.parent_of(rel)?;
        match nix::unistd::unlinkat(
            parent.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Refused::io(rel, e.desc())),
        }
    }

    /// Make the directory `rel` beneath the bundle if it is missing (one level: its parent
    /// must exist).
    pub fn ensure_dir(&self, rel: &str) -> Result<(), Refused> {
        let (parent, name) = self.parent_of(rel)?;
        match nix::sys::stat::mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(Refused::io(rel, e.desc())),
        }
    }

    /// Replace `rel` beneath the bundle with `bytes`: a new temporary created with
    /// `O_EXCL|O_NOFOLLOW` in the same directory (never a planted file or link), fsync'd and
    /// renamed over `rel` within that directory, which is fsync'd too. A symlink at `rel` is
    /// replaced, not written through.
    pub fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<(), Refused> {
        let (parent, name) = self.parent_of(rel)?;
        let tmp = super::bundle::temporary_name(name);
        let fd = openat2(
            parent.as_fd(),
            tmp.as_str(),
            Self::how(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL)
                .mode(Mode::from_bits_truncate(0o644)),
        )
        .map_err(|e| Refused::io(rel, e.desc()))?;
        let mut f = File::from(fd);
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| Refused::io(rel, e))?;
        drop(f);
        renameat(parent.as_fd(), tmp.as_str(), parent.as_fd(), name)
            .map_err(|e| Refused::io(rel, e.desc()))?;
        nix::unistd::fsync(parent.as_fd()).map_err(|e| Refused::io(rel, e.desc()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_accepted() {
        for bad in ["", "/etc/shadow", "../x", "a/../../x", "./a", "a//b/.."] {
            assert!(check_rel(bad).is_err(), "{bad}");
        }
        for good in [
            "run-trace.json",
            "layers/kernel.ndjson",
            "steps/01-a/output/stdout.log",
        ] {
            assert_eq!(check_rel(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn links_fifos_and_oversized_files_are_refused_and_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("ok.json"), b"{\"a\":1}").expect("write");
        let secret = tempfile::NamedTempFile::new().expect("secret");
        std::fs::write(secret.path(), b"do not read").expect("write");
        std::os::unix::fs::symlink(secret.path(), d.join("link.log")).expect("symlink");
        std::fs::create_dir(d.join("real")).expect("mkdir");
        std::os::unix::fs::symlink(d.join("real"), d.join("linked-dir")).expect("symlink");
        std::fs::write(d.join("real/inner.log"), b"x").expect("write");
        nix::unistd::mkfifo(&d.join("fifo.log"), Mode::from_bits_truncate(0o644)).expect("fifo");
        let b = BundleDir::open(d).expect("open");
        assert_eq!(b.read("ok.json", 100).expect("read"), b"{\"a\":1}");
        assert_eq!(
            b.read("link.log", 100),
            Err(Refused::Symlink("link.log".into()))
        );
        assert_eq!(
            b.read("linked-dir/inner.log", 100),
            Err(Refused::Symlink("linked-dir/inner.log".into())),
            "a link in a directory component is refused too"
        );
        assert!(matches!(
            b.read("fifo.log", 100),
            Err(Refused::NotRegular { kind: "FIFO", .. })
        ));
        assert!(matches!(
            b.read("ok.json", 3),
            Err(Refused::TooLarge { size: 7, .. })
        ));
        let (files, refused) = b.walk().expect("walk");
        assert_eq!(files, ["ok.json", "real/inner.log"]);
        assert_eq!(refused.len(), 3, "{refused:?}");
        // Repairing over a planted link replaces the link; the target is untouched.
        b.write_atomic("link.log", b"salvaged").expect("write");
        assert_eq!(
            std::fs::read(secret.path()).expect("secret"),
            b"do not read"
        );
        assert_eq!(
            std::fs::read(d.join("link.log")).expect("replaced"),
            b"salvaged"
        );
        let planted = b.write_atomic("linked-dir/new.log", b"x");
        assert!(matches!(planted, Err(Refused::Symlink(_))), "{planted:?}");
        assert!(!d.join("real/new.log").exists());
        // The bundle path itself may not be a link.
        std::os::unix::fs::symlink(d, d.join("self")).expect("symlink");
        assert!(matches!(
            BundleDir::open(&d.join("self")),
            Err(Refused::Symlink(_))
        ));
    }
}
