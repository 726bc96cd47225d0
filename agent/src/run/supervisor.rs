//! The supervisor: one dispatcher task owns the run's state (as nextest's runner does). Once
//! `setup` made the bundle, the cgroup and the kernel source, it spawns the child (or, for a
//! watch, seeds what already runs), and then reacts to what happens — child exit, output pipes
//! closing, the cgroup emptying, liveness deadlines, heartbeats, process-tree samples, signals
//! to vigil — until the run has exactly one outcome and its cgroup is empty. Then `finish`
//! writes the evidence and commits the bundle.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;

use super::cgroup::{CgroupError, RunCgroup};
use super::dispatch::{DispatchConfig, RunEvent, RunState};
use super::host::{Controls, RunHost};
use super::kill::Escalation;
use super::outcome::Outcome;
use super::perform::on_tee;
use super::proctree::ProcTracker;
use super::recorder::{RunRecorder, exit_status, record_process_spans};
use super::spawn::{self, SpawnError};
use super::spec::RunSpec;
use super::tee::{Fence, TeeReport};
use super::triage::StallSnapshot;
use crate::cli::ExitCode;
use crate::clock;
use crate::contracts::RunCounters;
use crate::evidence::bundle::BundleError;
use crate::evidence::events::EventKind;
use crate::evidence::health::Claims;
use crate::evidence::spans::RunSpan;
use crate::evidence::trace::span;
use crate::kernel::KernelReport;
use crate::kernel::bus::EventSource;
use crate::policy::layer::PolicyLayer;
use crate::sdk::{Received, SdkLayer, SdkSocket, SdkStats};

pub use super::dispatch::PROCESS_SAMPLE;
pub use super::setup::{run, run_hosted};

/// How long SDK connections may still be read after the run's processes are gone.
pub(super) const SDK_DRAIN: Duration = Duration::from_millis(500);
/// Window over which the run's CPU rate is measured for stall triage.
pub(super) const CPU_WINDOW: Duration = Duration::from_secs(1);

/// Failures before the child was started: nothing ran, nothing needs killing.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot start the cgroup guard: {0}")]
    Guard(std::io::Error),
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl SetupError {
    pub fn exit_code(&self) -> i32 {
        ExitCode::VIGIL_FAILED
    }
}

#[derive(Debug)]
pub struct RunResult {
    pub outcome: Outcome,
    pub bundle_dir: PathBuf,
    /// Set when the bundle could not be committed; the exit code is then 125.
    pub commit_error: Option<String>,
    /// The main child's exit code and signal.
    pub main_exit: (Option<i32>, Option<i32>),
    /// The stall phase when a stall was detected.
    pub stall_phase: Option<String>,
    /// What the run did, for a plan's contracts.
    pub counters: Arc<RunCounters>,
    pub duration_ms: u64,
    /// The layer claims of the run's health (a plan claims the weakest of its steps').
    pub claims: Claims,
    /// Profile copies for a daemon's client to write as itself (standalone: already written).
    pub copies: Vec<(PathBuf, Vec<u8>)>,
    /// What the run held until its end (the span tree, the trace, the process tree): freeing
    /// a spawn-heavy run's takes milliseconds, which a daemon spends after its client has
    /// the answer.
    pub leftovers: Leftovers,
}

/// A finished run's state, kept only to be dropped: when is the holder's choice.
pub struct Leftovers(#[allow(dead_code)] Box<dyn Send>);

impl Leftovers {
    pub fn new(state: impl Send + 'static) -> Self {
        Leftovers(Box::new(state))
    }
}

impl std::fmt::Debug for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leftovers")
    }
}

impl RunResult {
    pub fn exit_code(&self) -> i32 {
        if self.commit_error.is_some() {
            ExitCode::VIGIL_FAILED
        } else {
            self.outcome.exit_code()
        }
    }
}

/// Spans of one run, opened in order, on the run's own `tracing` dispatcher.
pub(super) struct RunSpans {
    pub(super) total: RunSpan,
    /// Closed when the child is spawned (or could not be).
    pub(super) dispatch: Option<RunSpan>,
    pub(super) chain: RunSpan,
    pub(super) case: RunSpan,
}

