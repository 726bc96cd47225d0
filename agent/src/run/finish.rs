//! The end of a run: spans closed, contracts settled, the one outcome concluded, health and
//! the trace assembled, the bundle committed (profile copies written even when the commit
//! fails), the run cgroup removed and its guard released.

use serde_json::json;

use super::dispatch::{PROCESS_SAMPLE, RunState};
use super::guard::Guard;
use super::host::RunHost;
use super::outcome::Outcome;
use super::supervisor::{Leftovers, RunResult, RunSpans, Supervised, Supervisor};
use crate::clock;
use crate::evidence::files;
use crate::evidence::health::{
    CgroupHealth, CorrelationClaim, KernelClaim, LostEvents, ObservationHealth, ObserverCost,
    PolicyClaim, SdkClaim, SdkHealth,
};
use crate::evidence::schema;
use crate::evidence::trace::{StepRow, span};
use crate::policy::layer::PolicyLayer;

impl Supervisor<'_> {
    /// Close the spans, settle the contracts, decide the outcome (in the state), assemble
    /// health and the trace, and commit the bundle.
    pub(super) fn finish(
        mut self,
        sup: Supervised,
        spans: RunSpans,
        guard: Option<Guard>,
        started_ns: u64,
    ) -> RunResult {
        let RunSpans {
            total, chain, case, ..
        } = spans;
        let teardown = self.rec.tree.open(span::CASE_HARNESS, Some(&total));
        // The one terminal outcome comes from the state (or from why the child never started);
        // a violated contract under --contracts-strict is the state's call too, below.
        let decide = |violated: bool| match (&sup.state, &sup.not_started) {
            (Some(state), _) => state.conclude(violated, self.spec.contracts_strict),
            (None, Some(o)) => o.clone(),
            (None, None) => Outcome::VigilFailed,
        };
        let mut outcome = decide(false);
        let ended_ns = clock::now_ns();
        let status = outcome.step_status().as_str();
        let (code, sig) = sup.main_exit.unwrap_or((None, None));
        let step_attrs = json!({"exit_code": code, "signal": sig});
        case.close(status, step_attrs.clone(), ended_ns);
        chain.close(status, step_attrs.clone(), ended_ns);

        let kill_mechanism = self
            .escalation
            .as_ref()
            .and_then(|e| e.mechanism)
            .map(|m| m.as_str().to_string());
        if let Err(e) = self.cg.remove() {
            self.notes.push(format!("run cgroup not removed: {e}"));
        }
        if let Some(g) = guard {
            g.release();
        }
        teardown.close_now("passed", json!({"phase": "teardown"}));
        total.close_now(outcome.status(), step_attrs);

        // Every span has closed, so every contract has been checked.
        let found = self.rec.settle_contracts(self.spec, &mut self.notes);
        let concluded = decide(!found.is_empty());
        if concluded != outcome {
            self.host.say(&format!(
                "{} contract obligation(s) violated; failing the run (--contracts-strict)",
                found.len()
            ));
            outcome = concluded;
        }
        let stall_phase = sup
            .state
            .as_ref()
            .and_then(|s| s.stall_phase())
            .map(String::from);
        self.rec.trace.summary.contract_violations = found;
        self.rec
            .finish(outcome.status(), outcome.reason(), outcome.exit_code());

        let step = StepRow {
            name: "main".into(),
            status: outcome.step_status(),
            exit_code: code,
            signal: sig,
            duration_ms: ended_ns.saturating_sub(started_ns) / 1_000_000,
            reason: outcome.reason().map(String::from),
            skip_reason: None,
            blocked_by: None,
            stall_detected: Some(sup.state.as_ref().is_some_and(RunState::stall_detected)),
            stall_phase: stall_phase.clone(),
            triage: None,
            bundle: None,
        };
        let failed = outcome.is_failure();
        self.rec.trace.summary.first_failure_step = failed.then(|| "main".to_string());
        // A watched CI job's steps are its rows; anything else has its one `main` step.
        self.rec.trace.summary.steps = match sup.step_rows.is_empty() {
            true => vec![step],
            false => sup.step_rows.clone(),
        };

        // The oracle saw every kernel event (the last drain came before this).
        let policy = self.policy.take().map(PolicyLayer::finish);
        let landlock = self.spec.policy.as_ref().and_then(|p| p.landlock.clone());
        let mut policy_mechanisms = Vec::new();
        if let Some(l) = &landlock {
            policy_mechanisms.extend(l.notes.iter().cloned());
        }
        policy_mechanisms.extend(self.network_mechanism.take());
        match &policy {
            Some(p) if p.write_error.is_none() => {
                if p.dropped_for_space > 0 {
                    self.notes.push(format!(
                        "policy {}: {} decisions not written: the disk ran short",
                        p.name, p.dropped_for_space
                    ));
                }
                self.notes.push(format!(
                    "policy {}: {} decisions, {} denials (layers/policy.ndjson){}",
                    p.name,
                    p.decisions,
                    p.would_deny,
                    if landlock.is_some() {
                        ""
                    } else {
                        "; audit: nothing was blocked"
                    }
                ));
                policy_mechanisms
                    .push("oracle: kernel events judged against the policy".to_string());
                if sup.kernel.kernel_layer != KernelClaim::Observed {
                    policy_mechanisms.push(
                        "partial evidence: the kernel layer was not fully observed (see probes)"
                            .into(),
                    );
                }
            }
            Some(p) => self.notes.push(format!(
                "policy layer not written: {}",
                p.write_error.clone().unwrap_or_default()
            )),
            None => {}
        }
        let hooks_only = self
            .spec
            .policy
            .as_ref()
            .is_some_and(|p| p.network_hooks_only);
        let policy_layer = match (&landlock, &policy) {
            (Some(_), _) => PolicyClaim::Enforced,
            (None, _) if hooks_only => PolicyClaim::Enforced,
            (None, Some(p)) if p.write_error.is_none() => PolicyClaim::Audited,
            _ => PolicyClaim::Absent,
        };

        let (sdk_lines, sdk_summary) = match self.sdk.take() {
            Some(l) => {
                let (bytes, summary) = l.finish();
                (Some(bytes), Some(summary))
            }
            None => (None, None),
        };
        let fenced = sup.state.as_ref().map_or(0, RunState::sdk_fenced);
        let sdk_health = self.sdk_stats.as_ref().map(|st| SdkHealth {
            shim: self.spec.agent_shim.as_str().into(),
            accepted: sdk_summary.map_or(0, |s| s.accepted),
            tool_calls: sdk_summary.map_or(0, |s| s.tool_calls),
            rejected: st
                .rejected()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .chain((fenced > 0).then(|| ("after_fence".to_string(), fenced)))
                .collect(),
            dropped_over_cap: st.dropped(),
            connections: st.connections(),
            refused_connections: st.refused_connections(),
        });
        // Self-reported only when something valid was actually reported.
        let sdk_layer = if sdk_health.as_ref().is_some_and(|h| h.accepted > 0) {
            SdkClaim::SelfReported
        } else {
            SdkClaim::Absent
        };
        let mut output = std::collections::BTreeMap::new();
        if sup.process_tree {
            output.insert("stdout".to_string(), sup.streams[0].health.clone());
            output.insert("stderr".to_string(), sup.streams[1].health.clone());
        }
        // Data past the evidence budget, from both layers it bounds.
        let mut downgraded = sup.kernel.downgraded.clone();
        if let Some(p) = &policy {
            downgraded.merge(&p.downgraded);
        }
        if downgraded.total() > 0 {
            self.notes.push(format!(
                "evidence budget: --evidence-max-bytes {} reached; {} data events downgraded to per-kind, per-target counts (downgraded_events_by_kind, downgraded_targets); control events were all written",
                self.spec.evidence_max_bytes,
                downgraded.total()
            ));
        }
        let health = ObservationHealth {
            schema: schema::OBSERVATION_HEALTH.into(),
            run_id: self.rec.trace.run_id.clone(),
            mode: self.host.mode().as_str().into(),
            downgraded_events_by_kind: downgraded.by_kind(),
            downgraded_targets: downgraded.targets(),
            unfollowed_events_by_kind: sup.kernel.unfollowed_by_kind.clone(),
            kernel_layer: sup.kernel.kernel_layer,
            cgroup_correlation: CorrelationClaim::Full,
            policy_layer,
            policy_mechanisms,
            sdk_layer,
            process_tree_source: sup.process_tree_source.into(),
            process_tree_sample_ms: PROCESS_SAMPLE.as_millis() as u64,
            lost_events: LostEvents {
                kernel_ring_buffer: sup.kernel.ring_lost,
                kernel_ring_buffer_by_kind: sup.kernel.ring_lost_by_kind.clone(),
                reader: sup.kernel.decode_errors,
                reader_by_kind: sup.kernel.decode_errors_by_kind.clone(),
                queues: self.rec.events.shed() + sup.kernel.queue_lost,
                trace_shed: self.rec.events.trace_shed(),
            },
            probes: sup.kernel.probes.clone(),
            cgroup: Some(CgroupHealth {
                path: self.cg.path().display().to_string(),
                id: self.cg.id(),
                kill_mechanism,
                controllers: self.cg.controllers(),
            }),
            output,
            sdk: sdk_health,
            observer: Some(ObserverCost::since(self.rec.observer_start)),
            spawned_by_vigil: self.spec.watch.is_none(),
            watch: self.watch_health.take(),
            notes: {
                let mut n = vec![match sup.process_tree_source {
                    "kernel" => "process tree (subprocess_state) from kernel events".to_string(),
                    _ => "process tree sampled from cgroup.procs and procfs".to_string(),
                }];
                n.extend(sup.kernel.notes.iter().cloned());
                n.extend(self.notes.iter().cloned());
                // A data layer that stopped (disk pressure, a write error) is said, not fatal:
                // the run's control evidence still commits.
                n.extend(self.rec.bundle.space().notes());
                n.extend(self.rec.events_error().map(|e| format!(
                    "events.ndjson is incomplete ({e}); run-trace.json holds the trace's copy of the events"
                )));
                n
            },
        };

        // Digests computed as the files were written: the captures, the kernel and policy
        // layers (the event log's is the recorder's); the commit reads back only the rest.
        let known: Vec<_> = sup
            .streams
            .iter()
            .filter_map(|r| r.capture.clone())
            .chain(
                sup.kernel
                    .layer_written
                    .as_ref()
                    .map(|w| w.digest(files::KERNEL_LAYER)),
            )
            .chain(
                policy
                    .as_ref()
                    .and_then(|p| p.layer_written.as_ref())
                    .map(|w| w.digest(files::POLICY_LAYER)),
            )
            .collect();
        let commit = self
            .rec
            .commit(&health, &known, &self.spec.profile, failed, || {
                // The layer exists (empty) from the setup: only lines are worth a rewrite.
                sdk_lines
                    .filter(|l| !l.is_empty())
                    .map(|l| (files::SDK_LAYER, l))
            });
        if let Err(e) = &commit {
            self.host.say(&format!(
                "bundle not committed: {e} (run outcome: {}, exit {})",
                outcome.status(),
                outcome.exit_code()
            ));
        }
        // A daemon's client gets its committed bundle: every file, never through a link.
        let mut commit = commit;
        if let (RunHost::Daemon(c), Ok(())) = (self.host, &commit)
            && let Err(e) = self.rec.bundle.give_to(c.owner.0, c.owner.1)
        {
            commit = Err(format!(
                "committed, but not given to uid {}: {e}",
                c.owner.0
            ));
        }
        if failed {
            self.host.say(&format!(
                "run {} {}{} (exit {}); bundle {}",
                self.rec.trace.run_id,
                outcome.status(),
                outcome
                    .reason()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                outcome.exit_code(),
                self.rec.bundle.shown().display()
            ));
        }
        RunResult {
            outcome,
            bundle_dir: self.rec.bundle.shown().to_path_buf(),
            commit_error: commit.err(),
            main_exit: (code, sig),
            stall_phase,
            counters: self.rec.counters.clone(),
            duration_ms: ended_ns.saturating_sub(started_ns) / 1_000_000,
            claims: health.claims(),
            copies: self.rec.copies.take().unwrap_or_default(),
            leftovers: Leftovers::new((self.rec, sup, policy)),
        }
    }
}
