//! The output tee's zero-copy relay: the child's pipe is moved to vigil's stdout/stderr with
//! `splice(2)`, so the relayed bytes never enter vigil's memory. While the capture still wants
//! bytes, `tee(2)` first duplicates them (page references, not copies) into a private pipe,
//! from which the tee thread reads its own copy to mask, hash and write — after the relay, so
//! the user's stream never waits on the hash. Past the capture cap the relay is splice alone:
//! a 1 GiB job costs vigil no copy past its first 64 MiB, where a `cat` pays one per byte.
//!
//! Any sink the kernel cannot splice to (`EINVAL`: a terminal on older kernels, a file opened
//! with `O_APPEND`) falls back to the read/write relay with nothing lost: a failed splice moved
//! nothing, and the duplicate is drained first.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};

/// The most one step without a copy moves. The child's pipe keeps its default size (64 KiB):
/// a larger one made the relay slower here (cat-like copies of pages gone cold in the cache:
/// 1.25× the CPU for 1 GiB through a 1 MiB pipe), so a step moves what the pipe holds.
const SPLICE_MAX: usize = 1024 * 1024;

/// One step's outcome.
#[derive(Debug)]
pub enum Relayed {
    /// The pipe closed: every writer is gone and nothing is left.
    Eof,
    /// `n` bytes went to the sink; the first `copied` of them are also in the caller's buffer.
    Moved { n: usize, copied: usize },
    /// The sink failed after the bytes were taken from the pipe (`n` bytes, `copied` of them in
    /// the buffer, as for `Moved`): the stream goes on without the sink.
    SinkFailed {
        n: usize,
        copied: usize,
        err: std::io::Error,
    },
    /// The kernel cannot splice between these two: nothing was taken from the pipe; relay by
    /// copying from now on.
    Unsupported,
}

/// The duplicate pipe of one tee thread.
pub struct ZeroCopy {
    dup_read: File,
    dup_write: OwnedFd,
}

impl ZeroCopy {
    /// A private pipe for the capture's copies, as large as the child's (so `tee` never
    /// duplicates less than the child wrote for want of room).
    pub fn new(child: &File) -> std::io::Result<Self> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let size = fcntl(child.as_fd(), FcntlArg::F_GETPIPE_SZ).unwrap_or(0);
        if size > 0 {
            // Best effort: a smaller duplicate only means shorter steps.
            let _ = fcntl(w.as_fd(), FcntlArg::F_SETPIPE_SZ(size));
        }
        Ok(Self {
            dup_read: File::from(r),
            dup_write: w,
        })
    }

    /// Move what the child wrote next to `sink`; with `copy`, also into `buf` (up to its length).
    /// Blocks until the child writes or closes, as a `read` would.
    pub fn step(&mut self, child: &File, sink: &File, buf: &mut [u8], copy: bool) -> Relayed {
        if !copy {
            // Nothing to copy: one step may move as much as the pipe holds.
            return match retry(|| splice(child, sink, SPLICE_MAX)) {
                Ok(0) => Relayed::Eof,
                Ok(n) => Relayed::Moved { n, copied: 0 },
                Err(Errno::EINVAL) => Relayed::Unsupported,
                Err(e) => Relayed::SinkFailed {
                    n: 0,
                    copied: 0,
                    err: e.into(),
                },
            };
        }
        let dup = &self.dup_write;
        let n = match retry(|| nix::fcntl::tee(child, dup, buf.len(), SpliceFFlags::empty())) {
            Ok(0) => return Relayed::Eof,
            Ok(n) => n,
            // Not a pipe pair tee(2) takes: nothing was duplicated.
            Err(_) => return Relayed::Unsupported,
        };
        let mut moved = 0;
        let mut sink_err = None;
        while moved < n {
            match retry(|| splice(child, sink, n - moved)) {
                // The bytes tee(2) saw are still in the pipe: moving none of them is the sink's
                // failure, not the end of the stream.
                Ok(0) => {
                    sink_err = Some(std::io::Error::other("the sink took no bytes"));
                    break;
                }
                Ok(k) => moved += k,
                Err(Errno::EINVAL) if moved == 0 => {
                    // The duplicate is dropped; the bytes are still in the child's pipe for the
                    // copying relay to read.
                    return match drain(&mut self.dup_read, buf, n) {
                        Ok(()) => Relayed::Unsupported,
                        Err(err) => Relayed::SinkFailed {
                            n: 0,
                            copied: 0,
                            err,
                        },
                    };
                }
                Err(e) => {
                    sink_err = Some(std::io::Error::from(e));
                    break;
                }
            }
        }
        // The sink failed mid-step: the rest of the duplicated bytes still sit in the child's
        // pipe, and are consumed here (the capture has them from the duplicate).
        if moved < n
            && let Err(e) = drain(&mut &*child, buf, n - moved)
        {
            sink_err.get_or_insert(e);
        }
        let copied = match self.dup_read.read_exact(&mut buf[..n]) {
            Ok(()) => n,
            Err(e) => {
                sink_err.get_or_insert(e);
                0
            }
        };
        match sink_err {
            None => Relayed::Moved { n, copied },
            Some(err) => Relayed::SinkFailed { n, copied, err },
        }
    }
}