async fn recv_sdk(sock: &mut Option<SdkSocket>) -> Option<Received> {
    match sock {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

pub(super) struct Supervisor<'a> {
    pub(super) spec: &'a RunSpec,
    /// Who asked for the run: this process, or a daemon client.
    pub(super) host: &'a RunHost,
    pub(super) cg: &'a RunCgroup,
    /// The bundle, event log, redactor, trace, span stream and counters.
    pub(super) rec: RunRecorder,
    pub(super) notes: Vec<String>,
    pub(super) fence: Arc<Fence>,
    pub(super) escalation: Option<Escalation>,
    pub(super) cpu_samples: VecDeque<(Instant, u64)>,
    /// The audit oracle, when the run has a policy and kernel evidence to judge.
    pub(super) policy: Option<PolicyLayer>,
    /// Enforce mode: what holds the network rules (health names it).
    pub(super) network_mechanism: Option<String>,
    /// Where cgroup v2 is mounted (the SDK socket checks its peers' cgroups against it).
    pub(super) cgroup_mount: PathBuf,
    /// Variables vigil adds to the child's environment (`VIGIL_SDK_SOCKET`, …).
    pub(super) child_env: Vec<(OsString, OsString)>,
    /// The environment the child starts from (vigil's own, or the daemon client's).
    pub(super) base_env: Vec<(OsString, OsString)>,
    /// The SDK layer, from the child's socket being offered to the run's end.
    pub(super) sdk: Option<SdkLayer>,
    pub(super) sdk_stats: Option<Arc<SdkStats>>,
    /// A watch's attach, for health.
    pub(super) watch_health: Option<crate::evidence::health::WatchHealth>,
    /// A watched CI job's steps (children of the runner's worker).
    pub(super) steps: Option<super::steps::StepTracker>,
}

/// Why the child was not started.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotStarted {
    #[error("{0}")]
    Spawn(SpawnError),
    #[error(
        "the policy's network rules could not be enforced, so the command was not started: {0}"
    )]
    Network(String),
}

/// The main child's (exit code, signal) from waitid.
pub(super) type ExitInfo = (Option<i32>, Option<i32>);

/// Per-run supervision state that `finish` needs.
pub(super) struct Supervised {
    /// The run's state (None when the child never started).
    pub(super) state: Option<RunState>,
    /// The outcome when the child never started.
    pub(super) not_started: Option<Outcome>,
    pub(super) main_exit: Option<ExitInfo>,
    pub(super) streams: [TeeReport; 2],
    pub(super) process_tree: bool,
    pub(super) process_tree_source: &'static str,
    pub(super) kernel: KernelReport,
    /// A watched CI job's steps, as summary rows (their spans are recorded already).
    pub(super) step_rows: Vec<crate::evidence::trace::StepRow>,
}

/// What the shell keeps while performing the state's actions: the procfs sampler, the pending
/// triage, whether emptiness must come from samples.
pub(super) struct Shell {
    pub(super) tracker: ProcTracker,
    pub(super) kernel_tree: bool,
    pub(super) watch_empty: bool,
    pub(super) triage: Option<tokio::task::JoinHandle<StallSnapshot>>,
}

/// The longest a kernel event without a wakeup waits in the ring buffer before it is read.
const KERNEL_POLL: Duration = Duration::from_millis(100);

/// Output messages in flight from the two tee threads (chunk counts coalesce when full).
const TEE_CHANNEL: usize = 64;

/// The main child's exit; never, for a watch (it has no child).
async fn wait_child(child: &Option<spawn::Child>) -> std::io::Result<ExitInfo> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn join_opt(h: &mut Option<tokio::task::JoinHandle<StallSnapshot>>) -> Option<StallSnapshot> {
    match h {
        Some(h) => h.await.ok(),
        None => std::future::pending().await,
    }
}

