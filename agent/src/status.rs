//! `vigil status`: what this host supports (the short form of `vigil doctor`), whether a daemon
//! answers and what it is doing, and the newest committed bundle under `--out` with its verdict.
//! Read-only; the bundle is read as untrusted input, as by `vigil validate`.

use std::fmt::Write;
use std::path::Path;

use crate::evidence::beneath::BundleDir;
use crate::evidence::reader;

/// The report, one line per subject.
pub fn render(daemon: &Path, out: &Path) -> String {
    let mut s = String::new();
    let host = crate::kernel::probe::probe_host();
    let features: Vec<String> = host
        .features
        .iter()
        .map(|(name, f)| format!("{name} {}", f.status))
        .collect();
    let attached = host.probes.values().filter(|p| *p == "attached").count();
    let _ = writeln!(
        s,
        "host: kernel {}; {}; sensor {attached}/{} probes attach{}",
        host.kernel_release,
        features.join(", "),
        host.probes.len(),
        if host.can_run() {
            ""
        } else {
            "; cannot supervise runs (no cgroup v2)"
        }
    );
    match crate::daemon::client::status(daemon) {
        Ok(st) => {
            let _ = writeln!(
                s,
                "daemon: answers at {} (vigil {}, pid {}; {} of {} run slots busy, {} queued of {}; sensor {})",
                daemon.display(),
                st.version,
                st.pid,
                st.runs_active,
                st.max_runs,
                st.runs_queued,
                st.queue,
                st.kernel_sensor
            );
        }
        Err(e) => {
            let _ = writeln!(s, "daemon: none ({e}); `vigil run` runs standalone");
        }
    }
    let _ = writeln!(s, "{}", newest(out));
    s
}

fn newest(out: &Path) -> String {
    let latest = BundleDir::open(out).and_then(|d| d.read("LATEST", 4096));
    let id = match latest {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(e) => return format!("newest bundle: none under {} ({e})", out.display()),
    };
    if id.parse::<crate::run::spec::RunId>().is_err() {
        return format!(
            "newest bundle: {}/LATEST does not name a run id",
            out.display()
        );
    }
    let dir = out.join(&id);
    match reader::validate(&dir) {
        Err(problems) => format!(
            "newest bundle: {}: not valid ({}); `vigil reindex --repair` may recover it",
            dir.display(),
            problems
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
        Ok(index) => {
            let trace = BundleDir::open(&dir)
                .and_then(|d| d.read_json::<serde_json::Value>("run-trace.json"))
                .unwrap_or_default();
            format!(
                "newest bundle: {}: {} ({} files); run {} exit {}",
                dir.display(),
                index.state,
                index.files.len(),
                trace["status"].as_str().unwrap_or("unknown"),
                trace["exit_code"]
            )
        }
    }
}
