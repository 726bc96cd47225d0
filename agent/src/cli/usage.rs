//! Usage errors as one line (CONTRACT.md §2): what was wrong, where it came from (flag or
//! environment variable) and what is accepted.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Flags whose value may come from the environment, with the variable that feeds them.
const ENV_OF_FLAG: &[(&str, &str)] = &[
    ("--out", "VIGIL_OUT"),
    ("--kernel-layer", "VIGIL_KERNEL_LAYER"),
    ("--profile-level", "SPEC_RUNNER_PROFILE_LEVEL"),
    ("--profile-out", "SPEC_RUNNER_PROFILE_OUT"),
    ("--profile-summary-out", "SPEC_RUNNER_PROFILE_SUMMARY_OUT"),
    ("--profile-heartbeat-ms", "SPEC_RUNNER_PROFILE_HEARTBEAT_MS"),
    (
        "--profile-stall-threshold-ms",
        "SPEC_RUNNER_PROFILE_STALL_THRESHOLD_MS",
    ),
    ("--profile-on-fail", "SPEC_RUNNER_PROFILE_ON_FAIL"),
    ("--liveness-level", "SPEC_RUNNER_LIVENESS_LEVEL"),
    ("--liveness-stall-ms", "SPEC_RUNNER_LIVENESS_STALL_MS"),
    ("--liveness-min-events", "SPEC_RUNNER_LIVENESS_MIN_EVENTS"),
    ("--liveness-hard-cap-ms", "SPEC_RUNNER_LIVENESS_HARD_CAP_MS"),
    (
        "--liveness-kill-grace-ms",
        "SPEC_RUNNER_LIVENESS_KILL_GRACE_MS",
    ),
    ("--fail-fast", "SPEC_RUNNER_FAIL_FAST"),
    ("--evidence-max-bytes", "VIGIL_EVIDENCE_MAX_BYTES"),
];

/// Render a clap error as a single line: `vigil: invalid value 'x' for --flag (env VAR): …`.
/// Returns `None` for help and version output, which clap prints itself.
pub fn one_line_usage_error(err: &clap::Error) -> Option<String> {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return None;
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid usage")
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    let mut line = format!("vigil: {first}");
    if let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) {
        let flag = arg.split_whitespace().next().unwrap_or(arg);
        if let Some((_, var)) = ENV_OF_FLAG.iter().find(|(f, _)| *f == flag) {
            line.push_str(&format!(" (flag {flag} or env {var})"));
        }
    }
    if let Some(ContextValue::Strings(values)) = err.get(ContextKind::ValidValue) {
        line.push_str(&format!("; accepted: {}", values.join(", ")));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn bad_level_is_one_line_naming_flag_env_and_values() {
        let err = Cli::try_parse_from(["vigil", "run", "--liveness-level", "loud", "--", "true"])
            .expect_err("must refuse");
        let line = one_line_usage_error(&err).expect("not help");
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--liveness-level"), "{line}");
        assert!(line.contains("SPEC_RUNNER_LIVENESS_LEVEL"), "{line}");
        assert!(line.contains("off, basic, strict"), "{line}");
    }

    #[test]
    fn zero_grace_is_refused_in_one_line() {
        let err = Cli::try_parse_from([
            "vigil",
            "run",
            "--liveness-kill-grace-ms",
            "0",
            "--",
            "true",
        ])
        .expect_err("must refuse");
        let line = one_line_usage_error(&err).expect("not help");
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--liveness-kill-grace-ms"), "{line}");
        assert!(line.contains("≥ 1"), "{line}");
    }
}
