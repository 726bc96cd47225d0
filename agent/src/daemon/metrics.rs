//! `--metrics ADDR`: the daemon's counters in the OpenMetrics text format (which Prometheus
//! scrapes), encoded by `prometheus-client`, served to `GET /metrics` by a one-route HTTP/1.0
//! responder (no HTTP stack for one fixed document).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kernel::hub::Hub;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Probe {
    pub probe: String,
}

/// Everything the daemon counts.
#[derive(Default)]
pub struct Metrics {
    pub runs_active: Gauge,
    pub runs_queued: Gauge,
    pub runs_started: Counter,
    pub runs_finished: Family<Status, Counter>,
    pub rejected: Family<Reason, Counter>,
    pub protocol_errors: Family<Reason, Counter>,
    pub connections: Counter,
    /// Deferred requests whose client left before they started.
    pub deferred_cancelled: Counter,
    events: Family<Kind, Counter>,
    lost: Family<Stage, Counter>,
    downgraded: Family<Stage, Counter>,
    probe_attached: Family<Probe, Gauge>,
    rss_bytes: Gauge,
}

fn set_counter(c: &Counter, to: u64) {
    let now = c.get();
    if to > now {
        c.inc_by(to - now);
    }
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("vigil");
        r.register("runs_active", "Runs running now", self.runs_active.clone());
        r.register(
            "runs_queued",
            "Requests waiting for a run slot",
            self.runs_queued.clone(),
        );
        r.register("runs_started", "Runs started", self.runs_started.clone());
        r.register(
            "runs_finished",
            "Runs finished, by status",
            self.runs_finished.clone(),
        );
        r.register(
            "requests_rejected",
            "Requests not run, by reason token",
            self.rejected.clone(),
        );
        r.register(
            "protocol_errors",
            "Bad input on the socket, by reason token",
            self.protocol_errors.clone(),
        );
        r.register(
            "connections",
            "Connections accepted",
            self.connections.clone(),
        );
        r.register(
            "deferred_cancelled",
            "Deferred requests whose client left before they started",
            self.deferred_cancelled.clone(),
        );
        r.register(
            "kernel_events",
            "Kernel events routed to runs, by kind",
            self.events.clone(),
        );
        r.register(
            "events_lost",
            "Events lost, by where they were lost",
            self.lost.clone(),
        );
        r.register(
            "events_downgraded",
            "Data events downgraded to counts, by stage",
            self.downgraded.clone(),
        );
        r.register(
            "probe_attached",
            "1 when the probe is attached",
            self.probe_attached.clone(),
        );
        r.register(
            "daemon_rss_bytes",
            "Resident set size of the daemon",
            self.rss_bytes.clone(),
        );
        r
    }

    /// Read the sensor's counters and the daemon's RSS, then encode everything.
    pub fn render(&self, hub: Option<&Hub>) -> String {
        if let Some(hub) = hub {
            let st = hub.stats();
            for (kind, n) in st
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
            {
                set_counter(
                    &self.events.get_or_create(&Kind {
                        kind: (*kind).into(),
                    }),
                    *n,
                );
            }
            let stage = |s: &str| Stage { stage: s.into() };
            set_counter(
                &self.lost.get_or_create(&stage("kernel_ring_buffer")),
                hub.ring_lost(),
            );
            set_counter(
                &self.lost.get_or_create(&stage("reader")),
                st.decode_errors.load(Ordering::Relaxed),
            );
            set_counter(
                &self.lost.get_or_create(&stage("queue")),
                st.control_lost.load(Ordering::Relaxed),
            );
            set_counter(
                &self.lost.get_or_create(&stage("unrouted")),
                st.unrouted.load(Ordering::Relaxed),
            );
            set_counter(
                &self.downgraded.get_or_create(&stage("daemon_lanes")),
                st.downgraded.load(Ordering::Relaxed),
            );
            for (probe, status) in hub.probes() {
                self.probe_attached
                    .get_or_create(&Probe { probe })
                    .set(i64::from(status.is_attached()));
            }
        }
        self.rss_bytes.set(rss_bytes());
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
}

/// The daemon's resident set size (statm's resident pages).
pub fn rss_bytes() -> i64 {
    let pages = procfs::process::Process::myself()
        .and_then(|p| p.statm())
        .map_or(0, |s| s.resident);
    i64::try_from(pages.saturating_mul(procfs::page_size())).unwrap_or(i64::MAX)
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    hub: Option<Arc<Hub>>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let (m, h) = (metrics.clone(), hub.clone());
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
            let reply = if line.starts_with(b"GET /metrics ") {
                let body = m.render(h.as_deref());
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 22\r\n\r\nonly GET /metrics here".into()
            };
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
