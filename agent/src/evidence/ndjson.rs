//! Append-only NDJSON files written in fsync'd batches: a line is on disk by the next batch
//! boundary (or at once for control evidence), so a vigil killed mid-run leaves at most one torn
//! last line, which `reindex --repair` drops.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Lines buffered before a batch is written and fsync'd.
const BATCH_LINES: usize = 256;
/// Longest a line waits in the buffer.
const BATCH_AGE: Duration = Duration::from_millis(200);

pub struct NdjsonAppender {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    lines: usize,
    oldest: Option<Instant>,
    written: u64,
}

impl NdjsonAppender {
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(NdjsonAppender {
            path: path.to_path_buf(),
            file,
            buf: Vec::with_capacity(64 * 1024),
            lines: 0,
            oldest: None,
            written: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines appended so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Append one JSON value as a line. `urgent` flushes and fsyncs at once.
    pub fn append(&mut self, value: &impl serde::Serialize, urgent: bool) -> io::Result<()> {
        serde_json::to_writer(&mut self.buf, value)?;
        self.buf.push(b'\n');
        self.lines += 1;
        self.written += 1;
        self.oldest.get_or_insert_with(Instant::now);
        if urgent || self.lines >= BATCH_LINES {
            self.flush()?;
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

    /// Write the batch and fsync it.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        self.buf.clear();
        self.lines = 0;
        self.oldest = None;
        Ok(())
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
    fn appender_batches_and_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.ndjson");
        let mut a = NdjsonAppender::create(&path).expect("create");
        a.append(&serde_json::json!({"n": 1}), false)
            .expect("append");
        assert_eq!(
            std::fs::read(&path).expect("read").len(),
            0,
            "batched, not yet written"
        );
        a.append(&serde_json::json!({"n": 2}), true)
            .expect("append");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"n\":1}\n{\"n\":2}\n"
        );
    }
}
