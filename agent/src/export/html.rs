//! `vigil export --format html`: one self-contained report (inline CSS and a few lines of inline
//! script, a Content-Security-Policy that forbids every fetch) of the run: its verdict, health
//! and losses, stalls and kills, policy denials, and a timeline of the process tree. Aggregated,
//! not inlined: at most MAX_ROWS processes get a timeline row (the rest are counted), so a
//! million-event run is still a small file.

use std::fmt::Write;

use serde_json::Value;

use super::timeline::Timeline;

/// Processes drawn on the timeline; the others are counted.
pub const MAX_ROWS: usize = 2000;
/// Denials listed.
const MAX_DENIALS: usize = 200;

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn v(x: &Value) -> String {
    match x {
        Value::String(s) => esc(s),
        Value::Null => "—".into(),
        other => esc(&other.to_string()),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}\
h2{font-size:16px;margin-top:28px}table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}\
.v-passed{color:#17803d}.v-failed,.v-timed_out,.v-killed,.v-error,.v-cancelled{color:#b42318}\
.row{position:relative;height:16px;margin:1px 0}.bar{position:absolute;height:14px;background:#7aa7d9;border-radius:2px;overflow:hidden;\
white-space:nowrap;font-size:11px;color:#002;padding-left:2px}.bar.bad{background:#e8a0a0}.lbl{width:360px;display:inline-block;overflow:hidden;\
white-space:nowrap;font:12px monospace}.track{position:absolute;left:370px;right:0;top:0;bottom:0}pre{background:#f6f6f6;padding:8px;overflow:auto}";

/// The report; `decisions` are the policy layer's lines (for the denials).
pub fn render(t: &Timeline, health: &Value, decisions: &[Value]) -> String {
    let tr = &t.trace;
    let status = tr["status"].as_str().unwrap_or("unknown");
    let (start, end) = t.bounds();
    let span = end.saturating_sub(start).max(1) as f64;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
<title>vigil run {id}</title><style>{STYLE}</style></head><body>\
<h1>vigil run <code>{id}</code>: <span id=\"verdict\" class=\"v-{status}\" data-verdict=\"{status}\">{status}</span> (exit {exit})</h1>\
<p><code>{cmd}</code><br>{started} → {ended} ({dur:.3} s)</p>",
        id = v(&tr["run_id"]),
        status = esc(status),
        exit = v(&tr["exit_code"]),
        cmd = v(&tr["command"]),
        started = v(&tr["started_at"]),
        ended = v(&tr["ended_at"]),
        dur = span / 1e9,
    );
    // Health and losses.
    h.push_str("<h2>What was observed</h2><table>");
    for k in [
        "mode",
        "kernel_layer",
        "cgroup_correlation",
        "policy_layer",
        "sdk_layer",
        "process_tree_source",
    ] {
        let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", v(&health[k]));
    }
    let lost = &health["lost_events"];
    let _ = write!(
        h,
        "<tr><th>lost events</th><td>ring buffer {}, reader {}, queues {}</td></tr>\
<tr><th>downgraded to counts</th><td>{}</td></tr></table>",
        v(&lost["kernel_ring_buffer"]),
        v(&lost["reader"]),
        v(&lost["queues"]),
        v(&health["downgraded_events_by_kind"])
    );
    // Stalls and kills, with what the watchdog recorded.
    let marks: Vec<&Value> = tr["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| matches!(x["kind"].as_str(), Some("watchdog" | "stall_warning")))
                .collect()
        })
        .unwrap_or_default();
    let _ = write!(h, "<h2>Stalls and kills ({})</h2>", marks.len());
    for m in marks.iter().take(100) {
        let _ = write!(
            h,
            "<p><b>{}</b> {} at {}</p><details><summary>what was recorded (triage snapshot)</summary><pre>{}</pre></details>",
            v(&m["kind"]),
            v(&m["reason"]),
            v(&m["ts"]),
            esc(&serde_json::to_string_pretty(&m["data"]).unwrap_or_default())
        );
    }
    // Denials.
    let denials: Vec<&Value> = decisions
        .iter()
        .filter(|d| crate::policy::layer::is_denial(d))
        .collect();
    let _ = write!(h, "<h2>Policy denials ({})</h2><table>", denials.len());
    for d in denials.iter().take(MAX_DENIALS) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            v(&d["decision"]),
            v(&d["subject"]),
            v(&d["rule_id"]),
            v(&d["mode"]),
            v(&d["lane"])
        );
    }
    h.push_str("</table>");
    // The process tree as a timeline, depth-first.
    let total = t.procs.len();
    let _ = write!(
        h,
        "<h2>Processes (<span id=\"process-count\" data-count=\"{total}\">{total}</span>)</h2>"
    );
    let mut order = Vec::new();
    let roots: Vec<u32> = t
        .procs
        .values()
        .filter(|p| !t.procs.contains_key(&p.ppid))
        .map(|p| p.pid)
        .collect();
    let mut stack: Vec<(u32, usize)> = roots.into_iter().rev().map(|p| (p, 0)).collect();
    let mut children: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for p in t.procs.values() {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    while let Some((pid, depth)) = stack.pop() {
        if order.len() >= MAX_ROWS {
            break;
        }
        order.push((pid, depth));
        if let Some(c) = children.get(&pid) {
            stack.extend(
                c.iter()
                    .rev()
                    .filter(|c| **c != pid)
                    .map(|c| (*c, depth + 1)),
            );
        }
    }
    for (pid, depth) in &order {
        let Some(p) = t.procs.get(pid) else { continue };
        let label = p
            .images
            .last()
            .map_or(p.comm.clone(), |i| i.filename.clone());
        let (b, e) = (p.start_ns, t.end_of(p));
        let left = (b.saturating_sub(start)) as f64 / span * 100.0;
        let width = (e.saturating_sub(b) as f64 / span * 100.0).max(0.2);
        let bad = p.signal.is_some() || p.exit_code.is_some_and(|c| c != 0);
        let how = match (p.exit_code, p.signal) {
            (_, Some(s)) => format!("signal {s}"),
            (Some(c), None) => format!("exit {c}"),
            _ => "running at the end".into(),
        };
        let _ = write!(
            h,
            "<div class=\"row\"><span class=\"lbl\" title=\"{title}\">{pad}{pid} {label}</span><div class=\"track\">\
<div class=\"bar{cls}\" style=\"left:{left:.3}%;width:{width:.3}%\" title=\"{how}\">{how}</div></div></div>",
            title = esc(&p
                .images
                .last()
                .map(|i| i.argv.join(" "))
                .unwrap_or_default()),
            pad = "&nbsp;".repeat(depth * 2),
            label = esc(&label),
            cls = if bad { " bad" } else { "" },
        );
    }
    if total > order.len() {
        let _ = write!(
            h,
            "<p>… and {} more processes (not drawn).</p>",
            total - order.len()
        );
    }
    h.push_str(
        "<script>document.title += ' — ' + document.getElementById('verdict').dataset.verdict;</script></body></html>\n",
    );
    h
}
