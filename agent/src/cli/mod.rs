//! The command-line surface: clap definitions, environment equivalents and exit codes.

mod args;
mod commands;
mod exit;
mod usage;

pub use args::{
    AgentShim, CiCommand, Cli, Command, DaemonArgs, ExportFormat, GateArgs, KernelLayerMode,
    LaneArg, LivenessArgs, LivenessLevel, PlanCommand, PolicyCommand, PolicyMode, ProfileArgs,
    ProfileLevel, ProfileOnFail, ReindexArgs, RunArgs, TriageMode, WatchArgs,
};
pub use exit::ExitCode;
pub use usage::one_line_usage_error;

/// The current-thread runtime a command runs on; None (after one line on stderr) when it cannot
/// start, for the caller to exit 125.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("vigil: cannot start the runtime: {e}");
            None
        }
    }
}
