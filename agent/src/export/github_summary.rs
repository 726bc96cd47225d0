//! The job summary for GitHub (`$GITHUB_STEP_SUMMARY`, `vigil export --format github-summary`):
//! Markdown of the steps (time, exit, stall, kill), why anything hung (who waits on whom, and
//! which step the holder belongs to), policy denials, top execs and endpoints, and what was
//! observed and lost. At most [`MAX_BYTES`] (GitHub's limit for one step's summary); a larger
//! one is cut at a line with a note.
//!
//! Everything in it comes from an untrusted bundle: table cells are escaped (`|`, newlines,
//! backticks and HTML), so a crafted argv cannot break out of its cell or inject markup.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde_json::Value;

use super::ops::{OpsSummary, read_decisions, summarize};
use super::timeline::Timeline;
use crate::evidence::beneath::BundleDir;
use crate::evidence::events::RunnerEvent;

/// GitHub refuses a step summary over 1 MiB.
pub const MAX_BYTES: usize = 1024 * 1024;

/// Rows per list (denials, execs, endpoints, explanations).
const TOP: usize = 10;

/// Text for a Markdown table cell or line: no pipes, no newlines, no markup.
fn cell(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '|' => "\\|".to_string(),
            '\n' | '\r' => " ".to_string(),
            '`' => "'".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => cell(s),
        other => cell(&other.to_string()),
    }
}

/// Every hang explanation of the run (watchdog snapshots and stall warnings), each once.
fn explanations(events: &[RunnerEvent]) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in events {
        let waits = match e.kind.as_str() {
            "watchdog" => e.data.pointer("/snapshot/waits"),
            "stall_warning" => e.data.get("waits"),
            _ => None,
        };
        for w in waits.and_then(Value::as_array).into_iter().flatten() {
            let key = w["explanation"].as_str().unwrap_or("").to_string();
            if seen.insert(key) {
                out.push(w.clone());
            }
        }
    }
    out
}

/// The step (by its process) each pid of the timeline belongs to.
fn step_of(t: &Timeline, steps: &HashMap<u32, String>, pid: u32) -> Option<String> {
    let mut at = pid;
    for _ in 0..256 {
        if let Some(s) = steps.get(&at) {
            return Some(s.clone());
        }
        at = t.procs.get(&at)?.ppid;
    }
    None
}

