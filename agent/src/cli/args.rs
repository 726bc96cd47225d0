//! clap definitions. Every flag name and environment variable here is fixed by CONTRACT.md §2;
//! a flag wins over its environment variable (clap's precedence).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::run::spec::{RunId, UserSpec};

pub use super::commands::{DaemonArgs, ExportFormat, PlanCommand, WatchArgs};

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Run commands under supervision, watch them from the kernel, leave verifiable evidence"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one command under supervision and observation; write its bundle.
    Run(Box<RunArgs>),
    /// Strict check: commit barrier present, every digest matches, not in progress.
    Validate {
        /// The bundle directory (`<out>/<run_id>`).
        bundle: PathBuf,
    },
    /// Recompute the index; `--repair` salvages an interrupted bundle and marks it repaired.
    Reindex(ReindexArgs),
    /// Human summary of a bundle: process tree, stalls, kills, health.
    Inspect {
        /// The bundle directory.
        bundle: PathBuf,
    },
    /// What this host supports: BTF, cgroup v2, tracepoints and the eBPF sensor, BPF LSM,
    /// Landlock ABI, capabilities.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Did the policy change the outcome? Compares a `--lane baseline` run with a
    /// `--lane scenario` run of the same workload.
    Compare {
        /// The bundle of the baseline run (policy not applied).
        baseline: PathBuf,
        /// The bundle of the scenario run (policy applied).
        scenario: PathBuf,
    },
    /// Sandbox policies: `lint` checks policy files, `suggest` derives one from runs.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// A compact, verified evidence packet (in-toto Statement v1) for downstream consumers.
    EmitPromotion {
        /// The bundle directory.
        bundle: PathBuf,
        /// Where the packet goes.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Exit 1 with the reasons, writing nothing, unless the run is promotable.
        #[arg(long)]
        require_promotable: bool,
        /// Sign the packet (a DSSE envelope, Ed25519) with this key from `vigil keygen`.
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
    },
    /// Check a packet's DSSE signature and, given the bundle, every subject digest.
    VerifyPromotion {
        packet: PathBuf,
        /// The public key (`PREFIX.pub` of `vigil keygen`).
        #[arg(long, value_name = "PUB")]
        key: Option<PathBuf>,
        /// The bundle the packet describes.
        #[arg(long, value_name = "DIR")]
        bundle: Option<PathBuf>,
    },
    /// An Ed25519 key pair for signing packets: PREFIX.key (secret, 0600) and PREFIX.pub.
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// The run for other tools: Perfetto, chrome://tracing JSON, OTLP/JSON, JUnit, an HTML report.
    Export {
        bundle: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// With otlp-json: POST it to this OTLP/HTTP receiver (http://HOST:PORT[/PATH];
        /// `/v1/traces` is appended unless the path ends with it).
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
    },
    /// Per-operation counts (exec, file read/write, connect, send) with allow/deny, by lane.
    SummarizeOps {
        /// A bundle directory or a promotion packet.
        input: PathBuf,
        /// Write the summary (JSON, `vigil.ops_summary.v1`) here instead of text to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Plans: `lint` checks a plan without running it.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
    /// Host support summary, whether a daemon answers, the newest committed bundle and its
    /// verdict.
    Status {
        /// The daemon to ask.
        #[arg(
            long,
            env = "VIGIL_DAEMON_SOCKET",
            default_value = "/run/vigil/vigil.sock",
            value_name = "PATH"
        )]
        daemon: PathBuf,
        /// Where bundles are.
        #[arg(
            long,
            env = "VIGIL_OUT",
            default_value = ".artifacts/runs",
            value_name = "DIR"
        )]
        out: PathBuf,
    },
    /// Observe (and police) the processes of an existing cgroup that vigil did not spawn, until
    /// it empties, SIGINT, or `--duration`; write the same bundle as `run`.
    Watch(Box<WatchArgs>),
    /// CI runner integrations: `vigil ci github job-started|job-completed` (fail open: always
    /// exit 0).
    Ci {
        #[command(subcommand)]
        command: CiCommand,
    },
    /// Long-lived privileged sidecar: the sensor stays loaded, runs are requested over a local
    /// socket (`vigil run --daemon PATH`, or the default socket when it answers).
    Daemon(DaemonArgs),
    /// Internal: kills and removes a run's cgroup when the vigil that spawned it dies.
    #[command(name = "__cgroup-guard", hide = true)]
    CgroupGuard {
        #[arg(long)]
        cgroup: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CiCommand {
    /// GitHub Actions self-hosted runner job hooks.
    Github {
        #[command(subcommand)]
        hook: crate::ci::github::GithubHook,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files: errors (exit 2) and warnings with file:line:column.
    Lint {
        /// Policy files (YAML).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Derive a least-privilege policy that allows exactly what the given runs did.
    Suggest {
        /// Bundles whose kernel evidence to use.
        #[arg(required = true, value_name = "BUNDLE")]
        bundles: Vec<PathBuf>,
        /// Write the policy here instead of to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ReindexMode {
    /// Recompute and compare; refuse anything not committed or not intact.
    #[arg(long)]
    pub strict: bool,
    /// Salvage an interrupted bundle: drop torn lines, recompute the index, mark it repaired.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// The bundle directory.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub mode: ReindexMode,
}

#[derive(Debug, Clone, Args, serde::Serialize, serde::Deserialize)]
pub struct RunArgs {
    /// Directory that receives one bundle per run.
    #[arg(
        long,
        env = "VIGIL_OUT",
        default_value = ".artifacts/runs",
        value_name = "DIR"
    )]
    pub out: PathBuf,

    /// Run id: ASCII letters, digits, `_` and `-`. Default: `run_` + 128 random bits in hex.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<RunId>,

    /// cgroup v2 parent for run cgroups, relative to the cgroup2 mount or absolute under it.
    #[arg(long, default_value = "vigil", value_name = "PATH")]
    pub cgroup_parent: PathBuf,

    /// Run the child as UID[:GID] (no capabilities, no_new_privs). Default: vigil's own user.
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<UserSpec>,

    /// Kernel layer: `auto` loads the eBPF sensor when the host allows (else health says why
    /// it is absent); `process` loads it without the syscall probes (no file opens or network
    /// calls; the rest of the host keeps its fast syscall path); `network` is `process` plus
    /// network evidence from cgroup hooks on the run's cgroup (still no syscall hook); `off`
    /// does not load it.
    #[arg(long, env = "VIGIL_KERNEL_LAYER", value_enum, default_value = "auto")]
    pub kernel_layer: KernelLayerMode,

    /// Sandbox policy (YAML; see `vigil policy lint`). Checked before anything starts.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Override the policy's mode. `audit` records what the policy would decide and blocks
    /// nothing; `enforce` applies it (Landlock, cgroup sock_addr).
    #[arg(long, value_enum, requires = "policy")]
    pub policy_mode: Option<PolicyMode>,

    /// Label the run for `vigil compare`: `baseline` runs with the policy not applied (its
    /// decisions recorded as would-be), `scenario` with it applied (enforce).
    #[arg(long, value_enum, requires = "policy")]
    pub lane: Option<LaneArg>,

    /// Cap on each of output/stdout.log and output/stderr.log; truncation is recorded.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub output_cap_bytes: u64,

    /// Bound on the kernel and policy layers together: past it, data events (opens, network,
    /// write progress, allow decisions) are downgraded to per-kind, per-target counts; control
    /// events are always written.
    #[arg(long, env = "VIGIL_EVIDENCE_MAX_BYTES", default_value = "268435456",
          value_parser = parse_bytes, value_name = "BYTES")]
    pub evidence_max_bytes: u64,

    /// Contracts directory: every `*.yaml` in it is loaded (a missing directory loads none).
    #[arg(
        long,
        env = "VIGIL_CONTRACTS",
        default_value = "policies/contracts",
        value_name = "DIR"
    )]
    pub contracts: PathBuf,

    /// A violated contract fails the run: exit 3 when the command itself succeeded.
    #[arg(long)]
    pub contracts_strict: bool,

    /// The command's timeout, as in timeout(1) (`90s`, `1500ms`, `2m`): then SIGTERM to the
    /// run's cgroup, SIGKILL after the kill grace, exit 124. Default: the contracts' budget for
    /// `check.execute` (or `subprocess.wait`), else none.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// Run a plan (YAML or JSON): ordered steps of a CI gate, instead of one command.
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    pub plan: Option<PathBuf>,

    /// How a plan's failing governance steps are triaged: `targeted` reruns only the failing
    /// checks (the step's `triage` template), `broad` the whole step, `both` one then the other.
    #[arg(long, value_enum, default_value = "targeted", value_name = "MODE")]
    pub triage: TriageMode,

    /// Agent SDK the child uses, exported to it as `VIGIL_AGENT_SHIM` (with
    /// `VIGIL_SDK_SOCKET`, the socket it reports on) and recorded in health.
    #[arg(long, value_enum, default_value = "none", value_name = "SHIM")]
    pub agent_shim: AgentShim,

    #[command(flatten)]
    pub profile: ProfileArgs,

    #[command(flatten)]
    pub liveness: LivenessArgs,

    #[command(flatten)]
    pub gate: GateArgs,

    /// Ask this daemon to run the command (default: the daemon at /run/vigil/vigil.sock when it
    /// answers, else standalone).
    #[arg(
        long,
        env = "VIGIL_DAEMON_SOCKET",
        value_name = "PATH",
        conflicts_with = "no_daemon"
    )]
    #[serde(skip)]
    pub daemon: Option<PathBuf>,

    /// Run standalone even when a daemon answers.
    #[arg(long)]
    #[serde(skip)]
    pub no_daemon: bool,

    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    #[serde(with = "utf8_args")]
    pub command: Vec<OsString>,
}

