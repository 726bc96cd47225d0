//! The supervisor: one dispatcher task owns the run's state (as nextest's runner does). It
//! creates the bundle and the cgroup, spawns the child, and then reacts to what happens — child
//! exit, output pipes closing, the cgroup emptying, liveness deadlines, heartbeats, process-tree
//! samples, signals to vigil — until the run has exactly one outcome and its cgroup is empty.
//! Then it writes the evidence and commits the bundle.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tracing_subscriber::layer::SubscriberExt;

use super::cgroup::{self, CgroupError, RunCgroup};
use super::guard::Guard;
use super::kill::Escalation;
use super::liveness::{Liveness, ProgressLog, Verdict, reason};
use super::outcome::Outcome;
use super::proctree::{ProcInfo, ProcTracker, read_stat};
use super::spawn::{self, SpawnError};
use super::spec::{ProfileConfig, RunSpec};
use super::tee::{Fence, TeeConfig, TeeReport, spawn_tee};
use super::triage;
use crate::cli::{AgentShim, ExitCode, KernelLayerMode, ProfileLevel, ProfileOnFail};
use crate::clock;
use crate::contracts::{ContractLayer, RunCounters, Violations};
use crate::evidence::bundle::{self, Bundle, BundleError};
use crate::evidence::events::{EventKind, EventLog};
use crate::evidence::health::{CgroupHealth, LostEvents, ObservationHealth, SdkHealth};
use crate::evidence::redact::Redactor;
use crate::evidence::spans::{RunSpan, SpanTree, SpanWriter};
use crate::evidence::trace::{RunStatus, RunTrace, StepRow, render_summary_md, span};
use crate::evidence::{files, schema};
use crate::kernel::event::Observed;
use crate::kernel::sensor::Scope;
use crate::kernel::tree::{KernelTree, ProcessLife};
use crate::kernel::{KernelLayer, KernelReport};
use crate::policy::layer::PolicyLayer;
use crate::policy::sockaddr::{self, SockAddrEnforcer};
use crate::sdk::{Received, SdkLayer, SdkSocket, SdkStats, shim};

/// How often the procfs process tree is sampled.
pub const PROCESS_SAMPLE: Duration = Duration::from_millis(50);
/// How long SDK connections may still be read after the run's processes are gone.
const SDK_DRAIN: Duration = Duration::from_millis(500);
/// Window over which the run's CPU rate is measured for stall triage.
const CPU_WINDOW: Duration = Duration::from_secs(1);

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
    /// `kernel_layer`, `policy_layer` and `sdk_layer` of the run's health.
    pub kernel_layer: String,
    pub policy_layer: String,
    pub sdk_layer: String,
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
struct RunSpans {
    tree: SpanTree,
    /// The run-trace writer layer, read when the trace is written.
    writer: SpanWriter,
    /// What the contract layer found as spans closed.
    violations: Arc<Violations>,
    total: RunSpan,
    /// Closed when the child is spawned (or could not be).
    dispatch: Option<RunSpan>,
    chain: RunSpan,
    case: RunSpan,
}

/// Where the child's streams end up, and their end-of-stream reports.
struct Streams {
    stdout: Option<oneshot::Receiver<TeeReport>>,
    stderr: Option<oneshot::Receiver<TeeReport>>,
    reports: [TeeReport; 2],
}

impl Streams {
    fn open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }
}

