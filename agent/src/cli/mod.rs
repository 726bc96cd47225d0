//! The command-line surface: clap definitions, environment equivalents and exit codes.

mod args;
mod exit;
mod usage;

pub use args::{
    AgentShim, Cli, Command, DaemonArgs, ExportFormat, GateArgs, KernelLayerMode, LaneArg,
    LivenessArgs, LivenessLevel, PlanCommand, PolicyCommand, PolicyMode, ProfileArgs, ProfileLevel,
    ProfileOnFail, ReindexArgs, RunArgs, TriageMode,
};
pub use exit::ExitCode;
pub use usage::one_line_usage_error;
