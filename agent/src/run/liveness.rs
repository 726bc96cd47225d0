//! Liveness (CONTRACT.md §2) as pure logic over monotonic timestamps: the run's state feeds it
//! the clock and the progress log and acts on what it returns, so every rule is testable without
//! real time.

use std::collections::VecDeque;
use std::time::Duration;

use super::spec::LivenessConfig;
use crate::cli::LivenessLevel;

/// Reason tokens, exactly as CONTRACT.md §3 spells them.
pub mod reason {
    pub const SUBPROCESS_WAIT: &str = "timeout.subprocess.wait";
    pub const IO_DRAIN: &str = "timeout.subprocess.io_drain";
    pub const CASE_HARNESS: &str = "timeout.case.harness";
    pub const CASE_CHAIN: &str = "timeout.case.chain";
    pub const NO_PROGRESS: &str = "stall.runner.no_progress";
    pub const NO_OUTPUT_NO_EVENT: &str = "stall.subprocess.no_output_no_event";
    pub const HARD_CAP: &str = "timeout.hard_cap.emergency";
    pub const KILL_TERM: &str = "watchdog.kill.term";
    pub const KILL_KILLED: &str = "watchdog.kill.killed";
}

/// Most recent progress timestamps kept for the strict min-events rule. A `--liveness-min-events`
/// above this is evaluated as this many (documented in the README).
pub const MIN_EVENTS_WINDOW_CAP: u64 = 65_536;

/// Progress: every output chunk, kernel batch or SDK event, recorded by the run's state (which
/// owns it: no lock, no sharing) at the monotonic instant it was handled.
#[derive(Debug)]
pub struct Progress {
    last_ns: Option<u64>,
    count: u64,
    recent: VecDeque<u64>,
    keep: usize,
}

/// What the liveness rules need from the progress log at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressSnapshot {
    pub last_ns: Option<u64>,
    pub count: u64,
    /// Timestamp of the k-th most recent progress event (k = min events), if there were k.
    pub kth_recent_ns: Option<u64>,
}

impl Progress {
    pub fn new(min_events: u64) -> Self {
        let keep = usize::try_from(min_events.clamp(1, MIN_EVENTS_WINDOW_CAP)).unwrap_or(1);
        Progress {
            last_ns: None,
            count: 0,
            recent: VecDeque::with_capacity(keep.min(1024)),
            keep,
        }
    }

    pub fn record(&mut self, now_ns: u64) {
        self.record_n(now_ns, 1);
    }

