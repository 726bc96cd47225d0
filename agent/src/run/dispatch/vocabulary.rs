//! The vocabulary of the run's state machine: what happens to a run ([`RunEvent`]), what the
//! shell must do about it ([`Action`]), and what the machine is configured with.

use std::time::Duration;

use serde_json::Value;

use super::super::spec::LivenessConfig;
use super::super::triage::StallSnapshot;
use crate::evidence::events::EventKind;
use crate::kernel::event::Observed;
use crate::run::proctree::StateChange;
use crate::sdk::Received;

/// One of the child's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(super) fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Something that happened to the run.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// vigil was sent SIGINT or SIGTERM.
    Signal(i32),
    /// The main child was reaped.
    ChildExited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// `chunks` output chunks went through a tee (several when the channel was full).
    Output { chunks: u64 },
    /// A stream's pipe closed: every writer is gone.
    StreamClosed(Stream),
    /// One drain of kernel events of the run, decoded once.
    Kernel(&'a [Observed]),
    /// One SDK event from the run's socket.
    Sdk(Received),
    /// The procfs sampler's changes (without the kernel layer) and how many processes it saw.
    Sampled {
        changes: Vec<StateChange>,
        processes: usize,
    },
    /// The run's cgroup holds no process any more.
    CgroupEmpty,
    /// The answer to [`Action::ProbeCgroup`]: how many processes the cgroup holds.
    CgroupProbed { processes: usize },
    /// The triage snapshot a stall kill asked for.
    TriageDone(Box<StallSnapshot>),
    /// Nothing but time: a deadline may be due.
    Tick,
}

/// What the shell must do.
#[derive(Debug)]
pub enum Action {
    /// Append a runner event.
    Emit(EventKind, Option<&'static str>, Value),
    /// A line for health's notes.
    Note(String),
    /// A line on vigil's stderr (`vigil: …`).
    Say(String),
    /// SIGTERM to every process of the run's cgroup; `cause` is the watchdog reason, if any.
    Terminate { cause: Option<&'static str> },
    /// SIGKILL what is left (cgroup.kill); `watchdog` says whether it is a watchdog kill.
    KillRemaining { watchdog: bool },
    /// The escalation is over: the cgroup emptied.
    KillComplete,
    /// Take a stall triage snapshot off the runtime thread; answer with `TriageDone`.
    Triage { silent_ms: u64 },
    /// Append a `stall_warning` with `data`, and who waits on whom now (nothing is frozen or
    /// killed).
    WarnStall(Value),
    /// Close the fence: nothing more is accepted into the run's output or SDK layer.
    CloseFence,
    /// Count the cgroup's processes; answer with `CgroupProbed`.
    ProbeCgroup,
    /// Sample the cgroup (procfs tree, CPU time); answer with `Sampled`.
    Sample,
    /// Hand this SDK event to the SDK layer.
    AcceptSdk(Received),
}

/// What a run is configured with, as far as its state machine is concerned.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub liveness: LivenessConfig,
    pub profile_stall: Duration,
    pub heartbeat: Duration,
    /// The procfs sampler's period ([`PROCESS_SAMPLE`] in runs).
    pub sample: Duration,
    pub main_pid: i32,
    /// The kernel layer is active: the process tree comes from kernel events.
    pub kernel_tree: bool,
    /// `vigil watch`: no main child and no output pipes; the run ends when the cgroup empties,
    /// on SIGINT/SIGTERM (nothing is killed) or after this long (None: no limit).
    pub watch: Option<Option<Duration>>,
}
