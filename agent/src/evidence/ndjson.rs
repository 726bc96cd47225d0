//! Append-only NDJSON files written in fsync'd batches: a line is on disk by the next batch
//! boundary (or at once for control evidence), so a vigil killed mid-run leaves at most one torn
//! last line, which `reindex --repair` drops. The last batch is made durable by the bundle's
//! commit, with every other file of the run.
//!
//! [`NdjsonWriter`] puts the appender on its own thread behind a bounded queue, so fsync never
//! blocks the dispatcher. Control lines wait for room (never dropped); telemetry lines are shed
//! when the queue is full, and counted.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Lines buffered before a batch is written and fsync'd.
const BATCH_LINES: usize = 256;
/// Longest a line waits in the buffer.
const BATCH_AGE: Duration = Duration::from_millis(200);
/// Buffered bytes written out (not yet fsync'd) so that memory stays bounded when lines arrive
/// in large batches (the kernel layer hands over up to a thousand at a time).
const BUFFER_BYTES: usize = 1 << 20;

struct NdjsonAppender {
    file: File,
    buf: Vec<u8>,
    lines: usize,
    oldest: Option<Instant>,
    /// Every byte written, hashed on the way out: the commit need not read the file back.
    hasher: Sha256,
    written: u64,
}

/// What a writer put in its file: the SHA-256 of every byte it wrote (hex) and how many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub sha256: String,
    pub bytes: u64,
}

impl Written {
    /// As the index lists it, for the file at `rel` in the bundle. The commit uses it only
    /// while the file's size still matches.
    pub fn digest(&self, rel: &str) -> crate::evidence::bundle::FileDigest {
        crate::evidence::bundle::FileDigest {
            path: rel.to_string(),
            sha256: self.sha256.clone(),
            bytes: self.bytes,
        }
    }
}

impl NdjsonAppender {
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(NdjsonAppender {
            file,
            buf: Vec::with_capacity(64 * 1024),
            lines: 0,
            oldest: None,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    fn write_buf(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.hasher.update(&self.buf);
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Append one already serialized line (ending in a newline).
    pub fn append_line(&mut self, line: &[u8], urgent: bool) -> io::Result<()> {
        self.buf.extend_from_slice(line);
        self.lines += 1;
        self.oldest.get_or_insert_with(Instant::now);
        if urgent || self.lines >= BATCH_LINES {
            self.flush()?;
        } else if self.buf.len() >= BUFFER_BYTES {
            // Out of memory, into the page cache; the fsync still comes with the batch.
            self.write_buf()?;
        }
        Ok(())
    }

    /// Flush if the oldest buffered line has waited long enough.
    pub fn flush_if_due(&mut self) -> io::Result<()> {
        match self.oldest {
            Some(t) if t.elapsed() >= BATCH_AGE => self.flush(),
            _ => Ok(()),
        }
    }

    /// The last batch, written and its writeback started but not waited for: the bundle's
    /// commit fsyncs every file in one batch before its index names them.
    pub fn close(&mut self) -> io::Result<()> {
        self.write_buf()?;
        crate::evidence::durable::start_writeback(&self.file);
        Ok(())
    }

    /// Write the batch and fsync it.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.oldest.is_none() {
            return Ok(());
        }
        self.write_buf()?;
        self.file.sync_data()?;
        self.lines = 0;
        self.oldest = None;
        Ok(())
    }
}

/// Which lane a line travels in: control evidence is never dropped, telemetry may be shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Control,
    Telemetry,
}

/// An [`NdjsonAppender`] on its own thread, fed through a bounded queue.
pub struct NdjsonWriter {
    tx: Option<SyncSender<(Vec<u8>, bool)>>,
    handle: Option<JoinHandle<Result<Written, String>>>,
    shed: u64,
    lost: Option<String>,
    outcome: Option<Result<Written, String>>,
}