async fn recv_sdk(sock: &mut Option<SdkSocket>) -> Option<Received> {
    match sock {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(rx: &mut Option<oneshot::Receiver<TeeReport>>) -> TeeReport {
    match rx {
        Some(rx) => rx.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

pub async fn run(spec: RunSpec) -> Result<RunResult, SetupError> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(SetupError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(SetupError::Signals)?;
    let started_ns = clock::now_ns();
    let run_id = spec.run_id.to_string();

    let counters = Arc::new(RunCounters::default());
    let violations = Arc::new(Violations::default());
    let (tree, writer) = span_tree(&spec.contracts, &counters, &violations);
    let total = tree.open_at(span::RUN_TOTAL, None, started_ns);
    let dispatch = tree.open_at(span::RUNNER_DISPATCH, Some(&total), started_ns);
    let setup = tree.open_at(span::CASE_HARNESS, Some(&total), started_ns);

    // Bundle first: an unwritable output directory fails here, before anything runs.
    let bundle = Bundle::create(&spec.out_dir, &run_id)?;
    // Setup files are written without fsync: `reindex --repair` recreates any of them, and the
    // first fsync on a fresh directory can cost tens of ms before the child has even started.
    for rel in [files::KERNEL_LAYER, files::POLICY_LAYER, files::SDK_LAYER] {
        bundle.write_plain(rel, b"")?;
    }
    let io_err = |path: PathBuf| move |source| SetupError::Io { path, source };
    let mut events = EventLog::create(&bundle.path(files::EVENTS), &run_id)
        .map_err(io_err(bundle.path(files::EVENTS)))?;

    // The child's environment as vigil sets it (a plan step's own variables over vigil's):
    // its profile goes into the trace and its secret values are masked everywhere.
    let lossy = |(k, v): (OsString, OsString)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    };
    let mut env: Vec<(String, String)> = std::env::vars_os().map(lossy).collect();
    for (k, v) in spec.env.iter().cloned().map(lossy) {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    let redactor = Arc::new(Redactor::new(&env));
    let argv = redactor.redact_argv(&spec.argv_lossy());
    let mut trace = RunTrace::start(
        &run_id,
        started_ns,
        &argv,
        redactor.env_profile(&env),
        profile_level_name(spec.profile.level),
        spec.fail_fast,
    );
    bundle.write_plain(
        files::RUN_TRACE,
        &serde_json::to_vec_pretty(&trace).unwrap_or_default(),
    )?;

    let mut notes = Vec::new();
    if let (Some(t), Some(src)) = (spec.liveness.step_timeout, &spec.timeout_source) {
        notes.push(format!("step timeout {} ms ({src})", t.as_millis()));
    }
    if let Some(t) = spec.liveness.chain_timeout {
        notes.push(format!(
            "chain timeout {} ms (contract budget for `case.chain`)",
            t.as_millis()
        ));
    }
    let mount = cgroup::cgroup2_mount()?;
    let parent = cgroup::resolve_parent(&mount, &spec.cgroup_parent)?;
    for stale in cgroup::sweep_stale(&parent) {
        let msg = format!(
            "removed stale run cgroup {} (owner vigil pid {} gone; runs {:?}; {} processes killed{})",
            stale.dir.display(),
            stale.owner_pid,
            stale.runs,
            stale.processes_killed,
            if stale.removed {
                ""
            } else {
                "; removal failed"
            }
        );
        eprintln!("vigil: {msg}");
        notes.push(msg);
    }
    // The guard starts before the cgroup exists, so there is no moment at which a killed vigil
    // could leave a cgroup nobody will remove.
    let guard = Guard::spawn(&cgroup::owner_dir(&parent)).map_err(SetupError::Guard)?;
    let cg = match RunCgroup::create(&parent, &run_id) {
        Ok(cg) => cg,
        Err(e) => {
            guard.release();
            return Err(e.into());
        }
    };
    trace.cgroup = Some(json!({"path": cg.path().display().to_string(), "id": cg.id()}));
    setup.close_now("passed", json!({"phase": "setup"}));

    let chain = tree.open(span::CASE_CHAIN, Some(&total));
    let case = tree.open(span::CASE_RUN, Some(&chain));
    let mut spans = RunSpans {
        tree,
        writer,
        violations,
        total,
        dispatch: Some(dispatch),
        chain,
        case,
    };
    events.emit(
        EventKind::RunStarted,
        None,
        json!({"command": trace.command, "args": trace.args, "cgroup": trace.cgroup, "vigil_pid": std::process::id(),
               // What ${WORKSPACE}, ${HOME} and ${TMPDIR} meant for this run (for `vigil policy suggest`).
               "policy_vars": spec.vars}),
    );

    let mut sup = Supervisor {
        spec: &spec,
        cg: &cg,
        events,
        redactor,
        notes,
        progress: Arc::new(ProgressLog::new(spec.liveness.min_events)),
        fence: Arc::new(Fence::default()),
        outcome: None,
        escalation: None,
        stall: None,
        cpu_samples: VecDeque::new(),
        policy: None,
        network_mechanism: None,
        counters,
        cgroup_mount: mount,
        child_env: Vec::new(),
        sdk: None,
        sdk_stats: None,
    };
    let outcome = sup
        .supervise(&bundle, &mut spans, &mut sigint, &mut sigterm)
        .await;
    let result = sup.finish(outcome, bundle, spans, trace, guard, started_ns);
    Ok(result)
}

struct Supervisor<'a> {
    spec: &'a RunSpec,
    cg: &'a RunCgroup,
    events: EventLog,
    redactor: Arc<Redactor>,
    notes: Vec<String>,
    progress: Arc<ProgressLog>,
    fence: Arc<Fence>,
    /// An outcome vigil decided (watchdog, cancel): the first one wins and is never replaced.
    /// The main child's own exit is provisional until its output drained; this overrides it.
    outcome: Option<Outcome>,
    escalation: Option<Escalation>,
    /// Stall detected: (phase, snapshot taken).
    stall: Option<String>,
    cpu_samples: VecDeque<(Instant, u64)>,
    /// The audit oracle, when the run has a policy and kernel evidence to judge.
    policy: Option<PolicyLayer>,
    /// Enforce mode: what holds the network rules (health names it).
    network_mechanism: Option<String>,
    /// What contracts count: kernel operations, output bytes, lost events.
    counters: Arc<RunCounters>,
    /// Where cgroup v2 is mounted (the SDK socket checks its peers' cgroups against it).
    cgroup_mount: PathBuf,
    /// Variables vigil adds to the child's environment (`VIGIL_SDK_SOCKET`, …).
    child_env: Vec<(OsString, OsString)>,
    /// The SDK layer, from the child's socket being offered to the run's end.
    sdk: Option<SdkLayer>,
    sdk_stats: Option<Arc<SdkStats>>,
}

/// Why the child was not started.
#[derive(Debug, thiserror::Error)]
enum NotStarted {
    #[error("{0}")]
    Spawn(SpawnError),
    #[error(
        "the policy's network rules could not be enforced, so the command was not started: {0}"
    )]
    Network(String),
}

/// The main child's (exit code, signal) from waitid.
type ExitInfo = (Option<i32>, Option<i32>);

/// Per-run supervision state that `finish` needs.
struct Supervised {
    outcome: Outcome,
    main_exit: Option<ExitInfo>,
    streams: [TeeReport; 2],
    process_tree: bool,
    process_tree_source: &'static str,
    kernel: KernelReport,
}

impl Supervisor<'_> {
    async fn supervise(
        &mut self,
        bundle: &Bundle,
        spans: &mut RunSpans,
        sigint: &mut tokio::signal::unix::Signal,
        sigterm: &mut tokio::signal::unix::Signal,
    ) -> Supervised {
        // The sensor watches the run's cgroup before the child exists: its first exec is seen.
        let mut kernel = KernelLayer::start(
            match self.spec.kernel_layer {
                KernelLayerMode::Auto => Some(Scope::Full),
                KernelLayerMode::Process => Some(Scope::Process),
                KernelLayerMode::Off => None,
            },
            self.cg.id(),
            &bundle.path(files::KERNEL_LAYER),
        );
        self.start_policy(bundle, kernel.active());
        let mut sdk_socket = self.offer_sdk(kernel.active());
        // Held until the run ends: dropping it detaches the network programs.
        let network = self.enforce_network();
        let check = spans.tree.open(span::CHECK_EXECUTE, Some(&spans.case));
        let exec_span = spans.tree.open(span::SUBPROCESS_EXEC, Some(&check));
        let started = network.and_then(|n| {
            spawn::spawn(self.spec, self.cg.path(), &self.child_env)
                .map(|s| (s, n))
                .map_err(NotStarted::Spawn)
        });
        let (spawned, _network) = match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("vigil: {e}");
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
                return Supervised {
                    outcome,
                    main_exit: None,
                    streams: Default::default(),
                    process_tree: false,
                    process_tree_source: "procfs",
                    kernel: kernel.finish(&self.redactor, &mut Vec::new()),
                };
            }
        };
        let spawned_ns = clock::now_ns();
        exec_span.close("passed", json!({"pid": spawned.child.pid}), spawned_ns);
        if let Some(d) = spans.dispatch.take() {
            d.close("passed", json!({}), spawned_ns);
        }
        let wait_span = spans
            .tree
            .open_at(span::SUBPROCESS_WAIT, Some(&check), spawned_ns);
        // Closed at the child's exit; the registry ends it for the contract layer only after
        // `wait_span`, i.e. after the last kernel event was counted.
        let mut check = Some(check);
        let main_pid = spawned.child.pid;

        let mut tracker = ProcTracker::new(main_pid);
        let argv = self.spec.argv_lossy();
        let stat = read_stat(main_pid);
        let main_info = ProcInfo {
            pid: main_pid,
            ppid: i32::try_from(std::process::id()).unwrap_or(0),
            start_ticks: stat.as_ref().map_or(0, |s| s.start_ticks),
            comm: stat.map(|s| s.comm).unwrap_or_default(),
            argv: argv.clone(),
        };
        for state in ["spawned", "running"] {
            self.events.emit(
                EventKind::SubprocessState,
                None,
                json!({"pid": main_pid, "ppid": main_info.ppid, "state": state, "comm": main_info.comm,
                       "argv": self.redactor.redact_argv(&argv), "exit_code": null, "signal": null, "source": "spawn"}),
            );
        }
        tracker.adopt_main(main_info);
        // With the kernel layer the tree is exact; the procfs sampler then only feeds triage.
        let kernel_tree = kernel.active();
        let mut ktree = KernelTree::new(spawned.child.pid.unsigned_abs());

        let mut streams = self.start_tees(bundle, spawned.stdout, spawned.stderr);
        let child = spawned.child;
        let mut liveness = Liveness::new(
            self.spec.liveness.clone(),
            self.spec.profile.stall_threshold,
            spawned_ns,
        );
        let mut main_exit: Option<(u64, ExitInfo)> = None;
        let mut main_outcome: Option<Outcome> = None;
        let watch = self.cg.watch_events();
        let afd = watch.as_ref().ok().and_then(|w| w.async_fd().ok());
        if afd.is_none() {
            self.notes.push(
                "cgroup.events cannot be watched; emptiness is checked on each sample".into(),
            );
        }
        let mut cgroup_empty = false;
        let mut heartbeat = tokio::time::interval(self.spec.profile.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await; // the first tick is immediate; heartbeats start one interval in
        let mut sample = tokio::time::interval(PROCESS_SAMPLE);
        sample.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // After a kill, output pipes still held by something outside the cgroup are given up on.
        let mut pipes_give_up: Option<Instant> = None;

        loop {
            // One batch of this iteration's events to the writer thread.
            self.events.flush_pending();
            if main_exit.is_some() && !streams.open() {
                if !cgroup_empty && self.cg.procs().is_empty() {
                    cgroup_empty = true;
                    self.on_cgroup_empty();
                }
                if cgroup_empty {
                    break;
                }
                if self.escalation.is_none() {
                    let n = self.cg.procs().len();
                    self.notes.push(format!("{n} process(es) still in the run cgroup after the main child exited; killed"));
                    self.start_kill(None);
                }
            }
            let snap = self.progress.snapshot();
            let exit_ns = main_exit.map(|(t, _)| t);
            // While a kill is under way the only deadline is its own (SIGKILL at the grace).
            let deadline = if self.outcome.is_some() || self.escalation.is_some() {
                None
            } else {
                Some(liveness.next_deadline(snap, exit_ns, streams.open()))
            };
            let sleep_to = deadline.map(ns_to_instant);
            let kill_at = self
                .escalation
                .as_ref()
                .filter(|e| !e.escalated())
                .map(|e| e.kill_at);

            tokio::select! {
                biased;
                _ = sigint.recv() => self.on_signal(libc::SIGINT),
                _ = sigterm.recv() => self.on_signal(libc::SIGTERM),
                status = child.wait(), if main_exit.is_none() => {
                    let now = clock::now_ns();
                    let (code, sig) = status.unwrap_or((None, None));
                    main_exit = Some((now, (code, sig)));
                    self.events.emit(EventKind::SubprocessState, None, json!({
                        "pid": main_pid, "ppid": std::process::id(), "state": "exited",
                        "exit_code": code, "signal": sig, "source": "waitpid"}));
                    if let Some(c) = check.take() {
                        c.close(exit_status(code, sig), json!({"exit_code": code, "signal": sig}), now);
                    }
                    main_outcome = Some(match (code, sig) {
                        (Some(c), _) => Outcome::Exited(c),
                        (None, Some(s)) => Outcome::Signaled(s),
                        _ => Outcome::VigilFailed,
                    });
                }
                r = recv_sdk(&mut sdk_socket) => match r {
                    Some(r) => self.on_sdk(r),
                    None => sdk_socket = None,
                },
                r = recv_opt(&mut streams.stdout) => { streams.reports[0] = r; streams.stdout = None; }
                r = recv_opt(&mut streams.stderr) => { streams.reports[1] = r; streams.stderr = None; }
                ev = async { match (&watch, &afd) { (Ok(w), Some(a)) => w.changed(a).await, _ => std::future::pending().await } } => {
                    if !ev.populated {
                        cgroup_empty = true;
                        self.on_cgroup_empty();
                    }
                }
                _ = kernel.readable() => {
                    let mut seen = Vec::new();
                    kernel.drain(&self.redactor, &mut seen);
                    // Kernel events of the run are progress too.
                    if !seen.is_empty() {
                        self.progress.record(clock::now_ns());
                    }
                    self.observe_kernel(&mut ktree, &seen);
                }
                _ = sleep_until_opt(kill_at) => self.escalate_to_kill(),
                _ = sleep_until_opt(sleep_to) => {
                    let now = clock::now_ns();
                    for verdict in liveness.check(now, self.progress.snapshot(), exit_ns, streams.open()) {
                        self.on_verdict(verdict, now).await;
                    }
                }
                _ = sleep_until_opt(pipes_give_up) => {
                    self.fence.close();
                    self.notes.push("output pipes stayed open after the run's cgroup emptied (held outside the run); fenced".into());
                    streams.stdout = None;
                    streams.stderr = None;
                }
                _ = heartbeat.tick() => {
                    let snap = self.progress.snapshot();
                    let now = clock::now_ns();
                    self.events.emit(EventKind::Heartbeat, None, json!({
                        "elapsed_ms": now.saturating_sub(spawned_ns) / 1_000_000,
                        "progress_events": snap.count,
                        "silent_ms": now.saturating_sub(snap.last_ns.unwrap_or(spawned_ns)) / 1_000_000,
                        "processes": tracker.known().count(),
                    }));
                }
                _ = sample.tick() => {
                    let pids = self.cg.procs();
                    let changes = if kernel_tree { Vec::new() } else { tracker.update(&pids, &self.redactor) };
                    for ch in changes {
                        // A process appearing or exec'ing is activity; an exit is not.
                        if !ch.exited {
                            self.progress.record(clock::now_ns());
                        }
                        self.events.emit(EventKind::SubprocessState, None, ch.data);
                    }
                    if let Some(u) = self.cg.cpu_usage_usec() {
                        let now = Instant::now();
                        self.cpu_samples.push_back((now, u));
                        while self.cpu_samples.front().is_some_and(|(t, _)| now.duration_since(*t) > CPU_WINDOW * 2) {
                            self.cpu_samples.pop_front();
                        }
                    }
                    if afd.is_none() && pids.is_empty() && !cgroup_empty {
                        cgroup_empty = true;
                        self.on_cgroup_empty();
                    }
                }
            }
            if cgroup_empty && streams.open() && pipes_give_up.is_none() && main_exit.is_some() {
                pipes_give_up = Some(Instant::now() + self.spec.liveness.kill_grace);
            }
        }
        if let Some(sock) = sdk_socket.take() {
            self.drain_sdk(sock).await;
        }
        // The cgroup is empty, so every kernel event of the run is committed: finish drains them.
        let mut seen = Vec::new();
        let kernel = kernel.finish(&self.redactor, &mut seen);
        self.observe_kernel(&mut ktree, &seen);
        self.counters
            .set_lost_events(kernel.ring_lost + kernel.decode_errors);
        record_process_spans(&spans.tree, &wait_span, &ktree.lives());
        // Without the kernel layer, everything the sampler still knows has exited.
        if !kernel_tree {
            for ch in tracker.update(&[], &self.redactor) {
                self.events.emit(EventKind::SubprocessState, None, ch.data);
            }
        }
        self.fence.close();
        let main = main_exit.map(|(_, m)| m);
        let (code, sig) = main.unwrap_or((None, None));
        wait_span.close_now(
            exit_status(code, sig),
            json!({"exit_code": code, "signal": sig}),
        );
        drop(check);
        let outcome = self
            .outcome
            .clone()
            .or(main_outcome)
            .unwrap_or(Outcome::VigilFailed);
        Supervised {
            outcome,
            main_exit: main,
            streams: std::mem::take(&mut streams.reports),
            process_tree: true,
            process_tree_source: if kernel_tree { "kernel" } else { "procfs" },
            kernel,
        }
    }

    /// Enforce mode: attach the policy's network rules to the run's cgroup (not when the
    /// policy leaves every address open: nothing to hold). An error means the child must not
    /// start — it would run beyond its policy.
    fn enforce_network(&mut self) -> Result<Option<SockAddrEnforcer>, NotStarted> {
        let Some(spec) = self.spec.policy.as_ref().filter(|p| p.landlock.is_some()) else {
            return Ok(None);
        };
        if spec.policy.network_unrestricted() {
            self.network_mechanism =
                Some("network: every address allowed by the policy (nothing to enforce)".into());
            return Ok(None);
        }
        let enforcer = sockaddr::attach(&spec.policy, self.cg.path())
            .map_err(|e| NotStarted::Network(e.to_string()))?;
        self.network_mechanism = Some(format!(
            "cgroup sock_addr: connect4/6 and sendmsg4/6 on the run's cgroup only ({} connect, {} send entries; denied calls fail with EPERM)",
            enforcer.connect_entries, enforcer.send_entries
        ));
        Ok(Some(enforcer))
    }

    /// Start the audit oracle for the run's policy. Without kernel events there is nothing to
    /// judge, and health says so instead of claiming an audit.
    fn start_policy(&mut self, bundle: &Bundle, kernel_active: bool) {
        let Some(spec) = &self.spec.policy else {
            return;
        };
        // Landlock cannot carve the bundle out of a writable tree: say so, so that an operator
        // who needs the evidence out of the run's reach puts --out elsewhere.
        let vars = &self.spec.vars;
        if spec.landlock.is_some() {
            let dir = std::fs::canonicalize(bundle.dir())
                .unwrap_or_else(|_| bundle.dir().to_path_buf())
                .display()
                .to_string();
            if let Some(rule) = spec.policy.write.iter().find(|r| {
                r.action == crate::policy::Action::Allow
                    && r.paths.iter().any(|p| {
                        crate::policy::model::path_covers(
                            &crate::policy::oracle::expand_path(p, vars),
                            &dir,
                        )
                    })
            }) {
                self.notes.push(format!(
                    "policy {}: the bundle directory {dir} is writable by the run (write rule `{}`); use --out outside it to keep the evidence out of the run's reach",
                    spec.policy.name, rule.id
                ));
            }
        }
        if !kernel_active {
            self.notes.push(format!(
                "policy {}: not audited: the kernel layer is not active, so there are no events to judge",
                spec.policy.name
            ));
            return;
        }
        match PolicyLayer::start(spec, vars, &bundle.path(files::POLICY_LAYER)) {
            Ok(layer) => self.policy = Some(layer),
            Err(e) => self
                .notes
                .push(format!("policy {}: not audited: {e}", spec.policy.name)),
        }
    }

    /// One drain's kernel events to their consumers: the process tree, the policy oracle, the
    /// SDK layer's tool-call windows and the contract counters.
    fn observe_kernel(&mut self, tree: &mut KernelTree, seen: &[Observed]) {
        self.emit_kernel_states(tree, seen);
        if let Some(p) = self.policy.as_mut() {
            p.observe(seen, &self.redactor);
        }
        if let Some(sdk) = self.sdk.as_mut() {
            sdk.observe_kernel(seen);
        }
        self.counters.observe(seen);
    }

    /// Offer the child an SDK socket: `VIGIL_SDK_SOCKET` in its environment, with the run id
    /// and the agent shim.
    fn offer_sdk(&mut self, kernel: bool) -> Option<SdkSocket> {
        let env = &mut self.child_env;
        env.push(("VIGIL_RUN_ID".into(), self.spec.run_id.to_string().into()));
        if self.spec.agent_shim != AgentShim::None {
            env.push((
                "VIGIL_AGENT_SHIM".into(),
                self.spec.agent_shim.as_str().into(),
            ));
        }
        match SdkSocket::bind(self.cg.path(), &self.cgroup_mount, self.redactor.clone()) {
            Ok(sock) => {
                env.push(("VIGIL_SDK_SOCKET".into(), sock.path().into()));
                if self.spec.agent_shim != AgentShim::None {
                    match shim::write(sock.dir()) {
                        Ok(dir) => {
                            let existing = self
                                .spec
                                .env
                                .iter()
                                .find(|(k, _)| k == "PYTHONPATH")
                                .map(|(_, v)| v.clone())
                                .or_else(|| std::env::var_os("PYTHONPATH"));
                            env.push((
                                "PYTHONPATH".into(),
                                shim::python_path(&dir, existing.as_ref()),
                            ));
                        }
                        Err(e) => self.notes.push(format!("agent shim not written: {e}")),
                    }
                }
                self.sdk = Some(SdkLayer::new(kernel));
                self.sdk_stats = Some(sock.stats.clone());
                Some(sock)
            }
            Err(e) => {
                self.notes
                    .push(format!("SDK socket not offered: {e}; sdk_layer absent"));
                None
            }
        }
    }

    /// One SDK event: progress, stored, and a checkpoint in the run trace.
    fn on_sdk(&mut self, r: Received) {
        self.progress.record(r.ts_ns);
        if let Some(checkpoint) = self.sdk.as_mut().and_then(|l| l.accept(r)) {
            self.events.emit(EventKind::Checkpoint, None, checkpoint);
        }
    }

    /// After the run: read what the run's processes wrote to the socket before they exited
    /// (their connections end at EOF), for at most [`SDK_DRAIN`].
    async fn drain_sdk(&mut self, mut sock: SdkSocket) {
        let give_up = tokio::time::sleep(SDK_DRAIN);
        tokio::pin!(give_up);
        loop {
            while let Ok(r) = sock.rx.try_recv() {
                self.on_sdk(r);
            }
            if sock.stats.active() == 0 {
                break;
            }
            tokio::select! {
                r = sock.rx.recv() => match r {
                    Some(r) => self.on_sdk(r),
                    None => break,
                },
                _ = sock.stats.connection_closed() => {}
                _ = &mut give_up => {
                    self.notes.push(format!(
                        "{} SDK connection(s) still open {} ms after the run ended; closed",
                        sock.stats.active(),
                        SDK_DRAIN.as_millis()
                    ));
                    break;
                }
            }
        }
    }

    /// The `subprocess_state` records that kernel events imply.
    fn emit_kernel_states(&mut self, tree: &mut KernelTree, seen: &[Observed]) {
        for ev in seen.iter().map(|o| &o.event) {
            for state in tree.apply(ev, &self.redactor) {
                self.events.emit(EventKind::SubprocessState, None, state);
            }
        }
    }

    fn start_tees(
        &mut self,
        bundle: &Bundle,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Streams {
        let mut streams = Streams {
            stdout: None,
            stderr: None,
            reports: Default::default(),
        };
        for (i, (pipe, rel, fd)) in [(stdout, files::STDOUT, 1), (stderr, files::STDERR, 2)]
            .into_iter()
            .enumerate()
        {
            let capture = match std::fs::File::create(bundle.path(rel)) {
                Ok(f) => f,
                Err(e) => {
                    self.notes
                        .push(format!("cannot create {rel}: {e}; output not captured"));
                    // Still drain the pipe so the child never blocks on a full pipe.
                    match std::fs::File::create("/dev/null") {
                        Ok(f) => f,
                        Err(_) => continue,
                    }
                }
            };
            // SAFETY: fd 1 and 2 are open for the life of the process; BorrowedFd only borrows.
            let sink = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
                .try_clone_to_owned()
                .ok()
                .map(std::fs::File::from);
            let (tx, rx) = oneshot::channel();
            let cfg = TeeConfig {
                pipe,
                sink,
                capture,
                cap_bytes: self.spec.output_cap_bytes,
                capture_rel: rel,
            };
            match spawn_tee(
                cfg,
                self.redactor.clone(),
                self.progress.clone(),
                self.counters.clone(),
                self.fence.clone(),
                tx,
            ) {
                Ok(_) => {
                    if i == 0 {
                        streams.stdout = Some(rx)
                    } else {
                        streams.stderr = Some(rx)
                    }
                }
                Err(e) => self
                    .notes
                    .push(format!("cannot start output thread for {rel}: {e}")),
            }
        }
        streams
    }

    fn on_signal(&mut self, sig: i32) {
        let name = if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        if self.escalation.is_some() {
            // A second request (or one during a watchdog kill): kill at once.
            self.events.emit(
                EventKind::Note,
                None,
                json!({"what": "cancel_kill_now", "signal": name}),
            );
            self.escalate_to_kill();
            return;
        }
        eprintln!("vigil: {name} received; stopping the run (again to kill at once)");
        self.events.emit(
            EventKind::Note,
            None,
            json!({"what": "cancel_requested", "signal": name}),
        );
        self.outcome.get_or_insert(Outcome::Cancelled(sig));
        self.start_kill(None);
    }

    /// Begin SIGTERM → grace → SIGKILL. `watchdog` says whether to record watchdog events.
    fn start_kill(&mut self, watchdog: Option<&'static str>) {
        if self.escalation.is_some() {
            return;
        }
        let esc = Escalation::start(self.cg, self.spec.liveness.kill_grace);
        let data = json!({"term_sent": esc.term_sent, "grace_ms": self.spec.liveness.kill_grace.as_millis() as u64, "cause": watchdog});
        if watchdog.is_some() {
            self.events
                .emit(EventKind::Watchdog, Some(reason::KILL_TERM), data);
        } else {
            self.events.emit(
                EventKind::Note,
                None,
                json!({"what": "kill_term", "detail": data}),
            );
        }
        self.escalation = Some(esc);
    }

    fn escalate_to_kill(&mut self) {
        let watchdog = matches!(self.outcome, Some(Outcome::Watchdog(_)));
        let cg = self.cg;
        let Some(esc) = self.escalation.as_mut() else {
            return;
        };
        if esc.escalated() {
            return;
        }
        let remaining = cg.procs().len();
        let result = esc.kill_now(cg);
        let data = json!({"remaining": remaining, "after_ms": esc.elapsed_ms(),
            "mechanism": result.as_ref().map(|m| m.as_str()).unwrap_or("failed"),
            "error": result.as_ref().err().map(ToString::to_string)});
        if watchdog {
            self.events
                .emit(EventKind::Watchdog, Some(reason::KILL_KILLED), data);
        } else {
            self.events.emit(
                EventKind::Note,
                None,
                json!({"what": "kill_killed", "detail": data}),
            );
        }
    }

    fn on_cgroup_empty(&mut self) {
        if let Some(esc) = &self.escalation {
            let data = json!({"what": "kill_complete", "term_to_empty_ms": esc.elapsed_ms(),
                "term_sent": esc.term_sent, "escalated": esc.escalated()});
            self.events.emit(EventKind::Note, None, data);
        }
    }

    async fn on_verdict(&mut self, v: Verdict, now: u64) {
        match v {
            Verdict::StallWarning { silent_ms } => {
                self.events.emit(
                    EventKind::StallWarning,
                    Some(reason::NO_PROGRESS),
                    json!({
                    "silent_ms": silent_ms,
                    "threshold_ms": self.spec.profile.stall_threshold.as_millis() as u64}),
                );
            }
            Verdict::DrainCleanup => {
                self.notes.push(format!(
                    "output pipes stayed open {} ms after the main child exited; leftover processes killed (liveness not strict, run outcome unchanged)",
                    self.spec.liveness.kill_grace.as_millis()
                ));
                self.start_kill(None);
            }
            Verdict::Kill {
                reason: why,
                silent_ms,
            } => {
                if self.outcome.is_some() {
                    return; // already stopping; one terminal outcome
                }
                let mut data = json!({
                    "silent_ms": silent_ms,
                    "stall_ms": self.spec.liveness.stall.as_millis() as u64,
                    "hard_cap_ms": self.spec.liveness.hard_cap.as_millis() as u64,
                    "liveness_level": format!("{:?}", self.spec.liveness.level).to_lowercase(),
                    "detected_at_ns": now,
                    "last_progress_ns": self.progress.snapshot().last_ns,
                });
                if why == reason::NO_OUTPUT_NO_EVENT || why == reason::NO_PROGRESS {
                    let triage_start = std::time::Instant::now();
                    let snap =
                        triage::snapshot(self.cg, self.cpu_rate(), silent_ms, &self.redactor).await;
                    self.stall = Some(snap.stall_phase.clone());
                    data["stall_phase"] = json!(snap.stall_phase);
                    data["snapshot"] = serde_json::to_value(&snap).unwrap_or_default();
                    data["triage_ms"] = json!(triage_start.elapsed().as_secs_f64() * 1000.0);
                }
                eprintln!("vigil: watchdog: {why}; stopping the run");
                self.events.emit(EventKind::Watchdog, Some(why), data);
                self.outcome = Some(Outcome::Watchdog(why));
                self.start_kill(Some(why));
            }
        }
    }

    fn cpu_rate(&self) -> Option<f64> {
        let (t1, u1) = *self.cpu_samples.back()?;
        let (t0, u0) = *self
            .cpu_samples
            .iter()
            .find(|(t, _)| t1.duration_since(*t) <= CPU_WINDOW)?;
        let dt = t1.duration_since(t0).as_secs_f64();
        (dt > 0.0).then(|| (u1.saturating_sub(u0)) as f64 / 1e6 / dt)
    }

    fn finish(
        mut self,
        sup: Supervised,
        bundle: Bundle,
        spans: RunSpans,
        mut trace: RunTrace,
        guard: Guard,
        started_ns: u64,
    ) -> RunResult {
        let RunSpans {
            tree,
            writer,
            violations,
            total,
            chain,
            case,
            ..
        } = spans;
        let teardown = tree.open(span::CASE_HARNESS, Some(&total));
        let mut outcome = sup.outcome;
        let ended_ns = clock::now_ns();
        let status = outcome.step_status();
        let (code, sig) = sup.main_exit.unwrap_or((None, None));
        let step_attrs = json!({"exit_code": code, "signal": sig});
        case.close(status, step_attrs.clone(), ended_ns);
        chain.close(status, step_attrs.clone(), ended_ns);

        let kill_mechanism = self
            .escalation
            .as_ref()
            .and_then(|e| e.mechanism)
            .map(|m| m.as_str().to_string());
        if let Err(e) = self.cg.remove() {
            self.notes.push(format!("run cgroup not removed: {e}"));
        }
        guard.release();
        teardown.close_now("passed", json!({"phase": "teardown"}));
        total.close_now(outcome.status(), step_attrs);

        // Every span has closed, so every contract has been checked.
        let found = settle_contracts(&mut self.events, &mut self.notes, self.spec, &violations);
        if self.spec.contracts_strict && !found.is_empty() && outcome == Outcome::Exited(0) {
            eprintln!(
                "vigil: {} contract obligation(s) violated; failing the run (--contracts-strict)",
                found.len()
            );
            outcome = Outcome::ContractViolated;
        }
        trace.summary.contract_violations = found;

        self.events.emit(
            EventKind::RunFinished,
            outcome.reason(),
            json!({
            "status": outcome.status(), "exit_code": outcome.exit_code()}),
        );
        let events_result = self.events.finish();

        let step = StepRow {
            name: "main".into(),
            status: outcome.step_status().into(),
            exit_code: code,
            signal: sig,
            duration_ms: ended_ns.saturating_sub(started_ns) / 1_000_000,
            reason: outcome.reason().map(String::from),
            skip_reason: None,
            blocked_by: None,
            stall_detected: Some(self.stall.is_some()),
            stall_phase: self.stall.clone(),
            triage: None,
            bundle: None,
        };
        let failed = outcome.is_failure();
        trace.summary.first_failure_step = failed.then(|| "main".to_string());
        trace.summary.steps = vec![step];
        trace.ended_at = Some(clock::rfc3339(ended_ns));
        trace.status = outcome.status().into();
        trace.exit_code = Some(outcome.exit_code());
        trace.run_status = RunStatus {
            state: "committed".into(),
            reason: None,
        };
        trace.events = self.events.trace_events().to_vec();

        // The oracle saw every kernel event (the last drain came before this).
        let policy = self.policy.take().map(PolicyLayer::finish);
        let landlock = self.spec.policy.as_ref().and_then(|p| p.landlock.clone());
        let mut policy_mechanisms = Vec::new();
        if let Some(l) = &landlock {
            policy_mechanisms.extend(l.notes.iter().cloned());
        }
        policy_mechanisms.extend(self.network_mechanism.take());
        match &policy {
            Some(p) if p.write_error.is_none() => {
                self.notes.push(format!(
                    "policy {}: {} decisions, {} denials (layers/policy.ndjson){}",
                    p.name,
                    p.decisions,
                    p.would_deny,
                    if landlock.is_some() {
                        ""
                    } else {
                        "; audit: nothing was blocked"
                    }
                ));
                policy_mechanisms
                    .push("oracle: kernel events judged against the policy".to_string());
                if sup.kernel.kernel_layer != "observed" {
                    policy_mechanisms.push(
                        "partial evidence: the kernel layer was not fully observed (see probes)"
                            .into(),
                    );
                }
            }
            Some(p) => self.notes.push(format!(
                "policy layer not written: {}",
                p.write_error.clone().unwrap_or_default()
            )),
            None => {}
        }
        let policy_layer = match (&landlock, &policy) {
            (Some(_), _) => "enforced",
            (None, Some(p)) if p.write_error.is_none() => "audited",
            _ => "absent",
        };

        let (sdk_lines, sdk_summary) = match self.sdk.take() {
            Some(l) => {
                let (bytes, summary) = l.finish();
                (Some(bytes), Some(summary))
            }
            None => (None, None),
        };
        let sdk_health = self.sdk_stats.as_ref().map(|st| SdkHealth {
            shim: self.spec.agent_shim.as_str().into(),
            accepted: sdk_summary.map_or(0, |s| s.accepted),
            tool_calls: sdk_summary.map_or(0, |s| s.tool_calls),
            rejected: st
                .rejected()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            dropped_over_cap: st.dropped(),
            connections: st.connections(),
            refused_connections: st.refused_connections(),
        });
        // Self-reported only when something valid was actually reported.
        let sdk_layer = if sdk_health.as_ref().is_some_and(|h| h.accepted > 0) {
            "self_reported"
        } else {
            "absent"
        };
        let mut output = std::collections::BTreeMap::new();
        if sup.process_tree {
            output.insert("stdout".to_string(), sup.streams[0].health.clone());
            output.insert("stderr".to_string(), sup.streams[1].health.clone());
        }
        let health = ObservationHealth {
            schema: schema::OBSERVATION_HEALTH.into(),
            run_id: trace.run_id.clone(),
            kernel_layer: sup.kernel.kernel_layer.into(),
            cgroup_correlation: "full".into(),
            policy_layer: policy_layer.into(),
            policy_mechanisms,
            sdk_layer: sdk_layer.into(),
            process_tree_source: sup.process_tree_source.into(),
            process_tree_sample_ms: PROCESS_SAMPLE.as_millis() as u64,
            lost_events: LostEvents {
                kernel_ring_buffer: sup.kernel.ring_lost,
                kernel_ring_buffer_by_kind: sup.kernel.ring_lost_by_kind.clone(),
                reader: sup.kernel.decode_errors,
                queues: self.events.shed(),
                trace_shed: self.events.trace_shed(),
            },
            probes: sup.kernel.probes.clone(),
            cgroup: Some(CgroupHealth {
                path: self.cg.path().display().to_string(),
                id: self.cg.id(),
                kill_mechanism,
            }),
            output,
            sdk: sdk_health,
            notes: {
                let mut n = vec![match sup.process_tree_source {
                    "kernel" => "process tree (subprocess_state) from kernel events".to_string(),
                    _ => "process tree sampled from cgroup.procs and procfs".to_string(),
                }];
                n.extend(sup.kernel.notes.iter().cloned());
                n.extend(self.notes.iter().cloned());
                n
            },
        };

        let detailed = spec_detailed(self.spec.profile.level);
        let commit = (|| -> Result<(), String> {
            events_result?;
            if let Some(e) = &sup.kernel.write_error {
                return Err(e.clone());
            }
            if let Some(lines) = &sdk_lines {
                bundle
                    .write_bytes(files::SDK_LAYER, lines)
                    .map_err(|e| e.to_string())?;
            }
            trace.spans = writer.with(|r| r.export(detailed, clock::now_ns()));
            write_documents(&bundle, &health, &trace)?;
            let known: Vec<_> = sup
                .streams
                .iter()
                .filter_map(|r| r.capture.clone())
                .collect();
            bundle.commit(&known).map_err(|e| e.to_string())?;
            Ok(())
        })();
        if let Err(e) = &commit {
            eprintln!(
                "vigil: bundle not committed: {e} (run outcome: {}, exit {})",
                outcome.status(),
                outcome.exit_code()
            );
        } else {
            write_profile_copies(&self.spec.profile, &mut trace, &writer, failed);
        }
        if failed {
            eprintln!(
                "vigil: run {} {}{} (exit {}); bundle {}",
                trace.run_id,
                outcome.status(),
                outcome
                    .reason()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                outcome.exit_code(),
                bundle.dir().display()
            );
        }
        RunResult {
            outcome,
            bundle_dir: bundle.dir().to_path_buf(),
            commit_error: commit.err(),
            main_exit: (code, sig),
            stall_phase: self.stall.clone(),
            counters: self.counters.clone(),
            duration_ms: ended_ns.saturating_sub(started_ns) / 1_000_000,
            kernel_layer: health.kernel_layer.clone(),
            policy_layer: health.policy_layer.clone(),
            sdk_layer: health.sdk_layer.clone(),
        }
    }
}