/// Render the summary of a bundle.
pub fn render(b: &BundleDir, t: &Timeline, health: &Value, events: &[RunnerEvent]) -> String {
    let tr = &t.trace;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## vigil: `{}` — {} (exit {})\n",
        cell(tr["run_id"].as_str().unwrap_or("")),
        text(&tr["status"]),
        text(&tr["exit_code"])
    );
    // Steps: a watched job's `case.run` spans carry their step id and process.
    let step_spans: Vec<&Value> = tr["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "case.run" && s["attrs"].get("step_id").is_some())
        .collect();
    let steps: HashMap<u32, String> = step_spans
        .iter()
        .filter_map(|s| {
            let pid = u32::try_from(s["attrs"]["pid"].as_u64()?).ok()?;
            Some((pid, s["attrs"]["step_id"].as_str()?.to_string()))
        })
        .collect();
    let waits = explanations(events);
    // A step whose processes wait, or hold what someone waits on, is where the job hung.
    let mut stalled: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for w in &waits {
        let pids = std::iter::once(&w["pid"]).chain(
            w["holders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| &h["pid"]),
        );
        for pid in pids.filter_map(Value::as_u64) {
            if let Some(s) = step_of(t, &steps, pid as u32) {
                let e = w["explanation"].as_str().unwrap_or("").to_string();
                let list = stalled.entry(s).or_default();
                if !list.contains(&e) {
                    list.push(e);
                }
            }
        }
    }
    md.push_str("| step | time | exit | stall / kill |\n|---|---:|---:|---|\n");
    for row in tr["summary"]["steps"].as_array().into_iter().flatten() {
        let name = row["name"].as_str().unwrap_or("");
        let mark = match (stalled.contains_key(name), row["reason"].as_str()) {
            (_, Some(r)) => format!("killed: {}", cell(r)),
            (true, None) => "**hung** (see below)".into(),
            (false, None) => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} {} | {:.1} s | {} | {mark} |",
            if row["status"] == "passed" {
                "✅"
            } else {
                "❌"
            },
            cell(name),
            row["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            text(&row["exit_code"]),
        );
    }
    if !waits.is_empty() {
        md.push_str("\n### Why it hung\n\n");
        for w in waits.iter().take(TOP) {
            // The waiter's step, else the step of what it waits on.
            let own = w["pid"].as_u64().and_then(|p| step_of(t, &steps, p as u32));
            let held = || {
                w["holders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find_map(|h| step_of(t, &steps, h["pid"].as_u64()? as u32))
            };
            let step = match (own, held()) {
                (Some(s), _) => format!(" (step {})", cell(&s)),
                (None, Some(s)) => format!(" (held by step {})", cell(&s)),
                (None, None) => String::new(),
            };
            let _ = writeln!(md, "- {}{step}", text(&w["explanation"]));
        }
    }
    let decisions = read_decisions(b).unwrap_or_default();
    let mut denials: BTreeMap<(String, String), u64> = BTreeMap::new();
    for d in &decisions {
        if d["decision"]
            .as_str()
            .is_some_and(|x| x.starts_with("deny"))
        {
            let key = (text(&d["decision"]), text(&d["subject"]));
            *denials.entry(key).or_default() += d["count"].as_u64().unwrap_or(1);
        }
    }
    if !denials.is_empty() {
        md.push_str("\n### Policy denials\n\n| decision | target | count |\n|---|---|---:|\n");
        let mut rows: Vec<_> = denials.into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        for ((what, subject), n) in rows.into_iter().take(TOP) {
            let _ = writeln!(md, "| {what} | {subject} | {n} |");
        }
    }
    let mut execs: BTreeMap<&str, u64> = BTreeMap::new();
    for p in t.procs.values() {
        for img in &p.images {
            *execs.entry(img.filename.as_str()).or_default() += 1;
        }
    }
    if !execs.is_empty() {
        md.push_str("\n### Top execs\n\n");
        let mut rows: Vec<_> = execs.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (f, n) in rows.into_iter().take(TOP) {
            let _ = writeln!(md, "- `{}` × {n}", cell(f));
        }
    }
    if let Ok(ops) = summarize(b) {
        endpoints(&mut md, &ops);
    }
    md.push_str("\n### What was observed\n\n");
    for k in [
        "kernel_layer",
        "policy_layer",
        "sdk_layer",
        "spawned_by_vigil",
    ] {
        let _ = writeln!(md, "- {k}: {}", text(&health[k]));
    }
    let lost = &health["lost_events"];
    let _ = writeln!(
        md,
        "- lost events: ring buffer {}, reader {}, queues {}",
        text(&lost["kernel_ring_buffer"]),
        text(&lost["reader"]),
        text(&lost["queues"])
    );
    if let Some(d) = health["downgraded_events_by_kind"].as_object()
        && !d.is_empty()
    {
        let _ = writeln!(
            md,
            "- downgraded to counts: {}",
            cell(&Value::Object(d.clone()).to_string())
        );
    }
    for m in health["watch"]["missed_before_attach"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(md, "- not seen (before the attach): {}", text(m));
    }
    cut(md)
}

fn endpoints(md: &mut String, ops: &OpsSummary) {
    let mut rows: BTreeMap<&str, u64> = BTreeMap::new();
    for op in ["network.connect", "network.send"] {
        for lane in ops.ops.get(op).into_iter().flat_map(|l| l.values()) {
            for (t, n) in &lane.targets {
                *rows.entry(t.as_str()).or_default() += n;
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    md.push_str("\n### Top endpoints\n\n");
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (t, n) in rows.into_iter().take(TOP) {
        let _ = writeln!(md, "- `{}` × {n}", cell(t));
    }
}

/// At most MAX_BYTES: cut at a line, with a note saying so.
fn cut(mut md: String) -> String {
    const NOTE: &str =
        "\n\n_(cut: the summary exceeds GitHub's 1 MiB limit; the bundle has everything)_\n";
    if md.len() <= MAX_BYTES {
        return md;
    }
    let mut at = MAX_BYTES - NOTE.len();
    while !md.is_char_boundary(at) {
        at -= 1;
    }
    let line = md[..at].rfind('\n').unwrap_or(at);
    md.truncate(line);
    md.push_str(NOTE);
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_break_out_of_their_table() {
        assert_eq!(cell("a|b\nc`<x>&"), "a\\|b c'&lt;x&gt;&amp;");
    }

    #[test]
    fn a_summary_over_the_limit_is_cut_at_a_line_with_a_note() {
        let big = "line of text\n".repeat(MAX_BYTES / 10);
        let out = cut(big);
        assert!(out.len() <= MAX_BYTES, "{}", out.len());
        assert!(out.ends_with("the bundle has everything)_\n"));
        assert_eq!(cut("short\n".into()), "short\n");
    }
}