/// Move up to `len` bytes from the pipe `from` to `to`, blocking as a read and a write would.
fn splice(from: &File, to: &File, len: usize) -> nix::Result<usize> {
    nix::fcntl::splice(from, None, to, None, len, SpliceFFlags::SPLICE_F_MOVE)
}

fn retry(mut f: impl FnMut() -> nix::Result<usize>) -> nix::Result<usize> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// Read and drop exactly `len` bytes, `buf` as scratch.
fn drain(from: &mut impl Read, buf: &mut [u8], mut len: usize) -> std::io::Result<()> {
    while len > 0 {
        let take = len.min(buf.len());
        from.read_exact(&mut buf[..take])?;
        len -= take;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
        (File::from(r), File::from(w))
    }

    #[test]
    fn a_step_relays_to_the_sink_and_copies_the_same_bytes() {
        let (child_r, mut child_w) = pipe();
        let (sink_r, sink_w) = pipe();
        let mut zc = ZeroCopy::new(&child_r).expect("dup pipe");
        child_w.write_all(b"hello splice").expect("write");
        let mut buf = vec![0u8; 64];
        let Relayed::Moved { n, copied } = zc.step(&child_r, &sink_w, &mut buf, true) else {
            panic!("expected a move");
        };
        assert_eq!((n, copied), (12, 12));
        assert_eq!(&buf[..12], b"hello splice");
        drop(sink_w);
        let mut relayed = Vec::new();
        (&sink_r).read_to_end(&mut relayed).expect("read sink");
        assert_eq!(relayed, b"hello splice");
        // Without a copy the bytes only reach the sink; a closed pipe is the end.
        drop(child_w);
        let (_sink2_r, sink2) = pipe();
        assert!(matches!(
            zc.step(&child_r, &sink2, &mut buf, false),
            Relayed::Eof
        ));
    }

    #[test]
    fn a_sink_splice_refuses_falls_back_with_every_byte_still_in_the_pipe() {
        let (child_r, mut child_w) = pipe();
        let dir = tempfile::tempdir().expect("tempdir");
        // splice(2) refuses an O_APPEND file: the copying relay must get the bytes back.
        let sink = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.path().join("out"))
            .expect("sink");
        let mut zc = ZeroCopy::new(&child_r).expect("dup pipe");
        child_w.write_all(b"kept").expect("write");
        drop(child_w);
        let mut buf = vec![0u8; 64];
        assert!(matches!(
            zc.step(&child_r, &sink, &mut buf, true),
            Relayed::Unsupported
        ));
        let mut left = Vec::new();
        (&child_r).read_to_end(&mut left).expect("read child");
        assert_eq!(left, b"kept");
    }

    #[test]
    fn a_closed_sink_is_reported_and_the_capture_still_gets_the_bytes() {
        let (child_r, mut child_w) = pipe();
        let (sink_r, sink_w) = pipe();
        drop(sink_r);
        let mut zc = ZeroCopy::new(&child_r).expect("dup pipe");
        child_w.write_all(b"lost to the sink").expect("write");
        let mut buf = vec![0u8; 64];
        match zc.step(&child_r, &sink_w, &mut buf, true) {
            Relayed::SinkFailed { n, copied, err } => {
                assert_eq!((n, copied), (16, 16));
                assert_eq!(&buf[..16], b"lost to the sink");
                assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
            }
            other => panic!("expected a sink failure, got {other:?}"),
        }
    }
}
