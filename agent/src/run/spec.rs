//! The validated description of one run. Everything here was checked before anything started:
//! a `RunSpec` that exists can be run.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{
    AgentShim, KernelLayerMode, LaneArg, LivenessLevel, PolicyMode, ProfileLevel, ProfileOnFail,
    RunArgs,
};
use crate::contracts::{Registry, RegistryError};
use crate::evidence::trace::span;
use crate::policy::layer::{DecisionLane, PolicySpec};
use crate::policy::oracle::Vars;
use crate::policy::{Mode, Severity, parse as parse_policy};

/// A run id: non-empty, ASCII letters, digits, `_` and `-` only (CONTRACT.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    /// `run_` + a random 128-bit hex id.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        // The OS RNG failing is not something a run can work around; fall back to time+pid so a
        // run id is still unique on this host.
        if getrandom::fill(&mut bytes).is_err() {
            let seed = u128::from(crate::clock::now_ns()) << 32 | u128::from(std::process::id());
            bytes = seed.to_le_bytes();
        }
        RunId(format!("run_{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RunId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("run id is empty; accepted: ASCII letters, digits, '_' and '-'".into());
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "run id contains {c:?}; accepted: ASCII letters, digits, '_' and '-'"
            ));
        }
        Ok(RunId(s.to_string()))
    }
}

