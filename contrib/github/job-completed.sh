#!/bin/sh
# ACTIONS_RUNNER_HOOK_JOB_COMPLETED for a self-hosted GitHub Actions runner:
# end the job's watch, commit its bundle, append the job summary to $GITHUB_STEP_SUMMARY.
#
# Fail open: whatever happens (no vigil, no daemon, a refusal, no answer within 5 s) this
# prints one ::warning:: line and exits 0 — a job never fails because of vigil.
# VIGIL names the binary (default: vigil on PATH); the hook's flags may follow ("$@"), and
# VIGIL_DAEMON_SOCKET, VIGIL_OUT and VIGIL_POLICY apply. Setup: README, "CI runners".
vigil="${VIGIL:-vigil}"
if ! command -v "$vigil" >/dev/null 2>&1; then
    echo "::warning title=vigil::$vigil is not installed; the job is not watched"
    exit 0
fi
"$vigil" ci github job-completed "$@"
exit 0