    /// `n` progress events at `now_ns` (coalesced output chunks).
    pub fn record_n(&mut self, now_ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.last_ns = Some(self.last_ns.map_or(now_ns, |l| l.max(now_ns)));
        self.count += n;
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(self.keep);
        while self.recent.len() + n > self.keep {
            self.recent.pop_front();
        }
        self.recent.extend(std::iter::repeat_n(now_ns, n));
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            last_ns: self.last_ns,
            count: self.count,
            kth_recent_ns: (self.recent.len() == self.keep)
                .then(|| self.recent.front().copied())
                .flatten(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No progress for the profile stall threshold: a warning, no kill.
    StallWarning { silent_ms: u64 },
    /// The watchdog must kill the run, for this reason token.
    Kill {
        reason: &'static str,
        silent_ms: u64,
    },
    /// Main child exited, pipes still open after the grace, liveness not strict: the leftover
    /// processes are cleaned up without failing the run.
    DrainCleanup,
}

/// The liveness state of one run.
#[derive(Debug)]
pub struct Liveness {
    cfg: LivenessConfig,
    profile_stall_ns: u64,
    started_ns: u64,
    /// The silent period (keyed by its last progress) already warned about.
    warned_for: Option<Option<u64>>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Liveness {
    pub fn new(cfg: LivenessConfig, profile_stall: Duration, started_ns: u64) -> Self {
        Liveness {
            cfg,
            profile_stall_ns: ns(profile_stall),
            started_ns,
            warned_for: None,
        }
    }

    /// The step and chain timeouts that are set, with their reason tokens. They hold while the
    /// main child runs; after it exited, the io-drain rules apply.
    fn timeouts(&self) -> impl Iterator<Item = (Duration, &'static str)> + '_ {
        [
            (self.cfg.step_timeout, self.cfg.step_timeout_reason),
            (self.cfg.chain_timeout, reason::CASE_CHAIN),
        ]
        .into_iter()
        .filter_map(|(t, why)| t.map(|t| (t, why)))
    }

    fn silent_since(&self, p: ProgressSnapshot) -> u64 {
        p.last_ns.unwrap_or(self.started_ns).max(self.started_ns)
    }

    /// Evaluate the rules at `now`. `main_exited_ns` is when the main child was reaped;
    /// `pipes_open` whether any output pipe still has a writer.
    pub fn check(
        &mut self,
        now: u64,
        p: ProgressSnapshot,
        main_exited_ns: Option<u64>,
        pipes_open: bool,
    ) -> Vec<Verdict> {
        let mut out = Vec::new();
        let since = self.silent_since(p);
        let silent_ms = now.saturating_sub(since) / 1_000_000;
        if now >= self.started_ns.saturating_add(ns(self.cfg.hard_cap)) {
            out.push(Verdict::Kill {
                reason: reason::HARD_CAP,
                silent_ms,
            });
            return out;
        }
        if main_exited_ns.is_none() {
            for (timeout, why) in self.timeouts() {
                if now >= self.started_ns.saturating_add(ns(timeout)) {
                    out.push(Verdict::Kill {
                        reason: why,
                        silent_ms,
                    });
                    return out;
                }
            }
        }
        if let Some(exit) = main_exited_ns {
            if pipes_open && now >= exit.saturating_add(ns(self.cfg.kill_grace)) {
                out.push(match self.cfg.level {
                    LivenessLevel::Strict => Verdict::Kill {
                        reason: reason::IO_DRAIN,
                        silent_ms,
                    },
                    _ => Verdict::DrainCleanup,
                });
            }
            return out;
        }
        if now.saturating_sub(since) >= self.profile_stall_ns && self.warned_for != Some(p.last_ns)
        {
            self.warned_for = Some(p.last_ns);
            out.push(Verdict::StallWarning { silent_ms });
        }
        if self.cfg.level == LivenessLevel::Off {
            return out;
        }
        let stall = ns(self.cfg.stall);
        if now.saturating_sub(since) >= stall {
            out.push(Verdict::Kill {
                reason: reason::NO_OUTPUT_NO_EVENT,
                silent_ms,
            });
        } else if self.cfg.level == LivenessLevel::Strict && self.cfg.min_events > 1 {
            // Fewer than min_events progress events in the last stall window (after the run has
            // lived one full window).
            let window_start = now.saturating_sub(stall);
            let enough = p.kth_recent_ns.is_some_and(|k| k >= window_start);
            if now >= self.started_ns.saturating_add(stall) && !enough {
                out.push(Verdict::Kill {
                    reason: reason::NO_PROGRESS,
                    silent_ms,
                });
            }
        }
        out
    }

    /// The next instant at which `check` could return something new.
    pub fn next_deadline(
        &self,
        p: ProgressSnapshot,
        main_exited_ns: Option<u64>,
        pipes_open: bool,
    ) -> u64 {
        let mut next = self.started_ns.saturating_add(ns(self.cfg.hard_cap));
        if let Some(exit) = main_exited_ns {
            if pipes_open {
                next = next.min(exit.saturating_add(ns(self.cfg.kill_grace)));
            }
            return next;
        }
        for (timeout, _) in self.timeouts() {
            next = next.min(self.started_ns.saturating_add(ns(timeout)));
        }
        let since = self.silent_since(p);
        if self.warned_for != Some(p.last_ns) {
            next = next.min(since.saturating_add(self.profile_stall_ns));
        }
        if self.cfg.level != LivenessLevel::Off {
            let stall = ns(self.cfg.stall);
            next = next.min(since.saturating_add(stall));
            if self.cfg.level == LivenessLevel::Strict && self.cfg.min_events > 1 {
                let base = p
                    .kth_recent_ns
                    .unwrap_or(self.started_ns)
                    .max(self.started_ns);
                next = next.min(
                    base.saturating_add(stall)
                        .max(self.started_ns.saturating_add(stall)),
                );
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn cfg(level: LivenessLevel, min_events: u64) -> LivenessConfig {
        LivenessConfig {
            level,
            stall: Duration::from_millis(1000),
            min_events,
            hard_cap: Duration::from_millis(10_000),
            kill_grace: Duration::from_millis(500),
            step_timeout: None,
            step_timeout_reason: reason::SUBPROCESS_WAIT,
            chain_timeout: None,
        }
    }

    #[test]
    fn step_and_chain_timeouts_fire_while_the_child_runs() {
        let mut c = cfg(LivenessLevel::Off, 1);
        c.step_timeout = Some(Duration::from_millis(700));
        c.chain_timeout = Some(Duration::from_millis(400));
        let mut l = Liveness::new(c, Duration::from_secs(60), 0);
        let p = snap(Some(100 * MS), 1, Some(100 * MS));
        assert_eq!(l.next_deadline(p, None, true), 400 * MS);
        assert_eq!(l.check(399 * MS, p, None, true), vec![]);
        assert_eq!(
            l.check(400 * MS, p, None, true),
            vec![Verdict::Kill {
                reason: reason::CASE_CHAIN,
                silent_ms: 300
            }]
        );
        assert_eq!(
            l.check(700 * MS, p, None, true),
            vec![Verdict::Kill {
                reason: reason::SUBPROCESS_WAIT,
                silent_ms: 600
            }],
            "when both have passed, the step's own timeout is named"
        );
        assert_eq!(
            l.check(800 * MS, p, Some(750 * MS), false),
            vec![],
            "after the child exited, timeouts no longer apply"
        );
    }

    fn snap(last: Option<u64>, count: u64, kth: Option<u64>) -> ProgressSnapshot {
        ProgressSnapshot {
            last_ns: last,
            count,
            kth_recent_ns: kth,
        }
    }

    #[test]
    fn basic_kills_after_silence_not_before() {
        let mut l = Liveness::new(cfg(LivenessLevel::Basic, 1), Duration::from_millis(300), 0);
        let p = snap(Some(200 * MS), 1, Some(200 * MS));
        assert_eq!(
            l.next_deadline(p, None, true),
            500 * MS,
            "stall warning first"
        );
        assert_eq!(l.check(499 * MS, p, None, true), vec![]);
        assert_eq!(
            l.check(500 * MS, p, None, true),
            vec![Verdict::StallWarning { silent_ms: 300 }]
        );
        assert_eq!(
            l.check(600 * MS, p, None, true),
            vec![],
            "warned once per silent period"
        );
        assert_eq!(l.next_deadline(p, None, true), 1200 * MS);
        assert_eq!(
            l.check(1200 * MS, p, None, true),
            vec![Verdict::Kill {
                reason: reason::NO_OUTPUT_NO_EVENT,
                silent_ms: 1000
            }]
        );
    }

    #[test]
    fn off_never_stall_kills_but_hard_cap_holds() {
        let mut l = Liveness::new(cfg(LivenessLevel::Off, 1), Duration::from_millis(300), 0);
        let p = snap(None, 0, None);
        let v = l.check(5000 * MS, p, None, true);
        assert!(
            v.iter().all(|v| !matches!(v, Verdict::Kill { .. })),
            "{v:?}"
        );
        assert_eq!(
            l.check(10_000 * MS, p, None, true),
            vec![Verdict::Kill {
                reason: reason::HARD_CAP,
                silent_ms: 10_000
            }]
        );
    }

    #[test]
    fn strict_counts_events_in_the_window() {
        let mut l = Liveness::new(cfg(LivenessLevel::Strict, 3), Duration::from_secs(100), 0);
        // Progress keeps trickling (last at 1900ms) but the 3rd most recent is at 500ms:
        // only two events inside (900, 1900].
        let p = snap(Some(1900 * MS), 5, Some(500 * MS));
        assert_eq!(l.next_deadline(p, None, true), 1500 * MS);
        assert_eq!(
            l.check(1900 * MS, p, None, true),
            vec![Verdict::Kill {
                reason: reason::NO_PROGRESS,
                silent_ms: 0
            }]
        );
        let busy = snap(Some(1900 * MS), 9, Some(1800 * MS));
        assert_eq!(l.check(1900 * MS, busy, None, true), vec![]);
        // The first window is never judged before it is complete.
        assert_eq!(
            l.check(900 * MS, snap(Some(800 * MS), 1, None), None, true),
            vec![]
        );
    }

    #[test]
    fn io_drain_kills_only_under_strict() {
        let p = snap(Some(100 * MS), 1, Some(100 * MS));
        let mut strict = Liveness::new(cfg(LivenessLevel::Strict, 1), Duration::from_secs(100), 0);
        assert_eq!(strict.next_deadline(p, Some(200 * MS), true), 700 * MS);
        assert_eq!(strict.check(699 * MS, p, Some(200 * MS), true), vec![]);
        assert_eq!(
            strict.check(700 * MS, p, Some(200 * MS), true),
            vec![Verdict::Kill {
                reason: reason::IO_DRAIN,
                silent_ms: 600
            }]
        );
        assert_eq!(
            strict.check(900 * MS, p, Some(200 * MS), false),
            vec![],
            "pipes closed: nothing to do"
        );
        let mut basic = Liveness::new(cfg(LivenessLevel::Basic, 1), Duration::from_secs(100), 0);
        assert_eq!(
            basic.check(700 * MS, p, Some(200 * MS), true),
            vec![Verdict::DrainCleanup]
        );
    }

    #[test]
    fn progress_keeps_the_kth_most_recent() {
        let mut log = Progress::new(3);
        for t in [10, 20, 30, 40] {
            log.record(t);
        }
        assert_eq!(log.snapshot(), snap(Some(40), 4, Some(20)));
        log.record_n(50, 2);
        assert_eq!(log.snapshot(), snap(Some(50), 6, Some(40)));
        log.record_n(60, 5);
        assert_eq!(
            log.snapshot(),
            snap(Some(60), 11, Some(60)),
            "coalesced chunks fill the window"
        );
        let one = Progress::new(1);
        assert_eq!(one.snapshot(), snap(None, 0, None));
    }
}
