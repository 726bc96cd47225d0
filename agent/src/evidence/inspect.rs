//! `vigil inspect`: a human summary of a bundle — status, process tree, stalls and kills, health.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::beneath::BundleDir;
use super::files;
use super::reader::{self, BundleProblem};

/// The bundle is untrusted input: it is read beneath its directory (links refused), bounded.
pub fn inspect(dir: &Path) -> Result<String, BundleProblem> {
    let b = BundleDir::open(dir)?;
    let trace: Value = b.read_json(files::RUN_TRACE)?;
    let health: Value = b.read_json(files::HEALTH).unwrap_or(Value::Null);
    let events = reader::read_events(&b);
    let committed = reader::validate(dir).is_ok();
    let s = |v: &Value, p: &str| {
        v.pointer(p).map_or_else(
            || "-".to_string(),
            |x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        )
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}  status {}  exit {}  bundle {}{}",
        s(&trace, "/run_id"),
        s(&trace, "/status"),
        s(&trace, "/exit_code"),
        s(&trace, "/run_status/state"),
        if committed {
            " (verified)"
        } else {
            " (NOT verified: run `vigil validate`)"
        }
    );
    let args: Vec<String> = trace["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(out, "command: {} {}", s(&trace, "/command"), args.join(" "));
    let _ = writeln!(
        out,
        "started {}  ended {}",
        s(&trace, "/started_at"),
        s(&trace, "/ended_at")
    );

    let steps = trace["summary"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if steps
        .iter()
        .any(|r| r.get("bundle").is_some() || r["status"] == "skipped")
    {
        let _ = writeln!(out, "\nsteps:");
        for r in &steps {
            let detail = match r["status"].as_str() {
                Some("skipped") => format!(
                    "{} (blocked by {})",
                    s(r, "/skip_reason"),
                    s(r, "/blocked_by")
                ),
                _ => format!(
                    "exit {}  {} ms{}  {}",
                    s(r, "/exit_code"),
                    s(r, "/duration_ms"),
                    r["reason"]
                        .as_str()
                        .map(|x| format!("  {x}"))
                        .unwrap_or_default(),
                    s(r, "/bundle")
                ),
            };
            let _ = writeln!(
                out,
                "  {:<16} {:<9} {detail}",
                s(r, "/name"),
                s(r, "/status")
            );
            if r["triage_attempted"] == true {
                let _ = writeln!(
                    out,
                    "  {:<16} triage {} → {}; checks: {}",
                    "",
                    s(r, "/triage_mode"),
                    s(r, "/triage_result"),
                    r["triage_checks"]
                        .as_array()
                        .map(|c| c
                            .iter()
                            .map(|c| format!("{} {}", s(c, "/id"), s(c, "/result")))
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
            }
        }
    }

    // Process tree from subprocess_state events: last state per pid, children under parents.
    let mut procs: BTreeMap<i64, (i64, String, String)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == "subprocess_state") {
        let pid = e.data["pid"].as_i64().unwrap_or(0);
        let entry = procs.entry(pid).or_insert((
            e.data["ppid"].as_i64().unwrap_or(0),
            String::new(),
            String::new(),
        ));
        if let Some(argv) = e.data["argv"].as_array() {
            let a: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
            if !a.is_empty() {
                entry.1 = a.join(" ");
            }
        }
        entry.2 = match (
            e.data["state"].as_str(),
            e.data["exit_code"].as_i64(),
            e.data["signal"].as_i64(),
        ) {
            (Some("exited"), Some(c), _) => format!("exited {c}"),
            (Some("exited"), _, Some(sig)) => format!("killed by signal {sig}"),
            (Some(st), _, _) => st.to_string(),
            _ => entry.2.clone(),
        };
    }
    let _ = writeln!(
        out,
        "\nprocess tree ({}):",
        s(&health, "/process_tree_source")
    );
    let roots: Vec<i64> = procs
        .iter()
        .filter(|(_, (pp, _, _))| !procs.contains_key(pp))
        .map(|(p, _)| *p)
        .collect();
    for root in roots {
        print_tree(&mut out, &procs, root, 1);
    }

    let _ = writeln!(out, "\nstalls and kills:");
    let mut any = false;
    for e in events
        .iter()
        .filter(|e| e.kind == "watchdog" || e.kind == "stall_warning")
    {
        any = true;
        let phase = e
            .data
            .get("stall_phase")
            .and_then(Value::as_str)
            .map(|p| format!("  phase {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {} {}{}",
            e.ts,
            e.kind,
            e.reason.as_deref().unwrap_or(""),
            phase
        );
        // Who waited on whom when the stall was judged (untrusted text: one line each).
        let waits = e
            .data
            .pointer("/snapshot/waits")
            .or_else(|| e.data.get("waits"))
            .and_then(Value::as_array);
        for w in waits.into_iter().flatten() {
            if let Some(text) = w.get("explanation").and_then(Value::as_str) {
                let _ = writeln!(out, "    {}", text.replace(['\n', '\r'], " "));
            }
        }
    }
    if !any {
        let _ = writeln!(out, "  none");
    }
    let violations: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "contract_violation")
        .collect();
    if !violations.is_empty() {
        let _ = writeln!(out, "\ncontract violations:");
        for e in violations {
            let _ = writeln!(
                out,
                "  {} on {}: `{}` observed {} ({})",
                s(&e.data, "/contract"),
                s(&e.data, "/span"),
                s(&e.data, "/obligation"),
                s(&e.data, "/observed"),
                s(&e.data, "/origin")
            );
        }
    }
    write_decisions(&mut out, &b);
    let _ = writeln!(
        out,
        "\nhealth: kernel_layer {}  cgroup_correlation {}  policy_layer {}  sdk_layer {}",
        s(&health, "/kernel_layer"),
        s(&health, "/cgroup_correlation"),
        s(&health, "/policy_layer"),
        s(&health, "/sdk_layer")
    );
    let o = &health["observer"];
    if let (Some(user), Some(sys)) = (o["cpu_user_ms"].as_f64(), o["cpu_system_ms"].as_f64()) {
        let _ = writeln!(
            out,
            "  observer: vigil used {:.1} ms of CPU ({user:.1} user, {sys:.1} system), peak RSS {} KiB",
            user + sys,
            s(o, "/peak_rss_kib")
        );
    }
    if let Some(kinds) = health["downgraded_events_by_kind"]
        .as_object()
        .filter(|k| !k.is_empty())
    {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "  downgraded past --evidence-max-bytes (counted, not written): {}",
            list.join(", ")
        );
    }
    for note in health["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let _ = writeln!(out, "  note: {note}");
    }
    Ok(out)
}

/// Policy decisions: a count per decision, then the denials (at most ten).
fn write_decisions(out: &mut String, b: &BundleDir) {
    let bytes = b
        .read(files::POLICY_LAYER, super::beneath::MAX_DOCUMENT)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let decisions: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if decisions.is_empty() {
        return;
    }
    let _ = writeln!(out, "\npolicy decisions:");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for d in &decisions {
        let key = format!(
            "{} ({})",
            d["decision"].as_str().unwrap_or("?"),
            d["mode"].as_str().unwrap_or("?")
        );
        *counts.entry(key).or_default() += 1;
    }
    for (k, n) in &counts {
        let _ = writeln!(out, "  {n:>6}  {k}");
    }
    let denials: Vec<&Value> = decisions
        .iter()
        .filter(|d| crate::policy::layer::is_denial(d))
        .collect();
    for d in denials.iter().take(10) {
        let _ = writeln!(
            out,
            "  {} {}  rule {}  pid {} {}",
            d["decision"].as_str().unwrap_or("?"),
            d["subject"].as_str().unwrap_or("?"),
            d["rule_id"].as_str().unwrap_or("?"),
            d["pid"],
            d["comm"].as_str().unwrap_or("")
        );
    }
    if denials.len() > 10 {
        let _ = writeln!(
            out,
            "  … {} more denials in layers/policy.ndjson",
            denials.len() - 10
        );
    }
}

fn print_tree(
    out: &mut String,
    procs: &BTreeMap<i64, (i64, String, String)>,
    pid: i64,
    depth: usize,
) {
    if let Some((_, argv, state)) = procs.get(&pid) {
        let _ = writeln!(out, "{}{pid} {argv}  [{state}]", "  ".repeat(depth));
    }
    for (child, _) in procs
        .iter()
        .filter(|(c, (pp, _, _))| *pp == pid && **c != pid)
    {
        print_tree(out, procs, *child, depth + 1);
    }
}