/// The run's documents, before the index: health, the trace and its people's version.
pub(super) fn write_documents(
    bundle: &Bundle,
    health: &ObservationHealth,
    trace: &RunTrace,
) -> Result<(), String> {
    bundle
        .write_json(files::HEALTH, health)
        .map_err(|e| e.to_string())?;
    bundle
        .write_json(files::RUN_TRACE, trace)
        .map_err(|e| e.to_string())?;
    bundle
        .write_bytes(
            files::RUN_TRACE_SUMMARY,
            render_summary_md(trace).as_bytes(),
        )
        .map_err(|e| e.to_string())
}

/// Once every span has closed: each violation becomes a `contract_violation` event, and the
/// notes say what was checked.
pub(super) fn settle_contracts(
    events: &mut EventLog,
    notes: &mut Vec<String>,
    spec: &RunSpec,
    violations: &Violations,
) -> Vec<crate::contracts::Violation> {
    let found = violations.take();
    for v in &found {
        events.emit(
            EventKind::ContractViolation,
            None,
            serde_json::to_value(v).unwrap_or_default(),
        );
    }
    if violations.dropped() > 0 {
        notes.push(format!(
            "{} further contract violations were counted but not recorded",
            violations.dropped()
        ));
    }
    if !spec.contracts.is_empty() {
        notes.push(format!(
            "contracts: {} loaded, {} violated obligations{}",
            spec.contracts.len(),
            found.len(),
            if spec.contracts_strict {
                " (--contracts-strict)"
            } else {
                ""
            }
        ));
    }
    found
}