/// The daemon protocol carries text: a command line that is not UTF-8 runs standalone.
mod utf8_args {
    use std::ffi::OsString;

    use serde::{Deserialize, Deserializer, Serializer, ser::Error};

    pub fn serialize<S: Serializer>(args: &[OsString], s: S) -> Result<S::Ok, S::Error> {
        let text: Result<Vec<&str>, _> = args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.to_str()
                    .ok_or_else(|| S::Error::custom(format!("argument {i} is not UTF-8")))
            })
            .collect();
        s.collect_seq(text?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OsString>, D::Error> {
        Ok(Vec::<String>::deserialize(d)?
            .into_iter()
            .map(OsString::from)
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriageMode {
    Broad,
    Targeted,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentShim {
    None,
    OpenaiAgents,
    GeminiGoogleGenai,
}

impl AgentShim {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentShim::None => "none",
            AgentShim::OpenaiAgents => "openai-agents",
            AgentShim::GeminiGoogleGenai => "gemini-google-genai",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LaneArg {
    Baseline,
    Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    Audit,
    Enforce,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileLevel {
    Off,
    Basic,
    Detailed,
    Debug,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileOnFail {
    Off,
    Basic,
    Detailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelLayerMode {
    Auto,
    Process,
    Network,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LivenessLevel {
    Off,
    Basic,
    Strict,
}

#[derive(Debug, Clone, Args, serde::Serialize, serde::Deserialize)]
pub struct ProfileArgs {
    /// Profile detail: spans and copies of the trace outside the bundle.
    #[arg(
        long,
        env = "SPEC_RUNNER_PROFILE_LEVEL",
        value_enum,
        default_value = "off"
    )]
    pub profile_level: ProfileLevel,

    /// Where a copy of run-trace.json goes when profiling.
    #[arg(
        long,
        env = "SPEC_RUNNER_PROFILE_OUT",
        default_value = ".artifacts/run-trace.json",
        value_name = "PATH"
    )]
    pub profile_out: PathBuf,

    /// Where a copy of run-trace-summary.md goes when profiling.
    #[arg(
        long,
        env = "SPEC_RUNNER_PROFILE_SUMMARY_OUT",
        default_value = ".artifacts/run-trace-summary.md",
        value_name = "PATH"
    )]
    pub profile_summary_out: PathBuf,

    /// A heartbeat event every N ms while the run is live.
    #[arg(long, env = "SPEC_RUNNER_PROFILE_HEARTBEAT_MS", default_value = "1000",
          value_parser = parse_positive_ms, allow_negative_numbers = true, value_name = "MS")]
    pub profile_heartbeat_ms: u64,

    /// No progress for N ms → a `stall_warning` event (no kill).
    #[arg(long, env = "SPEC_RUNNER_PROFILE_STALL_THRESHOLD_MS", default_value = "10000",
          value_parser = parse_positive_ms, allow_negative_numbers = true, value_name = "MS")]
    pub profile_stall_threshold_ms: u64,

    /// Profile level of the copies a failing run writes even with `--profile-level off`.
    #[arg(
        long,
        env = "SPEC_RUNNER_PROFILE_ON_FAIL",
        value_enum,
        default_value = "basic"
    )]
    pub profile_on_fail: ProfileOnFail,
}

