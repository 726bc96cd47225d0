//! The io_uring programs (`ebpf/uring.bpf.c`): an operation submitted through a ring is no
//! syscall, so sys_exit never sees it. Attached with the syscall program (they serve the same
//! runs: `--kernel-layer auto`), but on io_uring's own tracepoints, which cost the rest of the
//! host nothing per syscall. Where `io_uring_submit_req` exists (6.x) the request is read: opens
//! become `file.open` (`via: io_uring`), other opcodes `io_uring.submit`; before it, on
//! `io_uring_submit_sqe`, whose arguments changed between releases, each submission is only
//! counted as `io_uring.submit` with no opcode.

use aya::Ebpf;
use aya::programs::RawTracePoint;
use aya::programs::raw_trace_point::RawTracePointLinkId;

use super::sensor::ProbeStatus;

/// How health names it.
pub const URING_PROBE: &str = "io_uring.submit";

/// (program, tracepoint), best first.
const CHOICES: [(&str, &str); 2] = [
    ("vigil_uring_req", "io_uring_submit_req"),
    ("vigil_uring_sqe", "io_uring_submit_sqe"),
];

#[derive(Default)]
pub struct Uring {
    /// The program and tracepoint chosen the first time, or why none could be.
    chosen: Option<Result<usize, String>>,
    link: Option<RawTracePointLinkId>,
}

impl Uring {
    /// Attach (the first time: choose and load) or detach; the probe's status now.
    pub fn set(&mut self, ebpf: &mut Ebpf, on: bool) -> ProbeStatus {
        let chosen = match &self.chosen {
            Some(c) => c.clone(),
            None => {
                // Choosing attaches: its link is kept (detaching a raw tracepoint waits for an
                // RCU grace period, which must not land on every run's start).
                let c = choose(ebpf).map(|(i, link)| {
                    self.link = Some(link);
                    i
                });
                self.chosen = Some(c.clone());
                c
            }
        };
        let i = match chosen {
            Ok(i) => i,
            Err(e) => return ProbeStatus::Failed(e),
        };
        match (on, self.link.is_some()) {
            (true, false) => match attach(ebpf, i) {
                Ok(l) => self.link = Some(l),
                Err(e) => return ProbeStatus::Failed(e),
            },
            (false, true) => {
                if let (Some(l), Some(p)) = (self.link.take(), program(ebpf, CHOICES[i].0)) {
                    let _ = p.detach(l);
                }
            }
            _ => {}
        }
        if self.link.is_none() {
            return ProbeStatus::Unavailable(
                "not attached: no run of this daemon needs file evidence now".into(),
            );
        }
        match i {
            0 => ProbeStatus::Attached,
            _ => ProbeStatus::AttachedTo(format!(
                "raw_tp/{} ({} is not in this kernel: submissions are counted, their opcodes and open paths not read)",
                CHOICES[i].1, CHOICES[0].1
            )),
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Option<&'a mut RawTracePoint> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
}

/// Load and attach the first program whose tracepoint this kernel has (the request-reading one
/// may also fail to load where the kernel's io_kiocb differs).
fn choose(ebpf: &mut Ebpf) -> Result<(usize, RawTracePointLinkId), String> {
    let mut errors = Vec::new();
    for (i, (name, tp)) in CHOICES.iter().enumerate() {
        let Some(p) = program(ebpf, name) else {
            errors.push(format!("program {name} missing from the object"));
            continue;
        };
        if let Err(e) = p.load() {
            errors.push(format!("raw_tp/{tp}: {}", super::sensor::brief(&e)));
            continue;
        }
        match p.attach(tp) {
            Ok(l) => return Ok((i, l)),
            Err(e) => errors.push(format!("raw_tp/{tp}: {e}")),
        }
    }
    Err(errors.join("; "))
}

fn attach(ebpf: &mut Ebpf, i: usize) -> Result<RawTracePointLinkId, String> {
    let (name, tp) = CHOICES[i];
    let p = program(ebpf, name).ok_or_else(|| format!("program {name} missing"))?;
    p.attach(tp).map_err(|e| format!("raw_tp/{tp}: {e}"))
}