/// The run's spans go to its own dispatcher: the run-trace writer and the contract checker
/// consume the same stream.
pub(super) fn span_tree(
    contracts: &Arc<crate::contracts::Registry>,
    counters: &Arc<RunCounters>,
    violations: &Arc<Violations>,
) -> (SpanTree, SpanWriter) {
    let writer = SpanWriter::default();
    let tree = SpanTree::new(tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(writer.clone())
            .with(ContractLayer::new(
                contracts.clone(),
                counters.clone(),
                violations.clone(),
            )),
    ));
    (tree, writer)
}

/// Copies outside the bundle (CONTRACT.md §2): at the profile level, or — for a failing run
/// with profiling off — at the `--profile-on-fail` level.
pub(super) fn write_profile_copies(
    p: &ProfileConfig,
    trace: &mut RunTrace,
    spans: &SpanWriter,
    failed: bool,
) {
    let detailed = match (p.level, p.on_fail) {
        (ProfileLevel::Off, ProfileOnFail::Off) => return,
        (ProfileLevel::Off, on_fail) if failed => on_fail == ProfileOnFail::Detailed,
        (ProfileLevel::Off, _) => return,
        (level, _) => spec_detailed(level),
    };
    trace.spans = spans.with(|r| r.export(detailed, clock::now_ns()));
    let json = serde_json::to_vec_pretty(&*trace).map(|mut v| {
        v.push(b'\n');
        v
    });
    for (path, bytes) in [
        (&p.out, json.ok()),
        (&p.summary_out, Some(render_summary_md(trace).into_bytes())),
    ] {
        let Some(bytes) = bytes else { continue };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = bundle::write_atomic(path, &bytes) {
            eprintln!("vigil: profile copy not written: {e}");
        }
    }
}