#[derive(Debug, Clone, Args, serde::Serialize, serde::Deserialize)]
pub struct LivenessArgs {
    /// off: no stall kills; basic: kill after stall-ms of silence; strict: also min events, io drain.
    #[arg(
        long,
        env = "SPEC_RUNNER_LIVENESS_LEVEL",
        value_enum,
        default_value = "basic"
    )]
    pub liveness_level: LivenessLevel,

    /// Silence (no output, no kernel or SDK event) that counts as a stall.
    #[arg(long, env = "SPEC_RUNNER_LIVENESS_STALL_MS", default_value = "30000",
          value_parser = parse_positive_ms, allow_negative_numbers = true, value_name = "MS")]
    pub liveness_stall_ms: u64,

    /// strict: fewer progress events than this in a stall-ms window is a stall.
    #[arg(long, env = "SPEC_RUNNER_LIVENESS_MIN_EVENTS", default_value = "1",
          value_parser = parse_min_events, allow_negative_numbers = true, value_name = "N")]
    pub liveness_min_events: u64,

    /// Emergency cap on the whole run, whatever the liveness level.
    #[arg(long, env = "SPEC_RUNNER_LIVENESS_HARD_CAP_MS", default_value = "1800000",
          value_parser = parse_positive_ms, allow_negative_numbers = true, value_name = "MS")]
    pub liveness_hard_cap_ms: u64,

    /// Time between SIGTERM and SIGKILL when vigil kills a run.
    #[arg(long, env = "SPEC_RUNNER_LIVENESS_KILL_GRACE_MS", default_value = "5000",
          value_parser = parse_positive_ms, allow_negative_numbers = true, value_name = "MS")]
    pub liveness_kill_grace_ms: u64,
}

