//! `vigil export --format`: the timeline as Chrome's Trace Event Format (chrome://tracing,
//! Perfetto's legacy JSON importer), as an OTLP/JSON `ExportTraceServiceRequest`, and as a JUnit
//! report.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::timeline::Timeline;

/// Microseconds for the Trace Event Format, relative to the run's start.
fn us(ns: u64, origin: u64) -> f64 {
    ns.saturating_sub(origin) as f64 / 1000.0
}

/// Trace Event Format: the run's spans on track 0 ("vigil"), one track per process named
/// after its first image (`M` events), an `X` slice per exec image, instants (`i`) for failed
/// execs, OOM kills, stalls and watchdog kills, and flows (`s`/`f`) for signals.
pub fn chrome_trace(t: &Timeline) -> Value {
    let (origin, _) = t.bounds();
    let mut ev = vec![
        json!({"ph": "M", "name": "process_name", "pid": 0, "tid": 0,
                             "args": {"name": format!("vigil run {}", t.trace["run_id"].as_str().unwrap_or(""))}}),
    ];
    for s in t.trace["spans"].as_array().into_iter().flatten() {
        let (start, end) = (
            s["start_ns"].as_u64().unwrap_or(origin),
            s["end_ns"].as_u64().unwrap_or(origin),
        );
        ev.push(
            json!({"ph": "X", "name": s["name"], "cat": "span", "pid": 0, "tid": 0,
                       "ts": us(start, origin), "dur": us(end, start),
                       "args": {"status": s["status"], "attrs": s["attrs"]}}),
        );
    }
    for p in t.procs.values() {
        let label = p
            .images
            .first()
            .map_or(p.comm.clone(), |i| i.filename.clone());
        ev.push(
            json!({"ph": "M", "name": "process_name", "pid": p.pid, "tid": p.pid,
                       "args": {"name": format!("{label} ({})", p.pid)}}),
        );
        ev.push(
            json!({"ph": "M", "name": "process_sort_index", "pid": p.pid, "tid": p.pid,
                       "args": {"sort_index": p.start_ns.saturating_sub(origin)}}),
        );
        let end = t.end_of(p);
        let mut images = p.images.clone();
        if images.is_empty() {
            images.push(super::timeline::Image {
                start_ns: p.start_ns,
                filename: p.comm.clone(),
                argv: Vec::new(),
            });
        }
        for (i, img) in images.iter().enumerate() {
            let until = images.get(i + 1).map_or(end, |n| n.start_ns);
            ev.push(json!({"ph": "X", "name": img.filename, "cat": "process", "pid": p.pid, "tid": p.pid,
                           "ts": us(img.start_ns, origin), "dur": us(until, img.start_ns),
                           "args": {"argv": img.argv, "ppid": p.ppid, "exit_code": p.exit_code, "signal": p.signal}}));
        }
    }
    for i in &t.instants {
        let pid = i.pid.unwrap_or(0);
        ev.push(
            json!({"ph": "i", "s": if i.pid.is_some() { "p" } else { "g" }, "name": i.name,
                       "cat": "mark", "pid": pid, "tid": pid, "ts": us(i.ts_ns, origin),
                       "args": {"detail": i.detail}}),
        );
    }
    for (n, f) in t.flows.iter().enumerate() {
        let name = format!("signal {}", f.signal);
        ev.push(json!({"ph": "s", "id": n, "name": name, "cat": "signal", "pid": f.from, "tid": f.from, "ts": us(f.ts_ns, origin)}));
        ev.push(json!({"ph": "f", "bp": "e", "id": n, "name": name, "cat": "signal", "pid": f.to, "tid": f.to, "ts": us(f.ts_ns, origin)}));
    }
    json!({"traceEvents": ev, "displayTimeUnit": "ms"})
}

fn attr(key: &str, v: Value) -> Value {
    let value = match v {
        Value::String(s) => json!({"stringValue": s}),
        Value::Bool(b) => json!({"boolValue": b}),
        // OTLP/JSON writes 64-bit integers as strings.
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64()}),
        Value::Array(a) => {
            json!({"arrayValue": {"values": a.into_iter().map(|x| attr("", x)["value"].clone()).collect::<Vec<_>>()}})
        }
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": value})
}

fn hex_id(seed: &str, len: usize) -> String {
    hex::encode(&Sha256::digest(seed.as_bytes())[..len])
}

