//! `vigil watch`: a run whose processes vigil did not spawn. The spec of a watch (the run flags
//! that apply, checked like `run`'s), and the process tree seeded from /proc at attach.
//!
//! What a watch cannot do is refused before anything is attached: a command, `--user`, a plan,
//! an agent shim or a lane only make sense for a child vigil spawns, and a policy's filesystem
//! rules cannot be enforced from outside (Landlock binds a process at exec, and these processes
//! exec'd long ago). Network rules can: the cgroup sock_addr programs attach to any cgroup.

use std::path::PathBuf;
use std::time::Duration;

use super::dispatch::RunState;
use super::spec::{RunInputs, RunSpec, SpecError};
use super::supervisor::Supervisor;
use crate::cli::{AgentShim, RunArgs, WatchArgs};
use crate::evidence::events::EventKind;
use crate::evidence::health::WatchHealth;
use crate::evidence::redact::Redactor;
use crate::kernel::tree::ProcessLife;
use crate::policy::Mode;

/// What a watch observes and when it stops.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    /// `--cgroup` as given (resolved against the cgroup2 mount when the run starts).
    pub cgroup: PathBuf,
    /// `--duration`: end after this long (None: when the cgroup empties or on SIGINT).
    pub duration: Option<Duration>,
    /// `--sdk-announce`: where the SDK socket's path is written once the watch is active.
    pub sdk_announce: Option<PathBuf>,
    /// A CI runner's worker process: its direct children are the job's steps.
    pub steps_parent: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "vigil watch: {0} does not apply: vigil does not start the watched processes; accepted: --cgroup PATH with --policy, --timeout, --liveness-*, --kernel-layer, --out, --run-id"
    )]
    NotForWatch(&'static str),
    #[error(
        "--policy {0}: its filesystem rules cannot be enforced on processes vigil did not start (Landlock binds at exec); accepted: --policy-mode audit, or an enforce policy whose read, write and exec rules allow / (its network rules are then enforced with cgroup hooks)"
    )]
    FilesystemEnforce(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

impl WatchError {
    pub fn exit_code(&self) -> i32 {
        crate::cli::ExitCode::USAGE
    }
}

/// Refuse the run flags that only make sense for a spawned child.
fn check_flags(run: &RunArgs) -> Result<(), WatchError> {
    let refused = [
        (!run.command.is_empty(), "a command after --"),
        (run.user.is_some(), "--user"),
        (run.plan.is_some(), "--plan"),
        (run.agent_shim != AgentShim::None, "--agent-shim"),
        (run.lane.is_some(), "--lane"),
    ];
    match refused.into_iter().find(|(bad, _)| *bad) {
        Some((_, what)) => Err(WatchError::NotForWatch(what)),
        None => Ok(()),
    }
}

/// The spec of a watch, reading what its flags point at as this process.
pub fn spec(args: WatchArgs) -> Result<RunSpec, WatchError> {
    check_flags(&args.run)?;
    let inputs = RunInputs::read(&args.run)?;
    spec_from_parts(args, inputs)
}

/// The spec of a watch whose inputs were read by whoever asked for it.
pub fn spec_from_parts(args: WatchArgs, inputs: RunInputs) -> Result<RunSpec, WatchError> {
    check_flags(&args.run)?;
    let mut run = args.run;
    // What the trace records as the command: the watch itself.
    run.command = vec![
        "vigil".into(),
        "watch".into(),
        "--cgroup".into(),
        args.cgroup.clone().into_os_string(),
    ];
    let mut spec = RunSpec::from_parts(run, inputs)?;
    if let Some(p) = spec.policy.as_mut()
        && p.policy.mode == Mode::Enforce
    {
        if !p.policy.filesystem_unrestricted() {
            return Err(WatchError::FilesystemEnforce(p.file.display().to_string()));
        }
        // Nothing for Landlock to hold; the network rules go on the cgroup.
        p.landlock = None;
        p.network_hooks_only = true;
    }
    spec.watch = Some(WatchTarget {
        cgroup: args.cgroup,
        duration: args.duration,
        sdk_announce: args.sdk_announce,
        steps_parent: None,
    });
    Ok(spec)
}

/// A process found in the cgroup at attach: its fork and exec happened before vigil looked.
#[derive(Debug, Clone, PartialEq)]
pub struct Seeded {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// Redacted.
    pub argv: Vec<String>,
    /// When it started, on the boot clock (the kernel events' clock).
    pub start_boot_ns: u64,
}

/// The processes of `pids` as /proc describes them now (those that exit meanwhile are skipped:
/// their exit is seen, or was before the attach).
pub fn seed(pids: &[i32], redactor: &Redactor) -> Vec<Seeded> {
    let hz = procfs::ticks_per_second().max(1);
    let mut out: Vec<Seeded> = pids
        .iter()
        .filter_map(|&pid| {
            let p = procfs::process::Process::new(pid).ok()?;
            let st = p.stat().ok()?;
            let argv = p.cmdline().unwrap_or_default();
            Some(Seeded {
                pid: pid.unsigned_abs(),
                ppid: st.ppid.unsigned_abs(),
                comm: st.comm,
                argv: redactor.redact_argv(&argv),
                // /proc's start time counts boot-clock ticks (CLOCK_BOOTTIME since 4.17).
                start_boot_ns: st.starttime.saturating_mul(1_000_000_000) / hz,
            })
        })
        .collect();
    out.sort_by_key(|s| (s.start_boot_ns, s.pid));
    out
}

impl Supervisor<'_> {
    /// The attach of a watch, once the kernel watches the cgroup: seed the tree with what is
    /// running, announce the SDK socket, tell the requester, and keep what health reports.
    pub(super) fn seed_watch(&mut self, state: &mut RunState, kernel_tree: bool) {
        let Some(target) = &self.spec.watch else {
            return;
        };
        let attach = std::time::Instant::now();
        let seeded = seed(&self.cg.procs(), &self.rec.redactor);
        for s in &seeded {
            let record = state.seed(ProcessLife {
                pid: s.pid,
                ppid: s.ppid,
                comm: s.comm.clone(),
                start_boot_ns: s.start_boot_ns,
                exec_boot_ns: None,
                end_boot_ns: None,
                exec_chain: Vec::new(),
                argv: s.argv.clone(),
                exit_code: None,
                signal: None,
                oom_killed: false,
                seeded: true,
            });
            self.rec
                .events
                .emit(EventKind::SubprocessState, None, record);
        }
        if !kernel_tree {
            self.notes.push(
                "watch without the kernel layer: the tree is sampled from procfs; exits between samples are missed".into(),
            );
        }
        let socket = self
            .child_env
            .iter()
            .find(|(k, _)| k == "VIGIL_SDK_SOCKET")
            .map(|(_, v)| PathBuf::from(v));
        let attach_ms = attach.elapsed().as_secs_f64() * 1e3;
        let announce = target.sdk_announce.as_deref();
        if let Err(e) = self.host.watch_active(announce, socket.as_deref()) {
            let file = announce
                .map(|f| f.display().to_string())
                .unwrap_or_default();
            let msg = format!("--sdk-announce {file}: {e}");
            self.host.say(&msg);
            self.notes.push(msg);
        }
        self.host.say(&format!(
            "watching {} (cgroup id {}): {} process(es) running at attach; bundle {}",
            self.cg.path().display(),
            self.cg.id(),
            seeded.len(),
            self.rec.bundle.shown().display()
        ));
        self.watch_health = Some(WatchHealth {
            cgroup: self.cg.path().display().to_string(),
            seeded_processes: seeded.len() as u64,
            attached_at_ns: crate::clock::now_ns(),
            attach_ms,
            missed_before_attach: vec![
                "processes that started and ended before the attach".into(),
                format!(
                    "the fork and exec of the {} process(es) found running (their start times and argv are from /proc)",
                    seeded.len()
                ),
                "file opens, network calls, signals and output before the attach".into(),
            ],
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> WatchArgs {
        let cli = crate::cli::Cli::try_parse_from(["vigil", "watch"].iter().chain(args).copied())
            .expect("parses");
        match cli.command {
            crate::cli::Command::Watch(w) => *w,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_for_a_spawned_child_are_refused_by_name() {
        for (args, what) in [
            (&["--cgroup", "x", "--user", "1000"][..], "--user"),
            (&["--cgroup", "x", "--", "true"][..], "a command after --"),
            (
                &["--cgroup", "x", "--agent-shim", "openai-agents"][..],
                "--agent-shim",
            ),
        ] {
            let err = check_flags(&parse(args).run).expect_err("refused");
            assert!(err.to_string().contains(what), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
        assert!(check_flags(&parse(&["--cgroup", "x", "--duration", "5s"]).run).is_ok());
    }

    #[test]
    fn seeding_reads_this_process_and_skips_a_missing_one() {
        let me = std::process::id() as i32;
        let seeded = seed(&[me, i32::MAX], &Redactor::new(&[]));
        assert_eq!(seeded.len(), 1, "{seeded:?}");
        assert_eq!(seeded[0].pid, me as u32);
        assert!(seeded[0].start_boot_ns > 0);
        assert!(!seeded[0].argv.is_empty());
    }
}
