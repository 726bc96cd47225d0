//! The arguments of the commands beside `run`: the daemon's flags, export formats, plan
//! subcommands.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::args::parse_whole;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The socket clients connect to.
    #[arg(
        long,
        env = "VIGIL_DAEMON_SOCKET",
        default_value = "/run/vigil/vigil.sock",
        value_name = "PATH"
    )]
    pub socket: PathBuf,

    /// Group whose members may request runs (socket mode 0660); without such a group the
    /// socket is root's only (0600).
    #[arg(long, default_value = "vigil", value_name = "GROUP")]
    pub socket_group: String,

    /// Runs at once (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_runs: Option<usize>,

    /// Requests that may wait for a run slot; past it a request is rejected (`queue_full`).
    #[arg(long, default_value = "32", value_name = "N", value_parser = parse_queue)]
    pub queue: usize,

    /// Runs one uid may have active or queued at once (`uid_limit` past it; default: no limit
    /// beyond --max-runs plus --queue).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_runs_per_uid: Option<usize>,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// cgroup v2 parent for run cgroups, relative to the cgroup2 mount or absolute under it.
    #[arg(long, default_value = "vigil", value_name = "PATH")]
    pub cgroup_parent: PathBuf,
}

fn parse_count(s: &str) -> Result<usize, String> {
    parse_whole(s, "runs").map(|n| n as usize)
}

fn parse_queue(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map_err(|_| "expected a whole number of requests ≥ 0".to_string())
}

/// `vigil watch`: an existing cgroup, when to stop, and the run flags that apply to a watch.
#[derive(Debug, Clone, Args, serde::Serialize, serde::Deserialize)]
pub struct WatchArgs {
    /// The cgroup to observe (and everything beneath it): relative to the cgroup2 mount or
    /// absolute under it.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,

    /// End when the cgroup holds no process any more (always true; the flag says it aloud).
    #[arg(long, conflicts_with = "duration")]
    pub until_empty: bool,

    /// End after this long (`90s`, `10m`), or earlier when the cgroup empties. Ending a watch
    /// never kills anything (`--timeout` does).
    #[arg(long, value_name = "DURATION", value_parser = super::args::parse_duration)]
    pub duration: Option<std::time::Duration>,

    /// Write the SDK socket's path to FILE once the watch is active (vigil does not set the
    /// watched processes' environment: they read it from there into `VIGIL_SDK_SOCKET`).
    #[arg(long, value_name = "FILE")]
    pub sdk_announce: Option<PathBuf>,

    /// The run flags; those that only make sense for a child vigil spawns (`--user`, `--plan`,
    /// a command, `--agent-shim`, `--lane`) are refused.
    #[command(flatten)]
    pub run: super::args::RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Perfetto protobuf trace (.pftrace) of TrackEvent packets.
    Perfetto,
    /// Trace Event Format JSON (chrome://tracing, Perfetto's JSON importer).
    ChromeTrace,
    /// OTLP/JSON ExportTraceServiceRequest.
    OtlpJson,
    /// JUnit XML: a testcase per step.
    Junit,
    /// One self-contained HTML report (no fetch, no external script).
    Html,
    /// Markdown job summary for GitHub Actions (`$GITHUB_STEP_SUMMARY`, ≤ 1 MiB).
    GithubSummary,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// The checks of `run --plan` without running: `file:line:column` errors, exit 2.
    Lint {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}
