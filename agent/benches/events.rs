//! The userspace cost of one kernel event (criterion; issue 16's "≤ 1 µs per uncoalesced
//! event"): `events/decode_open` is the decoder alone on a raw `file.open` record;
//! `events/pipeline_open_distinct` is what the reader does per event after the ring hands it
//! over — decode, redact, stamp, coalescing check, evidence admission, serialize into the
//! batch — with a distinct path each time so nothing coalesces. The writer thread (another
//! thread, writing to /dev/null here) is not in the figure.

use std::hint::black_box;

use criterion::{Criterion, criterion_group};
use vigil::evidence::redact::Redactor;
use vigil::evidence::space::Space;
use vigil::kernel::abi::{COMM_LEN, EVENT_VERSION, Hdr, KIND_OPEN, Open, PATH_LEN};
use vigil::kernel::decode;
use vigil::kernel::layer_writer::LayerWriter;
use zerocopy::IntoBytes;

fn open_event(n: u64) -> Vec<u8> {
    let mut comm = [0u8; COMM_LEN];
    comm[..6].copy_from_slice(b"pytest");
    let mut e = Open {
        h: Hdr {
            kind: KIND_OPEN,
            version: EVENT_VERSION,
            ts_ns: 1_000 + n,
            cgroup_id: 9,
            pid: 10,
            tid: 10,
            ppid: 1,
            _pad: 0,
            comm,
        },
        ret: 3,
        dirfd: -100,
        flags: 0o2000000,
        mode: 0,
        path_truncated: 0,
        dir_state: 0,
        via: 0,
        path: [0; PATH_LEN],
        dir: [0; PATH_LEN],
    };
    let path = format!("/work/repo/tests/data/case_{n:08}.json");
    e.path[..path.len()].copy_from_slice(path.as_bytes());
    e.as_bytes().to_vec()
}

fn decode_open(c: &mut Criterion) {
    let raw = open_event(1);
    c.bench_function("events/decode_open", |b| {
        b.iter(|| black_box(decode(black_box(&raw)).expect("decode")))
    });
}

/// What the reader does per event after the ring hands it over, with what it needs.
struct Pipeline {
    _dir: tempfile::TempDir,
    writer: LayerWriter,
    redactor: Redactor,
    /// Raw events made up front: the ring hands the reader bytes.
    raws: Vec<Vec<u8>>,
    seen: Vec<vigil::kernel::event::Observed>,
    i: usize,
}

impl Pipeline {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = std::sync::Arc::new(Space::create(dir.path()).expect("space"));
        space.set_evidence_max(u64::MAX);
        // The writer thread writes to /dev/null: the figure is the reader's work, not the disk's.
        let writer = LayerWriter::new(std::path::Path::new("/dev/null"), space, 0).expect("writer");
        Pipeline {
            _dir: dir,
            writer,
            redactor: Redactor::new(&[("API_TOKEN".into(), "hunter22".into())]),
            raws: (0..4096).map(open_event).collect(),
            seen: Vec::with_capacity(4096),
            i: 0,
        }
    }

    fn one(&mut self) {
        let ev = decode(&self.raws[self.i % self.raws.len()]).expect("decode");
        self.writer.accept(ev, &self.redactor, &mut self.seen);
        self.i += 1;
        if self.seen.len() == 4096 {
            // One drain's worth: its batch goes to the writer thread.
            self.writer.end_drain();
            self.seen.clear();
        }
    }
}

fn pipeline(c: &mut Criterion) {
    let mut p = Pipeline::new();
    c.bench_function("events/pipeline_open_distinct", |b| b.iter(|| p.one()));
    let _ = p.writer.finish();
}

criterion_group!(benches, decode_open, pipeline);

/// `VIGIL_PIPELINE_EVENTS=N` runs the pipeline N times and nothing else, for an instruction
/// count that does not depend on this VM's noise: the difference of two counts under
/// `valgrind --tool=callgrind --separate-threads=yes` (thread 1 is the reader), divided by
/// the difference of their N, is the reader's instructions per event (README).
fn main() {
    if let Some(n) = std::env::var("VIGIL_PIPELINE_EVENTS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut p = Pipeline::new();
        for _ in 0..n {
            p.one();
        }
        let _ = p.writer.finish();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