impl NdjsonWriter {
    /// Open `path` for appending and start the writer thread with room for `capacity` lines.
    pub fn spawn(path: &Path, capacity: usize) -> io::Result<Self> {
        let mut out = NdjsonAppender::create(path)?;
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, bool)>(capacity);
        let name = path.display().to_string();
        let handle = std::thread::Builder::new()
            .name("vigil-ndjson".into())
            .spawn(move || {
                let mut first_error: Option<String> = None;
                let mut note = |r: io::Result<()>| {
                    if let Err(e) = r {
                        first_error.get_or_insert_with(|| format!("{name}: {e}"));
                    }
                };
                loop {
                    match rx.recv_timeout(BATCH_AGE / 4) {
                        Ok((line, urgent)) => note(out.append_line(&line, urgent)),
                        Err(RecvTimeoutError::Timeout) => note(out.flush_if_due()),
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                note(out.close());
                match first_error {
                    Some(e) => Err(e),
                    None => Ok(Written {
                        sha256: hex::encode(out.hasher.finalize()),
                        bytes: out.written,
                    }),
                }
            })?;
        Ok(NdjsonWriter {
            tx: Some(tx),
            handle: Some(handle),
            shed: 0,
            lost: None,
            outcome: None,
        })
    }

    /// Queue one line; `urgent` asks for an fsync at once. Returns false when it was shed
    /// (telemetry, queue full) or the writer is gone.
    pub fn send(&mut self, line: Vec<u8>, lane: Lane, urgent: bool) -> bool {
        let Some(tx) = &self.tx else { return false };
        let sent = match lane {
            Lane::Control => tx.send((line, urgent)).map_err(|_| ()),
            Lane::Telemetry => match tx.try_send((line, urgent)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    self.shed += 1;
                    return false;
                }
                Err(TrySendError::Disconnected(_)) => Err(()),
            },
        };
        if sent.is_err() {
            self.lost
                .get_or_insert_with(|| "the NDJSON writer thread stopped".into());
        }
        sent.is_ok()
    }

    /// Telemetry lines shed because the queue was full.
    pub fn shed(&self) -> u64 {
        self.shed
    }

    /// Close the queue, let the writer flush and fsync; what it wrote, or its first error (the
    /// same answer however often it is asked).
    pub fn finish(&mut self) -> Result<Written, String> {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let joined = h
                .join()
                .unwrap_or_else(|_| Err("the NDJSON writer thread panicked".into()));
            self.outcome = Some(match self.lost.take() {
                Some(e) => Err(e),
                None => joined,
            });
        }
        self.outcome
            .clone()
            .unwrap_or_else(|| Err("the NDJSON writer never started".into()))
    }
}

/// Split NDJSON text into its complete, parseable lines; reports whether anything was dropped
/// (a torn last line from a crash, or garbage).
pub fn salvage_lines(text: &[u8]) -> (Vec<u8>, usize) {
    let mut kept = Vec::with_capacity(text.len());
    let mut dropped = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..], true),
            None => (rest, &rest[rest.len()..], false),
        };
        if complete && serde_json::from_slice::<serde_json::Value>(line).is_ok() {
            kept.extend_from_slice(line);
            kept.push(b'\n');
        } else if !line.is_empty() {
            dropped += 1;
        }
        rest = next;
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvage_drops_only_torn_lines() {
        let (kept, dropped) = salvage_lines(b"{\"a\":1}\n{\"b\":2}\n{\"c\":");
        assert_eq!(kept, b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(dropped, 1);
        let (kept, dropped) = salvage_lines(b"{\"a\":1}\n");
        assert_eq!((kept.len(), dropped), (8, 0));
    }

    #[test]
    fn writer_keeps_control_and_sheds_telemetry_when_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.ndjson");
        let mut w = NdjsonWriter::spawn(&path, 1).expect("spawn");
        let mut sent = 0;
        for i in 0..2000 {
            let lane = if i % 100 == 0 {
                Lane::Control
            } else {
                Lane::Telemetry
            };
            if w.send(format!("{{\"i\":{i}}}\n").into_bytes(), lane, false) {
                sent += 1;
            }
        }
        let written = w.finish().expect("finish");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), sent);
        // The digest the index will use is the file's, computed without reading it back; the
        // same answer when asked again.
        assert_eq!(written.bytes, text.len() as u64);
        assert_eq!(written.sha256, hex::encode(Sha256::digest(text.as_bytes())));
        assert_eq!(w.finish(), Ok(written));
        assert_eq!(
            sent + w.shed() as usize,
            2000,
            "every line written or counted as shed"
        );
        for i in (0..2000).step_by(100) {
            assert!(
                text.contains(&format!("{{\"i\":{i}}}")),
                "control line {i} lost"
            );
        }
    }

    #[test]
    fn appender_batches_and_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.ndjson");
        let mut a = NdjsonAppender::create(&path).expect("create");
        a.append_line(b"{\"n\":1}\n", false).expect("append");
        assert_eq!(
            std::fs::read(&path).expect("read").len(),
            0,
            "batched, not yet written"
        );
        a.append_line(b"{\"n\":2}\n", true).expect("append");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        // A large batch goes out of memory at once, fsync or not.
        let mut big = vec![b'x'; BUFFER_BYTES];
        big.push(b'\n');
        a.append_line(&big, false).expect("append");
        assert_eq!(a.buf.len(), 0, "the buffer is bounded");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len() as usize,
            16 + BUFFER_BYTES + 1
        );
        a.flush().expect("flush");
    }
}
