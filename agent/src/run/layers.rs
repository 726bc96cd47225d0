//! The run's layers as the supervisor starts and feeds them: the policy oracle, network
//! enforcement, the SDK socket and its drain, the output tees; and the consumers of each
//! kernel drain that the shell holds (policy, SDK correlation, contract counters).

use tokio::sync::mpsc;

use super::dispatch::{RunEvent, RunState, Stream};
use super::supervisor::{NotStarted, SDK_DRAIN, Shell, Supervisor};
use super::tee::{TeeConfig, TeeMsg, spawn_tee};
use crate::cli::AgentShim;
use crate::clock;
use crate::evidence::files;
use crate::kernel::bus::{self, KernelObserver};
use crate::kernel::event::Observed;
use crate::policy::layer::PolicyLayer;
use crate::policy::sockaddr::{self, SockAddrEnforcer};
use crate::sdk::{SdkLayer, SdkSocket, shim};

impl Supervisor<'_> {
    /// Enforce mode: attach the policy's network rules to the run's cgroup (not when the
    /// policy leaves every address open: nothing to hold). An error means the child must not
    /// start — it would run beyond its policy.
    pub(super) fn enforce_network(&mut self) -> Result<Option<SockAddrEnforcer>, NotStarted> {
        let Some(spec) = self
            .spec
            .policy
            .as_ref()
            .filter(|p| p.landlock.is_some() || p.network_hooks_only)
        else {
            return Ok(None);
        };
        if spec.policy.network_unrestricted() {
            self.network_mechanism =
                Some("network: every address allowed by the policy (nothing to enforce)".into());
            return Ok(None);
        }
        let enforcer = sockaddr::attach(&spec.policy, self.cg.path())
            .map_err(|e| NotStarted::Network(e.to_string()))?;
        self.network_mechanism = Some(format!(
            "cgroup sock_addr: connect4/6 and sendmsg4/6 on the run's cgroup only ({} connect, {} send entries; denied calls fail with EPERM)",
            enforcer.connect_entries, enforcer.send_entries
        ));
        Ok(Some(enforcer))
    }

    /// Start the audit oracle for the run's policy. Without kernel events there is nothing to
    /// judge, and health says so instead of claiming an audit.
    pub(super) fn start_policy(&mut self, kernel_active: bool) {
        let bundle = &self.rec.bundle;
        let Some(spec) = &self.spec.policy else {
            return;
        };
        // Landlock cannot carve the bundle out of a writable tree: say so, so that an operator
        // who needs the evidence out of the run's reach puts --out elsewhere.
        let vars = &self.spec.vars;
        if spec.landlock.is_some() {
            let dir = std::fs::canonicalize(bundle.shown())
                .unwrap_or_else(|_| bundle.shown().to_path_buf())
                .display()
                .to_string();
            if let Some(rule) = spec.policy.write.iter().find(|r| {
                r.action == crate::policy::Action::Allow
                    && r.paths.iter().any(|p| {
                        crate::policy::model::path_covers(
                            &crate::policy::oracle::expand_path(p, vars),
                            &dir,
                        )
                    })
            }) {
                self.notes.push(format!(
                    "policy {}: the bundle directory {dir} is writable by the run (write rule `{}`); use --out outside it to keep the evidence out of the run's reach",
                    spec.policy.name, rule.id
                ));
            }
        }
        if !kernel_active {
            self.notes.push(format!(
                "policy {}: not audited: the kernel layer is not active, so there are no events to judge",
                spec.policy.name
            ));
            return;
        }
        match PolicyLayer::start(
            spec,
            vars,
            &bundle.path(files::POLICY_LAYER),
            bundle.space().clone(),
        ) {
            Ok(layer) => self.policy = Some(layer),
            Err(e) => self
                .notes
                .push(format!("policy {}: not audited: {e}", spec.policy.name)),
        }
    }

    /// One drain's kernel events to the consumers the shell holds, through the bus: the policy
    /// oracle, the SDK layer's tool-call windows and the contract counters (the process tree
    /// is the state's: it gets the same batch as a `RunEvent::Kernel`).
    pub(super) fn observe_kernel(&mut self, seen: &[Observed]) {
        let mut observers: Vec<&mut dyn KernelObserver> = vec![&mut self.rec.counters];
        if let Some(p) = self.policy.as_mut() {
            observers.push(p);
        }
        if let Some(sdk) = self.sdk.as_mut() {
            observers.push(sdk);
        }
        if let Some(steps) = self.steps.as_mut() {
            observers.push(steps);
        }
        bus::fan_out(seen, &mut observers);
    }

    /// Offer the child an SDK socket: `VIGIL_SDK_SOCKET` in its environment, with the run id
    /// and the agent shim.
    pub(super) fn offer_sdk(&mut self, kernel: bool) -> Option<SdkSocket> {
        let env = &mut self.child_env;
        env.push(("VIGIL_RUN_ID".into(), self.spec.run_id.to_string().into()));
        if self.spec.agent_shim != AgentShim::None {
            env.push((
                "VIGIL_AGENT_SHIM".into(),
                self.spec.agent_shim.as_str().into(),
            ));
        }
        match SdkSocket::bind(
            self.cg.path(),
            &self.cgroup_mount,
            self.rec.redactor.clone(),
        ) {
            Ok(sock) => {
                env.push(("VIGIL_SDK_SOCKET".into(), sock.path().into()));
                if self.spec.agent_shim != AgentShim::None {
                    match shim::write(sock.dir()) {
                        Ok(dir) => {
                            let existing = self
                                .spec
                                .env
                                .iter()
                                .find(|(k, _)| k == "PYTHONPATH")
                                .map(|(_, v)| v.clone())
                                // The environment the child starts from: vigil's own, or
                                // the daemon client's.
                                .or_else(|| {
                                    self.base_env
                                        .iter()
                                        .find(|(k, _)| k == "PYTHONPATH")
                                        .map(|(_, v)| v.clone())
                                });
                            env.push((
                                "PYTHONPATH".into(),
                                shim::python_path(&dir, existing.as_ref()),
                            ));
                        }
                        Err(e) => self.notes.push(format!("agent shim not written: {e}")),
                    }
                }
                self.sdk = Some(SdkLayer::new(kernel));
                self.sdk_stats = Some(sock.stats.clone());
                Some(sock)
            }
            Err(e) => {
                self.notes
                    .push(format!("SDK socket not offered: {e}; sdk_layer absent"));
                None
            }
        }
    }

    /// After the run: read what the run's processes wrote to the socket before they exited
    /// (their connections end at EOF), for at most [`SDK_DRAIN`]. Through the state, so the
    /// fence holds here too.
    pub(super) async fn drain_sdk(
        &mut self,
        mut sock: SdkSocket,
        state: &mut RunState,
        shell: &mut Shell,
    ) {
        let give_up = tokio::time::sleep(SDK_DRAIN);
        tokio::pin!(give_up);
        loop {
            while let Ok(r) = sock.rx.try_recv() {
                let acts = state.handle(RunEvent::Sdk(r), clock::mono_ns());
                self.perform(state, shell, acts);
            }
            if sock.stats.active() == 0 {
                break;
            }
            tokio::select! {
                r = sock.rx.recv() => match r {
                    Some(r) => {
                        let acts = state.handle(RunEvent::Sdk(r), clock::mono_ns());
                        self.perform(state, shell, acts);
                    }
                    None => break,
                },
                _ = sock.stats.connection_closed() => {}
                _ = &mut give_up => {
                    self.notes.push(format!(
                        "{} SDK connection(s) still open {} ms after the run ended; closed",
                        sock.stats.active(),
                        SDK_DRAIN.as_millis()
                    ));
                    break;
                }
            }
        }
    }

    /// Start one tee thread per stream; returns the streams whose tee could not start (no
    /// pipe to wait for).
    pub(super) fn start_tees(
        &mut self,
        stdout: std::fs::File,
        stderr: std::fs::File,
        tx: mpsc::Sender<TeeMsg>,
    ) -> Vec<Stream> {
        let mut failed = Vec::new();
        for (stream, pipe, rel, fd) in [
            (Stream::Stdout, stdout, files::STDOUT, 1),
            (Stream::Stderr, stderr, files::STDERR, 2),
        ] {
            let capture = match std::fs::File::create(self.rec.bundle.path(rel)) {
                Ok(f) => f,
                Err(e) => {
                    self.notes
                        .push(format!("cannot create {rel}: {e}; output not captured"));
                    // Still drain the pipe so the child never blocks on a full pipe.
                    match std::fs::File::create("/dev/null") {
                        Ok(f) => f,
                        Err(_) => {
                            failed.push(stream);
                            continue;
                        }
                    }
                }
            };
            let cfg = TeeConfig {
                stream,
                pipe,
                sink: self.host.sink(fd),
                bounded_sink: self.host.bounded_sink(),
                capture,
                cap_bytes: self.spec.output_cap_bytes,
                capture_rel: rel,
                space: self.rec.bundle.space().clone(),
            };
            if let Err(e) = spawn_tee(
                cfg,
                self.rec.redactor.clone(),
                self.rec.counters.clone(),
                self.fence.clone(),
                tx.clone(),
            ) {
                self.notes
                    .push(format!("cannot start output thread for {rel}: {e}"));
                failed.push(stream);
            }
        }
        failed
    }
}