#[derive(Debug, Clone, Args, serde::Serialize, serde::Deserialize)]
pub struct GateArgs {
    /// Stop a gate at its first failing step (default).
    #[arg(long, env = "SPEC_RUNNER_FAIL_FAST", default_value = "true", num_args = 0..=1,
          default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub fail_fast: bool,

    /// Run every step even after a failure (disables --fail-fast, and wins over
    /// SPEC_RUNNER_FAIL_FAST: a flag wins over the environment).
    #[arg(long)]
    pub continue_on_fail: bool,
}

impl GateArgs {
    pub fn fail_fast_enabled(&self) -> bool {
        self.fail_fast && !self.continue_on_fail
    }
}

/// Milliseconds: a whole decimal number ≥ 1. Zero is refused because every ms setting is an
/// interval or threshold for which zero means "fire continuously".
fn parse_positive_ms(s: &str) -> Result<u64, String> {
    parse_whole(s, "milliseconds")
}

fn parse_min_events(s: &str) -> Result<u64, String> {
    parse_whole(s, "events")
}

pub(super) fn parse_whole(s: &str, unit: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a whole number of {unit} ≥ 1"));
    }
    match s.parse::<u64>() {
        Ok(0) => Err(format!("expected a whole number of {unit} ≥ 1, got 0")),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("expected a whole number of {unit} ≥ 1 (too large)")),
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_whole(s, "bytes")
}

pub(super) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("expected a duration > 0 such as 90s, 1500ms or 2m".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{e}; expected a duration such as 90s, 1500ms or 2m"
        )),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected one of true, false, 1, 0, yes, no, on, off".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_values_are_whole_and_positive() {
        assert_eq!(parse_positive_ms("1500"), Ok(1500));
        assert!(parse_positive_ms("0").is_err());
        assert!(parse_positive_ms("-5").is_err());
        assert!(parse_positive_ms("1.5").is_err());
        assert!(parse_positive_ms("").is_err());
        assert!(parse_positive_ms("99999999999999999999999").is_err());
    }

    #[test]
    fn bools_accept_common_spellings() {
        assert_eq!(parse_bool("FALSE"), Ok(false));
        assert_eq!(parse_bool("on"), Ok(true));
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