impl serde::Serialize for RunId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `--user UID[:GID]`; without a GID the child keeps the UID as its GID (like `setpriv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
}

impl FromStr for UserSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not UID[:GID]; accepted: numeric ids such as 65534 or 1000:1000");
        let (uid, gid) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let uid: u32 = uid.parse().map_err(|_| bad())?;
        let gid: u32 = match gid {
            Some(g) => g.parse().map_err(|_| bad())?,
            None => uid,
        };
        Ok(UserSpec { uid, gid })
    }
}

impl serde::Serialize for UserSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}:{}", self.uid, self.gid))
    }
}

impl<'de> serde::Deserialize<'de> for UserSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone)]
pub struct ProfileConfig {
    pub level: ProfileLevel,
    pub out: PathBuf,
    pub summary_out: PathBuf,
    pub heartbeat: Duration,
    pub stall_threshold: Duration,
    pub on_fail: ProfileOnFail,
}

#[derive(Debug, Clone)]
pub struct LivenessConfig {
    pub level: LivenessLevel,
    pub stall: Duration,
    pub min_events: u64,
    pub hard_cap: Duration,
    pub kill_grace: Duration,
    /// The step's own timeout (`--timeout`, else a contract budget).
    pub step_timeout: Option<Duration>,
    /// Its reason token: `timeout.subprocess.wait`, or `timeout.case.harness` for a plan
    /// step's setup and teardown.
    pub step_timeout_reason: &'static str,
    /// The whole chain's timeout (a `case.chain` budget): `timeout.case.chain`.
    pub chain_timeout: Option<Duration>,
}

/// Everything needed to run one command.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub run_id: RunId,
    pub out_dir: PathBuf,
    pub cgroup_parent: PathBuf,
    pub user: Option<UserSpec>,
    pub output_cap_bytes: u64,
    /// `--evidence-max-bytes`: the kernel and policy layers' bound.
    pub evidence_max_bytes: u64,
    pub kernel_layer: KernelLayerMode,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Working directory of the child (default: vigil's).
    pub cwd: Option<PathBuf>,
    /// Variables set for the child on top of vigil's environment.
    pub env: Vec<(OsString, OsString)>,
    pub profile: ProfileConfig,
    pub liveness: LivenessConfig,
    pub fail_fast: bool,
    pub policy: Option<PolicySpec>,
    /// What `${WORKSPACE}`, `${HOME}` and `${TMPDIR}` mean for this run, read once.
    pub vars: Vars,
    /// Contracts checked as the run's spans close.
    pub contracts: Arc<Registry>,
    /// A violated contract fails the run (exit 3 when the command succeeded).
    pub contracts_strict: bool,
    /// Where the step timeout came from, for health notes: `--timeout` or a contract budget.
    pub timeout_source: Option<String>,
    /// `--agent-shim`: the agent SDK the child uses.
    pub agent_shim: AgentShim,
    /// `vigil watch`: an existing cgroup instead of a child (None for `run`).
    pub watch: Option<crate::run::watch::WatchTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "--policy {file}: --lane and --policy-mode disagree; accepted: --lane baseline (not applied, audit) or --lane scenario (applied, enforce)"
    )]
    LaneConflict { file: String },
    #[error("--policy {file}: cannot read: {error}")]
    PolicyUnreadable { file: String, error: std::io::Error },
    #[error("--policy {first} ({errors} error(s); `vigil policy lint {file}` lists them all)")]
    PolicyInvalid {
        file: String,
        first: String,
        errors: usize,
    },
    #[error("--policy {file}: cannot enforce: {error}; accepted: --policy-mode audit")]
    Network {
        file: String,
        error: crate::policy::sockaddr::SockAddrError,
    },
    #[error("--policy {file}: cannot enforce: {error}; accepted: --policy-mode audit")]
    Landlock {
        file: String,
        error: crate::policy::landlock::LandlockError,
    },
    #[error("--contracts {dir}: {error}")]
    Contracts { dir: String, error: RegistryError },
    #[error("no command given; usage: vigil run [FLAGS] -- CMD [ARGS…]")]
    EmptyCommand,
    #[error(
        "--cgroup-parent {0:?} must not contain '..'; accepted: a path under the cgroup2 mount"
    )]
    CgroupParent(PathBuf),
}

/// What a run's flags point at, read by whoever asked for the run — as that user: a daemon
/// never opens a file a client named.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInputs {
    /// The text of `--policy`.
    pub policy: Option<String>,
    /// The files of `--contracts` as (name, text).
    pub contracts: Vec<(String, String)>,
    /// What `${WORKSPACE}`, `${HOME}` and `${TMPDIR}` mean for the requester.
    pub vars: Vars,
}

impl RunInputs {
    /// Read them as this process, for `args`.
    pub fn read(args: &RunArgs) -> Result<Self, SpecError> {
        let policy = match &args.policy {
            None => None,
            Some(file) => Some(std::fs::read_to_string(file).map_err(|error| {
                SpecError::PolicyUnreadable {
                    file: file.display().to_string(),
                    error,
                }
            })?),
        };
        let contracts =
            crate::contracts::registry::read_dir_texts(&args.contracts).map_err(|error| {
                SpecError::Contracts {
                    dir: args.contracts.display().to_string(),
                    error,
                }
            })?;
        Ok(RunInputs {
            policy,
            contracts,
            vars: Vars::of_this_process(),
        })
    }
}

/// Check a policy's text; the mode flag overrides the file's mode.
fn load_policy(
    file: &Path,
    text: &str,
    mode: Option<PolicyMode>,
    lane: Option<LaneArg>,
    vars: &Vars,
) -> Result<PolicySpec, SpecError> {
    let name = file.display().to_string();
    let parsed = parse_policy(text);
    let Some(mut policy) = parsed.policy else {
        let first = parsed
            .diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error)
            .map(|d| d.render(&name))
            .unwrap_or_default();
        return Err(SpecError::PolicyInvalid {
            file: name,
            first,
            errors: parsed.errors(),
        });
    };
    match mode {
        Some(PolicyMode::Audit) => policy.mode = Mode::Audit,
        Some(PolicyMode::Enforce) => policy.mode = Mode::Enforce,
        None => {}
    }
    // A lane fixes whether the policy is applied: baseline never, scenario always.
    let lane = match (lane, mode) {
        (Some(LaneArg::Baseline), Some(PolicyMode::Enforce))
        | (Some(LaneArg::Scenario), Some(PolicyMode::Audit)) => {
            return Err(SpecError::LaneConflict { file: name });
        }
        (Some(LaneArg::Baseline), _) => {
            policy.mode = Mode::Audit;
            DecisionLane::Baseline
        }
        (Some(LaneArg::Scenario), _) => {
            policy.mode = Mode::Enforce;
            DecisionLane::Scenario
        }
        (None, _) if policy.mode == Mode::Enforce => DecisionLane::Scenario,
        (None, _) => DecisionLane::Oracle,
    };
    let landlock = match policy.mode {
        Mode::Audit => None,
        Mode::Enforce => {
            // Never run a policy weaker than written: every part must be held, or none runs.
            for (list, rules) in [
                ("network.connect", &policy.connect),
                ("network.send", &policy.send),
            ] {
                crate::policy::sockaddr::entries(list, rules).map_err(|error| {
                    SpecError::Network {
                        file: name.clone(),
                        error,
                    }
                })?;
            }
            let plan = crate::policy::landlock::plan(&policy, vars).map_err(|error| {
                SpecError::Landlock {
                    file: name.clone(),
                    error,
                }
            })?;
            Some(Arc::new(plan))
        }
    };
    Ok(PolicySpec {
        file: file.to_path_buf(),
        policy,
        landlock,
        network_hooks_only: false,
        lane,
    })
}

impl RunSpec {
    /// Whether anyone can read per-process spans: a detailed profile (or a detailed copy on
    /// failure), or a contract on `subprocess.exec` / `subprocess.wait`. Otherwise building
    /// them is work thrown away at export (4,000 spans, 15 ms, for a 2,000-process run).
    pub fn wants_process_spans(&self) -> bool {
        super::recorder::spec_detailed(self.profile.level)
            || (self.profile.level == ProfileLevel::Off
                && self.profile.on_fail == ProfileOnFail::Detailed)
            || [
                crate::evidence::trace::span::SUBPROCESS_EXEC,
                crate::evidence::trace::span::SUBPROCESS_WAIT,
            ]
            .iter()
            .any(|s| !self.contracts.for_span(s).is_empty())
    }

    /// The spec of `args`, reading what they point at as this process.
    pub fn from_args(args: RunArgs) -> Result<Self, SpecError> {
        let inputs = RunInputs::read(&args)?;
        RunSpec::from_parts(args, inputs)
    }

    /// The spec of `args` with what they point at already read (by a daemon's client).
    pub fn from_parts(args: RunArgs, inputs: RunInputs) -> Result<Self, SpecError> {
        let mut command = args.command.into_iter();
        // A plan's steps bring their own commands.
        let program = match command.next() {
            Some(p) if !p.is_empty() => p,
            _ if args.plan.is_some() => OsString::new(),
            _ => return Err(SpecError::EmptyCommand),
        };
        if args
            .cgroup_parent
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(SpecError::CgroupParent(args.cgroup_parent));
        }
        let vars = inputs.vars;
        let policy = match (&args.policy, &inputs.policy) {
            (Some(file), Some(text)) => {
                Some(load_policy(file, text, args.policy_mode, args.lane, &vars)?)
            }
            (Some(file), None) => {
                return Err(SpecError::PolicyUnreadable {
                    file: file.display().to_string(),
                    error: std::io::Error::other("its text was not sent"),
                });
            }
            (None, _) => None,
        };
        let contracts =
            Registry::from_texts(&inputs.contracts).map_err(|error| SpecError::Contracts {
                dir: args.contracts.display().to_string(),
                error,
            })?;
        // A budget is the timeout only where the flags give none.
        let budget = |name: &str| contracts.budget_ms(name).map(Duration::from_millis);
        let (step_timeout, timeout_source) = match args.timeout {
            Some(t) => (Some(t), Some("--timeout".to_string())),
            None => match [span::CHECK_EXECUTE, span::SUBPROCESS_WAIT]
                .into_iter()
                .find_map(|name| budget(name).map(|b| (b, name)))
            {
                Some((b, name)) => (Some(b), Some(format!("contract budget for `{name}`"))),
                None => (None, None),
            },
        };
        let chain_timeout = budget(span::CASE_CHAIN);
        let ms = Duration::from_millis;
        Ok(RunSpec {
            run_id: args.run_id.unwrap_or_else(RunId::generate),
            out_dir: args.out,
            cgroup_parent: args.cgroup_parent,
            user: args.user,
            output_cap_bytes: args.output_cap_bytes,
            evidence_max_bytes: args.evidence_max_bytes,
            kernel_layer: args.kernel_layer,
            program,
            args: command.collect(),
            cwd: None,
            env: Vec::new(),
            profile: ProfileConfig {
                level: args.profile.profile_level,
                out: args.profile.profile_out,
                summary_out: args.profile.profile_summary_out,
                heartbeat: ms(args.profile.profile_heartbeat_ms),
                stall_threshold: ms(args.profile.profile_stall_threshold_ms),
                on_fail: args.profile.profile_on_fail,
            },
            liveness: LivenessConfig {
                level: args.liveness.liveness_level,
                stall: ms(args.liveness.liveness_stall_ms),
                min_events: args.liveness.liveness_min_events,
                hard_cap: ms(args.liveness.liveness_hard_cap_ms),
                kill_grace: ms(args.liveness.liveness_kill_grace_ms),
                step_timeout,
                step_timeout_reason: crate::run::liveness::reason::SUBPROCESS_WAIT,
                chain_timeout,
            },
            fail_fast: args.gate.fail_fast_enabled(),
            policy,
            vars,
            contracts: Arc::new(contracts),
            contracts_strict: args.contracts_strict,
            timeout_source,
            agent_shim: args.agent_shim,
            watch: None,
        })
    }

    /// The whole argv as lossy strings, for evidence (redacted before it is written).
    pub fn argv_lossy(&self) -> Vec<String> {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_spans_are_built_only_when_something_reads_them() {
        use clap::Parser;
        let empty = tempfile::tempdir().expect("tempdir");
        let on_wait = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            on_wait.path().join("c.yaml"),
            "contracts:\n  - id: quick\n    span: subprocess.wait\n    budget_ms: 5000\n",
        )
        .expect("write");
        let wants = |contracts: &Path, flags: &[&str]| {
            let mut argv = vec![
                "vigil",
                "run",
                "--contracts",
                contracts.to_str().expect("utf8"),
            ];
            argv.extend(flags);
            argv.extend(["--", "true"]);
            match crate::cli::Cli::try_parse_from(argv).expect("args").command {
                crate::cli::Command::Run(a) => {
                    RunSpec::from_args(*a).expect("spec").wants_process_spans()
                }
                _ => unreachable!("a run"),
            }
        };
        let none = empty.path();
        assert!(!wants(none, &["--profile-level", "off"]));
        assert!(!wants(
            none,
            &["--profile-level", "basic", "--profile-on-fail", "detailed"]
        ));
        assert!(wants(none, &["--profile-level", "detailed"]));
        assert!(wants(
            none,
            &["--profile-level", "off", "--profile-on-fail", "detailed"]
        ));
        assert!(wants(on_wait.path(), &["--profile-level", "off"]));
    }

    #[test]
    fn run_ids_follow_the_contract() {
        assert!("build_42-a".parse::<RunId>().is_ok());
        for bad in ["", "a:b", "a/b", "../x", "a b", "é"] {
            assert!(bad.parse::<RunId>().is_err(), "{bad:?} accepted");
        }
        let generated = RunId::generate();
        assert!(generated.as_str().starts_with("run_"));
        assert_eq!(generated.as_str().len(), 4 + 32);
        assert!(generated.as_str().parse::<RunId>().is_ok());
    }

    #[test]
    fn user_spec_parses_uid_and_gid() {
        assert_eq!(
            "65534".parse::<UserSpec>(),
            Ok(UserSpec {
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(
            "1000:100".parse::<UserSpec>(),
            Ok(UserSpec {
                uid: 1000,
                gid: 100
            })
        );
        assert!("nobody".parse::<UserSpec>().is_err());
        assert!("1:x".parse::<UserSpec>().is_err());
    }
}
