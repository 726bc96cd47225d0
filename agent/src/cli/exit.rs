//! Exit codes of `vigil run` (CONTRACT.md §4) and of the other commands.

/// Exit codes vigil itself chooses. A run otherwise exits with its child's code, or 128+N when
/// the child died of signal N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode;

impl ExitCode {
    /// Usage or configuration error; nothing was started.
    pub const USAGE: i32 = 2;
    /// `vigil validate` / `reindex --strict` found the bundle not committed or not intact.
    pub const INVALID_BUNDLE: i32 = 1;
    /// `vigil doctor`: this host cannot supervise runs at all (no cgroup v2).
    pub const HOST_UNSUPPORTED: i32 = 1;
    /// `--contracts-strict`: a contract was violated while the command itself succeeded (when
    /// it failed, its own code stands).
    pub const CONTRACT_VIOLATED: i32 = 3;
    /// vigil's watchdog or a timeout ended the run.
    pub const TIMEOUT: i32 = 124;
    /// vigil itself failed (cgroup, bundle).
    pub const VIGIL_FAILED: i32 = 125;
    /// The command exists but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;

    /// 128+N for death by signal N.
    pub const fn signal(sig: i32) -> i32 {
        128 + sig
    }
}
