//! A run's setup, before supervision: the child's environment, the bundle (an unwritable
//! output directory fails here, before anything runs), the run cgroup — created, or for a
//! watch the existing one — with its guard, and the kernel source watching the cgroup before
//! anything runs in it. Then the supervisor takes over and, at the end, finishes the run.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::sync::Arc;

use serde_json::json;

use super::cgroup::{self, RunCgroup};
use super::guard::Guard;
use super::host::RunHost;
use super::recorder::{Opened, RunRecorder};
use super::spec::RunSpec;
use super::supervisor::{RunResult, RunSpans, SetupError, Supervisor};
use super::tee::Fence;
use crate::cli::KernelLayerMode;
use crate::clock;
use crate::evidence::events::EventKind;
use crate::evidence::files;
use crate::evidence::trace::span;
use crate::kernel::KernelLayer;
use crate::kernel::sensor::Scope;

/// Run standalone: this process's environment, stdio, signals and its own sensor.
pub async fn run(spec: RunSpec) -> Result<RunResult, SetupError> {
    run_hosted(spec, RunHost::Standalone).await
}

/// Run for `host` (standalone, or a daemon's client).
pub async fn run_hosted(spec: RunSpec, mut host: RunHost) -> Result<RunResult, SetupError> {
    let mut controls = host.controls().map_err(SetupError::Signals)?;
    let out = match &mut host {
        RunHost::Daemon(c) => c.out.take(),
        RunHost::Standalone => None,
    };
    let started_ns = clock::now_ns();
    let run_id = spec.run_id.to_string();

    // The child's environment as vigil sets it (a plan step's own variables over vigil's).
    let lossy = |(k, v): (OsString, OsString)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    };
    // Read once: the child starts from it, and the trace profiles it.
    let base_env = host.base_env();
    let mut env: Vec<(String, String)> = base_env.iter().cloned().map(lossy).collect();
    for (k, v) in spec.env.iter().cloned().map(lossy) {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    // Bundle first: an unwritable output directory fails here, before anything runs.
    let (rec, Opened { total, dispatch }) =
        RunRecorder::create(&spec, out, started_ns, &spec.argv_lossy(), &env)?;
    let setup = rec
        .tree
        .open_at(span::CASE_HARNESS, Some(&total), started_ns);
    rec.bundle.write_plain(
        files::RUN_TRACE,
        &serde_json::to_vec_pretty(&rec.trace).unwrap_or_default(),
    )?;

    let mut notes = Vec::new();
    if let (Some(t), Some(src)) = (spec.liveness.step_timeout, &spec.timeout_source) {
        notes.push(format!("step timeout {} ms ({src})", t.as_millis()));
    }
    if let Some(t) = spec.liveness.chain_timeout {
        notes.push(format!(
            "chain timeout {} ms (contract budget for `case.chain`)",
            t.as_millis()
        ));
    }
    let mount = cgroup::cgroup2_mount()?;
    let parent = cgroup::resolve_parent(&mount, &spec.cgroup_parent)?;
    // A watch observes a cgroup someone else made: nothing of vigil's to sweep, and no guard
    // (vigil dying must not kill the job it watched). A daemon swept once, at its start, and
    // its guard covers its runs: a sweep per run would be a readdir and a /proc read per
    // sibling before every child starts.
    let watched = match &spec.watch {
        Some(w) => Some(RunCgroup::existing(&mount, &w.cgroup)?),
        None => None,
    };
    let stale = match (&watched, host.own_guard()) {
        (None, true) => cgroup::sweep_stale(&parent),
        _ => Vec::new(),
    };
    for stale in stale {
        let msg = format!(
            "removed stale run cgroup {} (owner vigil pid {} gone; runs {:?}; {} processes killed{})",
            stale.dir.display(),
            stale.owner_pid,
            stale.runs,
            stale.processes_killed,
            if stale.removed {
                ""
            } else {
                "; removal failed"
            }
        );
        host.say(&msg);
        notes.push(msg);
    }
    // The guard starts before the cgroup exists, so there is no moment at which a killed vigil
    // could leave a cgroup nobody will remove.
    let guard = match host.own_guard() && watched.is_none() {
        true => Some(Guard::spawn(&cgroup::owner_dir(&parent)).map_err(SetupError::Guard)?),
        false => None,
    };
    let created = match (watched, host.own_guard()) {
        (Some(cg), _) => Ok(cg),
        (None, true) => RunCgroup::create(&parent, &run_id),
        (None, false) => RunCgroup::create_shared(&parent, &run_id),
    };
    let cg = match created {
        Ok(cg) => cg,
        Err(e) => {
            if let Some(g) = guard {
                g.release();
            }
            return Err(e.into());
        }
    };
    let mut rec = rec;
    rec.trace.cgroup = Some(json!({"path": cg.path().display().to_string(), "id": cg.id()}));
    setup.close_now("passed", json!({"phase": "setup"}));

    let chain = rec.tree.open(span::CASE_CHAIN, Some(&total));
    let case = rec.tree.open(span::CASE_RUN, Some(&chain));
    let mut spans = RunSpans {
        total,
        dispatch: Some(dispatch),
        chain,
        case,
    };
    let started = json!({"command": rec.trace.command, "args": rec.trace.args, "cgroup": rec.trace.cgroup, "vigil_pid": std::process::id(),
               "mode": host.mode().as_str(),
               // What ${WORKSPACE}, ${HOME} and ${TMPDIR} meant for this run (for `vigil policy suggest`).
               "policy_vars": spec.vars});
    rec.events.emit(EventKind::RunStarted, None, started);

    let mut sup = Supervisor {
        spec: &spec,
        host: &host,
        cg: &cg,
        rec,
        notes,
        fence: Arc::new(Fence::default()),
        escalation: None,
        cpu_samples: VecDeque::new(),
        policy: None,
        network_mechanism: None,
        cgroup_mount: mount,
        child_env: Vec::new(),
        base_env,
        sdk: None,
        sdk_stats: None,
        watch_health: None,
        steps: spec
            .watch
            .as_ref()
            .and_then(|w| w.steps_parent)
            .map(|p| super::steps::StepTracker::new(p, super::steps::github_action)),
    };
    sup.rec
        .bundle
        .space()
        .set_evidence_max(spec.evidence_max_bytes);
    // The sensor watches the run's cgroup before the child exists: its first exec is seen.
    let scope = match spec.kernel_layer {
        KernelLayerMode::Auto => Some(Scope::Full),
        KernelLayerMode::Process => Some(Scope::Process),
        KernelLayerMode::Network => Some(Scope::Network),
        KernelLayerMode::Off => None,
    };
    let layer = sup.rec.bundle.path(files::KERNEL_LAYER);
    let space = sup.rec.bundle.space().clone();
    // A watched cgroup may already have cgroups beneath it: they are watched too.
    let beneath = || match spec.watch {
        Some(_) => cg.descendant_ids(),
        None => Vec::new(),
    };
    let outcome = match (&host, scope) {
        (RunHost::Daemon(c), Some(scope)) => {
            let shared = match &c.hub {
                Some(hub) => hub
                    .register(
                        (cg.id(), cg.path()),
                        &beneath,
                        scope,
                        sup.rec.redactor.clone(),
                        &layer,
                        space,
                    )
                    .map_err(|e| e.to_string()),
                None => Err("the daemon has no sensor (see its log)".to_string()),
            };
            match shared {
                Ok(source) => sup.supervise(&mut spans, &mut controls, source).await,
                Err(e) => {
                    let absent = KernelLayer::absent(&format!("kernel layer unavailable: {e}"));
                    sup.supervise(&mut spans, &mut controls, absent).await
                }
            }
        }
        _ => {
            let kernel = KernelLayer::start(scope, (cg.id(), cg.path()), &beneath, &layer, space);
            sup.supervise(&mut spans, &mut controls, kernel).await
        }
    };
    let result = sup.finish(outcome, spans, guard, started_ns);
    Ok(result)
}