/// OTLP/JSON: one resource (the run: `cicd.pipeline.run.id`, `service.name` vigil), the run's
/// spans, and a span per exec image under the run's `subprocess.wait` span (or `run.total`),
/// with `process.*` semantic-convention attributes.
pub fn otlp_json(t: &Timeline) -> Value {
    let run_id = t.trace["run_id"].as_str().unwrap_or("").to_string();
    let trace_id = hex_id(&run_id, 16);
    let (_, run_end) = t.bounds();
    let mut spans = Vec::new();
    let mut wait_span = None;
    for s in t.trace["spans"].as_array().into_iter().flatten() {
        let id = hex_id(
            &format!("{run_id}/span/{}", s["span_id"].as_str().unwrap_or("")),
            8,
        );
        if s["name"] == "subprocess.wait" && wait_span.is_none() {
            wait_span = Some(id.clone());
        }
        let parent = s["parent_id"]
            .as_str()
            .map(|p| hex_id(&format!("{run_id}/span/{p}"), 8))
            .unwrap_or_default();
        let ok = matches!(s["status"].as_str(), Some("passed"));
        let mut attrs = vec![attr("vigil.status", s["status"].clone())];
        if let Some(m) = s["attrs"].as_object() {
            for (k, v) in m.iter().filter(|(_, v)| !v.is_null() && !v.is_object()) {
                attrs.push(attr(&format!("vigil.{k}"), v.clone()));
            }
        }
        spans.push(json!({
            "traceId": trace_id, "spanId": id, "parentSpanId": parent, "name": s["name"],
            "kind": 1,
            "startTimeUnixNano": s["start_ns"].as_u64().unwrap_or(0).to_string(),
            "endTimeUnixNano": s["end_ns"].as_u64().unwrap_or(0).to_string(),
            "attributes": attrs,
            "status": {"code": if ok { 1 } else { 2 }},
        }));
    }
    let parent = wait_span.unwrap_or_else(|| hex_id(&format!("{run_id}/span/0000000000000001"), 8));
    for p in t.procs.values() {
        let end = t.end_of(p);
        for (i, img) in p.images.iter().enumerate() {
            let until = p.images.get(i + 1).map_or(end, |n| n.start_ns);
            let mut attrs = vec![
                attr("process.pid", json!(p.pid)),
                attr("process.parent_pid", json!(p.ppid)),
                attr("process.executable.path", json!(img.filename)),
                attr("process.command_args", json!(img.argv)),
            ];
            if let Some(c) = p.exit_code {
                attrs.push(attr("process.exit.code", json!(c)));
            }
            if let Some(sig) = p.signal {
                attrs.push(attr("vigil.process.signal", json!(sig)));
            }
            let failed = p.signal.is_some() || p.exit_code.is_some_and(|c| c != 0);
            spans.push(json!({
                "traceId": trace_id,
                "spanId": hex_id(&format!("{run_id}/proc/{}/{i}", p.pid), 8),
                "parentSpanId": parent,
                "name": format!("exec {}", img.filename),
                "kind": 1,
                "startTimeUnixNano": img.start_ns.to_string(),
                "endTimeUnixNano": until.min(run_end.max(until)).to_string(),
                "attributes": attrs,
                "status": {"code": if failed { 2 } else { 1 }},
            }));
        }
    }
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            attr("service.name", json!("vigil")),
            attr("cicd.pipeline.run.id", json!(run_id)),
            attr("vigil.command", t.trace["command"].clone()),
            attr("vigil.status", t.trace["status"].clone()),
        ]},
        "scopeSpans": [{"scope": {"name": "vigil", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]})
}

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// JUnit: one testsuite for the run, one testcase per step; a failed, timed-out or killed step
/// is a `<failure>` with its reason and stall triage; a skipped one `<skipped>`.
pub fn junit(t: &Timeline) -> String {
    let run_id = t.trace["run_id"].as_str().unwrap_or("");
    let steps = t.trace["summary"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let failures = steps
        .iter()
        .filter(|s| {
            matches!(
                s["status"].as_str(),
                Some("failed" | "timed_out" | "killed" | "error")
            )
        })
        .count();
    let skipped = steps.iter().filter(|s| s["status"] == "skipped").count();
    let total_ms: u64 = steps.iter().filter_map(|s| s["duration_ms"].as_u64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"vigil\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
        steps.len(),
        total_ms as f64 / 1000.0
    ));
    x.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\" timestamp=\"{}\">\n",
        esc(run_id),
        steps.len(),
        total_ms as f64 / 1000.0,
        esc(t.trace["started_at"].as_str().unwrap_or(""))
    ));
    for s in &steps {
        let name = s["name"].as_str().unwrap_or("step");
        let secs = s["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        x.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{secs:.3}\"",
            esc(run_id),
            esc(name)
        ));
        let status = s["status"].as_str().unwrap_or("");
        match status {
            "failed" | "timed_out" | "killed" | "error" => {
                let reason = s["reason"].as_str().unwrap_or(status);
                let mut body = format!(
                    "status: {status}\nexit_code: {}\nsignal: {}\nreason: {reason}\n",
                    s["exit_code"], s["signal"]
                );
                if s["stall_detected"] == true {
                    body.push_str(&format!("stall_phase: {}\n", s["stall_phase"]));
                }
                if !s["triage_result"].is_null() {
                    body.push_str(&format!(
                        "triage: {} ({}), failing checks: {}\n",
                        s["triage_result"], s["triage_mode"], s["failing_check_ids"]
                    ));
                }
                x.push_str(&format!(
                    ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>\n",
                    esc(reason),
                    esc(status),
                    esc(&body)
                ));
            }
            "skipped" => x.push_str(&format!(
                ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                esc(s["skip_reason"].as_str().unwrap_or("skipped"))
            )),
            _ => x.push_str("/>\n"),
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}