/// Per-process spans of the detailed profile, from the kernel's process lives: for each process
/// a `subprocess.exec` span (fork → first exec) and a `subprocess.wait` span (exec, or fork when
/// it never exec'd → exit), nested under its parent's `subprocess.wait` — the main child's for
/// its own children.
fn record_process_spans(tree: &SpanTree, main_wait: &RunSpan, lives: &[ProcessLife]) {
    let offset = clock::boot_to_wall_offset_ns();
    let wall = |boot: u64| clock::boot_to_wall(boot, offset);
    let mut wait_of: HashMap<u32, RunSpan> = HashMap::new();
    for life in lives {
        let parent = wait_of.get(&life.ppid).unwrap_or(main_wait);
        let start = wall(life.start_boot_ns);
        let attrs =
            json!({"pid": life.pid, "ppid": life.ppid, "comm": life.comm, "source": "kernel"});
        let run_from = match life.exec_boot_ns {
            Some(exec) => {
                let mut a = attrs.clone();
                a["exec_chain"] = json!(life.exec_chain);
                a["argv"] = json!(life.argv);
                tree.record_detail(
                    span::SUBPROCESS_EXEC,
                    Some(parent),
                    (start, wall(exec)),
                    "passed",
                    a,
                );
                wall(exec)
            }
            None => start,
        };
        let (end, status) = match (life.end_boot_ns, life.exit_code, life.signal) {
            (None, _, _) => (clock::now_ns(), "unfinished"),
            (Some(e), code, sig) => (wall(e), exit_status(code, sig)),
        };
        let mut a = attrs;
        a["exit_code"] = json!(life.exit_code);
        a["signal"] = json!(life.signal);
        a["oom_killed"] = json!(life.oom_killed);
        let span = tree.record_detail(
            span::SUBPROCESS_WAIT,
            Some(parent),
            (run_from, end),
            status,
            a,
        );
        wait_of.insert(life.pid, span);
    }
}

/// A span's status from an exit: `passed` for code 0, `failed` for another code, `killed` for
/// a signal.
fn exit_status(code: Option<i32>, sig: Option<i32>) -> &'static str {
    match (code, sig) {
        (Some(0), _) => "passed",
        (Some(_), _) => "failed",
        (None, Some(_)) => "killed",
        (None, None) => "unfinished",
    }
}

pub(super) fn spec_detailed(level: ProfileLevel) -> bool {
    matches!(level, ProfileLevel::Detailed | ProfileLevel::Debug)
}

pub(super) fn profile_level_name(level: ProfileLevel) -> &'static str {
    match level {
        ProfileLevel::Off => "off",
        ProfileLevel::Basic => "basic",
        ProfileLevel::Detailed => "detailed",
        ProfileLevel::Debug => "debug",
    }
}

/// Convert a wall-clock deadline (epoch ns) to a tokio instant.
fn ns_to_instant(deadline_ns: u64) -> Instant {
    let now_ns = clock::now_ns();
    Instant::now() + Duration::from_nanos(deadline_ns.saturating_sub(now_ns))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