impl Supervisor<'_> {
    /// Spawn the child and dispatch until the run is over. `kernel` is the run's event source,
    /// already watching its cgroup (so the child's first exec is seen).
    pub(super) async fn supervise<K: EventSource>(
        &mut self,
        spans: &mut RunSpans,
        controls: &mut Controls,
        mut kernel: K,
    ) -> Supervised {
        self.start_policy(kernel.active());
        let mut sdk_socket = self.offer_sdk(kernel.active());
        // Held until the run ends: dropping it detaches the network programs.
        let network = self.enforce_network();
        let check = self.rec.tree.open(span::CHECK_EXECUTE, Some(&spans.case));
        let exec_span = self.rec.tree.open(span::SUBPROCESS_EXEC, Some(&check));
        // A watch has no child: its processes are already running.
        let started = network.and_then(|n| match self.spec.watch {
            Some(_) => Ok((None, n)),
            None => spawn::spawn(
                self.spec,
                self.cg.path(),
                self.host.child_io(&self.base_env),
                &self.child_env,
            )
            .map(|s| (Some(s), n))
            .map_err(NotStarted::Spawn),
        });
        let (spawned, _network) = match started {
            Ok(s) => s,
            Err(e) => {
                self.host.say(&e.to_string());
                let outcome = match e {
                    NotStarted::Spawn(SpawnError::NotFound(_)) => {
                        Outcome::NotStarted(ExitCode::NOT_FOUND)
                    }
                    NotStarted::Spawn(SpawnError::NotExecutable(..)) => {
                        Outcome::NotStarted(ExitCode::NOT_EXECUTABLE)
                    }
                    _ => Outcome::VigilFailed,
                };
                self.notes.push(format!("child not started: {e}"));
                exec_span.close_now("error", json!({"error": e.to_string()}));
                check.close_now("error", json!({}));
                if let Some(d) = spans.dispatch.take() {
                    d.close_now("error", json!({}));
                }
                // What the kernel saw of the attempt (a Landlock-denied first exec) still
                // reaches its consumers: the policy layer gets its decision.
                let mut seen = Vec::new();
                let kernel = kernel.finish(&self.rec.redactor, &mut seen);
                self.observe_kernel(&seen);
                return Supervised {
                    state: None,
                    not_started: Some(outcome),
                    main_exit: None,
                    streams: Default::default(),
                    process_tree: false,
                    process_tree_source: "procfs",
                    kernel,
                    step_rows: Vec::new(),
                };
            }
        };
        let main_pid = spawned.as_ref().map_or(0, |s| s.child.pid);
        if spawned.is_some() {
            self.host.started(main_pid);
        }
        let spawned_mono = clock::mono_ns();
        let spawned_ns = clock::now_ns();
        let exec_attrs = match spawned {
            Some(_) => json!({"pid": main_pid}),
            None => json!({"watch": self.cg.path().display().to_string()}),
        };
        exec_span.close("passed", exec_attrs, spawned_ns);
        if let Some(d) = spans.dispatch.take() {
            d.close("passed", json!({}), spawned_ns);
        }
        let wait_span = self
            .rec
            .tree
            .open_at(span::SUBPROCESS_WAIT, Some(&check), spawned_ns);
        // Closed at the child's exit; the registry ends it for the contract layer only after
        // `wait_span`, i.e. after the last kernel event was counted.
        let mut check = Some(check);

        let mut tracker = ProcTracker::new(main_pid);
        if spawned.is_some() {
            self.adopt_main(&mut tracker, main_pid, spawned_ns);
        }
        // With the kernel layer the tree is exact; the procfs sampler then only feeds triage.
        let kernel_tree = kernel.active();
        let mut state = RunState::new(
            DispatchConfig {
                liveness: self.spec.liveness.clone(),
                profile_stall: self.spec.profile.stall_threshold,
                heartbeat: self.spec.profile.heartbeat,
                sample: PROCESS_SAMPLE,
                main_pid,
                kernel_tree,
                watch: self.spec.watch.as_ref().map(|w| w.duration),
            },
            spawned_mono,
            spawned_ns,
        );
        if spawned.is_none() {
            self.seed_watch(&mut state, kernel_tree);
        }
        let (tee_tx, mut tee_rx) = mpsc::channel(TEE_CHANNEL);
        let mut reports: [TeeReport; 2] = Default::default();
        let (child, failed_tees) = match spawned {
            Some(s) => (Some(s.child), self.start_tees(s.stdout, s.stderr, tee_tx)),
            None => (None, Vec::new()),
        };
        let mut main_exit: Option<ExitInfo> = None;
        let watch = self.cg.watch_events();
        let afd = watch.as_ref().ok().and_then(|w| w.async_fd().ok());
        if afd.is_none() {
            self.notes.push(
                "cgroup.events cannot be watched; emptiness is checked on each sample".into(),
            );
        }
        let mut shell = Shell {
            tracker,
            kernel_tree,
            watch_empty: afd.is_none(),
            triage: None,
        };
        if self.spec.watch.is_some() && !self.cg.events().populated {
            // Empty at attach (or emptied before the watch on cgroup.events was armed).
            let acts = state.handle(RunEvent::CgroupEmpty, clock::mono_ns());
            self.perform(&mut state, &mut shell, acts);
        }
        for stream in failed_tees {
            // A tee that could not start has no pipe to wait for.
            let acts = state.handle(RunEvent::StreamClosed(stream), clock::mono_ns());
            self.perform(&mut state, &mut shell, acts);
        }
        let mut seen = Vec::new();
        let mut tees_alive = true;
        let mut kernel_poll = tokio::time::interval(KERNEL_POLL);
        kernel_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        while !state.is_done() {
            // One batch of this iteration's events to the writer thread.
            self.rec.events.flush_pending();
            let now = clock::mono_ns();
            if state.next_deadline() <= now {
                // Deadlines fire here, before any source is polled, so no storm of kernel
                // events or output can delay them. Output that already arrived is progress
                // and is counted first.
                // (At most a channel's worth: under a flood the tees refill it as fast.)
                for _ in 0..TEE_CHANNEL {
                    let Ok(msg) = tee_rx.try_recv() else { break };
                    let ev = on_tee(msg, &mut reports);
                    let acts = state.handle(ev, now);
                    self.perform(&mut state, &mut shell, acts);
                }
                let acts = state.handle(RunEvent::Tick, now);
                self.perform(&mut state, &mut shell, acts);
                continue;
            }
            let wake = clock::mono_to_instant(state.next_deadline());
            let acts = tokio::select! {
                biased;
                sig = controls.recv() => state.handle(RunEvent::Signal(sig), clock::mono_ns()),
                _ = tokio::time::sleep_until(wake) => state.handle(RunEvent::Tick, clock::mono_ns()),
                status = wait_child(&child), if main_exit.is_none() => {
                    let now_ns = clock::now_ns();
                    let (code, signal) = status.unwrap_or((None, None));
                    main_exit = Some((code, signal));
                    if let Some(c) = check.take() {
                        c.close(exit_status(code, signal), json!({"exit_code": code, "signal": signal}), now_ns);
                    }
                    state.handle(RunEvent::ChildExited { code, signal }, clock::mono_ns())
                }
                msg = tee_rx.recv(), if tees_alive => match msg {
                    Some(msg) => state.handle(on_tee(msg, &mut reports), clock::mono_ns()),
                    // Both tee threads are gone (each said so first): nothing more comes.
                    None => { tees_alive = false; continue; }
                },
                ev = async { match (&watch, &afd) { (Ok(w), Some(a)) => w.changed(a).await, _ => std::future::pending().await } } => {
                    if ev.populated { continue; }
                    state.handle(RunEvent::CgroupEmpty, clock::mono_ns())
                }
                snap = join_opt(&mut shell.triage) => {
                    shell.triage = None;
                    match snap {
                        Some(s) => state.handle(RunEvent::TriageDone(Box::new(s)), clock::mono_ns()),
                        None => continue,
                    }
                }
                r = recv_sdk(&mut sdk_socket) => match r {
                    Some(r) => state.handle(RunEvent::Sdk(r), clock::mono_ns()),
                    None => { sdk_socket = None; continue; }
                },
                // Woken by the kernel, or by the poll: data events ride without a wakeup
                // (BPF_RB_NO_WAKEUP), so when a run goes quiet right after them nothing else
                // would wake the reader.
                _ = async {
                    tokio::select! {
                        biased;
                        _ = kernel.readable() => {}
                        _ = kernel_poll.tick(), if kernel.active() => {}
                    }
                } => {
                    seen.clear();
                    kernel.drain(&self.rec.redactor, &mut seen);
                    if seen.is_empty() { continue; }
                    self.observe_kernel(&seen);
                    state.handle(RunEvent::Kernel(&seen), clock::mono_ns())
                }
            };
            self.perform(&mut state, &mut shell, acts);
        }
        if let Some(sock) = sdk_socket.take() {
            self.drain_sdk(sock, &mut state, &mut shell).await;
        }
        // The cgroup is empty, so every kernel event of the run is committed: finish drains them.
        seen.clear();
        let boot_to_wall = kernel.boot_to_wall_ns();
        let kernel = kernel.finish(&self.rec.redactor, &mut seen);
        self.observe_kernel(&seen);
        let acts = state.handle(RunEvent::Kernel(&seen), clock::mono_ns());
        self.perform(&mut state, &mut shell, acts);
        self.rec
            .counters
            .set_lost_events(kernel.ring_lost + kernel.decode_errors);
        if self.spec.wants_process_spans() {
            record_process_spans(
                &self.rec.tree,
                &wait_span,
                &state.tree().lives(),
                boot_to_wall,
            );
        }
        let step_rows = self
            .steps
            .as_ref()
            .map(|s| s.record(&self.rec.tree, &spans.chain, boot_to_wall))
            .unwrap_or_default();
        // Without the kernel layer, everything the sampler still knows has exited.
        if !kernel_tree {
            for ch in shell.tracker.update(&[], &self.rec.redactor) {
                self.rec
                    .events
                    .emit(EventKind::SubprocessState, None, ch.data);
            }
        }
        self.fence.close();
        let (code, sig) = main_exit.unwrap_or((None, None));
        wait_span.close_now(
            exit_status(code, sig),
            json!({"exit_code": code, "signal": sig}),
        );
        drop(check);
        Supervised {
            state: Some(state),
            not_started: None,
            main_exit,
            streams: reports,
            process_tree: true,
            process_tree_source: if kernel_tree { "kernel" } else { "procfs" },
            kernel,
            step_rows,
        }
    }
}
