//! Exports of a real bundle, read back by the official or third-party parsers of their formats:
//! OTLP/JSON strictly by opentelemetry-proto (`json_format.Parse`), JUnit by `junitparser`,
//! the Trace Event Format as the JSON chrome://tracing loads. A planted secret is absent from
//! every byte of every format.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use vigil_e2e::*;

const SECRET: &str = "hunter22-export-secret";

fn export(bundle: &Path, format: &str, out: &Path) -> String {
    let o = Command::new(vigil_bin())
        .arg("export")
        .arg(bundle)
        .args(["--format", format, "--out"])
        .arg(out)
        .output()
        .expect("vigil export");
    assert!(
        o.status.success(),
        "{format}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(out).expect("export");
    assert!(!text.contains(SECRET), "{format} holds the secret");
    text
}

fn python(script: &str, arg: &Path) -> String {
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(arg)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "the official parser refused it (`cargo xtask test` installs it): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_watchdog_killed_run_exports_to_otlp_junit_and_chrome_trace() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let fixture = fixture_bin();
    let script = format!(
        "echo $API_TOKEN; /bin/true --token={SECRET}; exec {} hang",
        fixture.display()
    );
    let st = Command::new(vigil_bin())
        .args([
            "run",
            "--no-daemon",
            "--run-id",
            "exported",
            "--liveness-stall-ms",
            "600",
            "--liveness-kill-grace-ms",
            "200",
            "--out",
        ])
        .arg(&out)
        .args(["--", "sh", "-c", &script])
        .env("API_TOKEN", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("vigil run");
    assert_eq!(st.code(), Some(124));
    let b = out.join("exported");
    assert_valid_bundle(&b);

    // OTLP/JSON, strictly parsed by the official protos.
    let otlp_path = dir.path().join("otlp.json");
    let otlp: Value = serde_json::from_str(&export(&b, "otlp-json", &otlp_path)).expect("json");
    let parsed = python(
        r#"
import sys
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
req = json_format.Parse(open(sys.argv[1]).read(), trace_service_pb2.ExportTraceServiceRequest())
rs = req.resource_spans[0]
attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
spans = rs.scope_spans[0].spans
print(attrs["cicd.pipeline.run.id"], len(spans), sum(1 for s in spans if s.name.startswith("exec ")),
      sum(1 for s in spans if s.status.code == 2), min(s.start_time_unix_nano for s in spans) > 0)
"#,
        &otlp_path,
    );
    let f: Vec<&str> = parsed.split_whitespace().collect();
    assert_eq!(f[0], "exported", "{parsed}");
    let spans = otlp["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .expect("spans");
    assert_eq!(f[1].parse::<usize>().expect("n"), spans.len());
    assert!(
        f[2].parse::<usize>().expect("execs") >= 2,
        "sh and the fixture: {parsed}"
    );
    assert!(
        f[3].parse::<usize>().expect("errors") >= 1,
        "the killed run is an error: {parsed}"
    );
    assert_eq!(f[4], "True");
    let trace_id = spans[0]["traceId"].as_str().expect("traceId");
    assert_eq!(trace_id.len(), 32);
    assert!(trace_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(spans.iter().all(|s| s["traceId"] == trace_id));

    // JUnit, read by junitparser: the step failed with the watchdog's reason.
    let junit_path = dir.path().join("junit.xml");
    export(&b, "junit", &junit_path);
    let read = python(
        r#"
import sys
from junitparser import JUnitXml, Failure
xml = JUnitXml.fromfile(sys.argv[1])
for suite in xml:
    for case in suite:
        res = [r for r in case.result if isinstance(r, Failure)]
        print(suite.name, case.name, res[0].type if res else "ok", res[0].message if res else "")
"#,
        &junit_path,
    );
    assert_eq!(
        read.trim(),
        "exported main timed_out stall.subprocess.no_output_no_event",
        "{read}"
    );

    // Trace Event Format: a slice per exec image, the watchdog as an instant.
    let chrome_path = dir.path().join("trace.json");
    let chrome: Value =
        serde_json::from_str(&export(&b, "chrome-trace", &chrome_path)).expect("json");
    let events = chrome["traceEvents"].as_array().expect("events");
    let fixture_name = fixture.display().to_string();
    assert!(
        events
            .iter()
            .any(|e| e["ph"] == "X" && e["cat"] == "process" && e["name"] == fixture_name.as_str()),
        "no slice for the fixture"
    );
    assert!(
        events
            .iter()
            .any(|e| e["ph"] == "i" && e["name"] == "watchdog"),
        "no watchdog instant"
    );
    assert!(
        events
            .iter()
            .any(|e| e["ph"] == "X" && e["name"] == "run.total")
    );
    assert!(
        events
            .iter()
            .all(|e| e["ts"].as_f64().is_none_or(|t| t >= 0.0))
    );
}

#[test]
fn otlp_json_is_posted_to_a_real_receiver_with_a_retry() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let st = Command::new(vigil_bin())
        .args(["run", "--no-daemon", "--run-id", "posted", "--out"])
        .arg(&out)
        .args(["--", "sh", "-c", "/bin/true; exit 0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("vigil run");
    assert!(st.success());
    // An OTLP/HTTP receiver on loopback: 503 first (with Retry-After), then it decodes the
    // body with the official protos and answers 200.
    let got = dir.path().join("received.txt");
    let receiver = r#"
import sys, http.server
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
seen = []
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        seen.append(self.path)
        if len(seen) == 1:
            self.send_response(503); self.send_header("Retry-After", "0"); self.end_headers(); return
        req = json_format.Parse(body.decode(), trace_service_pb2.ExportTraceServiceRequest())
        n = len(req.resource_spans[0].scope_spans[0].spans)
        open(sys.argv[1], "w").write(f"{len(seen)} {self.path} {self.headers['Content-Type']} {n}\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
while not seen or len(seen) < 2:
    srv.handle_request()
"#;
    let mut rx = Command::new("python3")
        .args(["-c", receiver])
        .arg(&got)
        .stdout(Stdio::piped())
        .spawn()
        .expect("receiver");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(rx.stdout.take().expect("stdout")),
        &mut port,
    )
    .expect("port");
    let url = format!("http://127.0.0.1:{}", port.trim());
    let file = dir.path().join("otlp.json");
    let o = Command::new(vigil_bin())
        .arg("export")
        .arg(out.join("posted"))
        .args(["--format", "otlp-json", "--otlp-endpoint", &url, "--out"])
        .arg(&file)
        .output()
        .expect("export");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 attempt(s)"));
    assert!(rx.wait().expect("receiver").success());
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("file")).expect("json");
    let n = written["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        std::fs::read_to_string(&got).expect("received").trim(),
        format!("2 /v1/traces application/json {n}")
    );
    // Nobody listening: bounded retries, then a clear failure.
    let o = Command::new(vigil_bin())
        .arg("export")
        .arg(out.join("posted"))
        .args(["--format", "otlp-json", "--otlp-endpoint", &url])
        .output()
        .expect("export");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("gave up after 5 attempts"));
}

/// Chromium, headless, with its own background networking off; the page's console and network
/// are read from its log and net log.
fn chromium(page: &Path, shot: &Path, netlog: &Path) -> (String, String) {
    let o = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-default-apps",
            "--window-size=1280,900",
        ])
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (Debian package chromium; `cargo xtask test` installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// URLs the page itself asked for (the browser's own requests carry no origin).
fn page_requests(netlog: &Path) -> Vec<String> {
    let log: Value =
        serde_json::from_str(&std::fs::read_to_string(netlog).expect("netlog")).expect("json");
    log["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = &e["params"];
            let initiator = p["initiator"].as_str()?;
            (initiator != "not an origin").then(|| p["url"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn the_html_report_loads_in_chromium_with_no_error_and_no_request() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let st = Command::new(vigil_bin())
        .args([
            "run",
            "--no-daemon",
            "--run-id",
            "report",
            "--liveness-stall-ms",
            "500",
            "--liveness-kill-grace-ms",
            "200",
            "--out",
        ])
        .arg(&out)
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo $API_TOKEN; /bin/true; /bin/true; exec {} hang",
            fixture_bin().display()
        ))
        .env("API_TOKEN", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("vigil run");
    assert_eq!(st.code(), Some(124));
    let page = dir.path().join("report.html");
    let html = export(&out.join("report"), "html", &page);
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    let (shot, netlog) = (dir.path().join("report.png"), dir.path().join("net.json"));
    let (dom, log) = chromium(&page, &shot, &netlog);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let requests: Vec<String> = page_requests(&netlog)
        .into_iter()
        .filter(|u| !u.starts_with("file://"))
        .collect();
    assert!(requests.is_empty(), "the report fetched {requests:?}");
    assert!(
        dom.contains("data-verdict=\"timed_out\""),
        "no verdict in the DOM"
    );
    // The script ran: it appends the verdict to the title.
    assert!(
        dom.contains("— timed_out</title>"),
        "the inline script did not run"
    );
    let count = dom
        .split("data-count=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse::<usize>().ok())
        .expect("process count");
    assert!(count >= 3, "sh, two trues and the fixture: {count}");
    assert!(dom.contains("stall.subprocess.no_output_no_event"));
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 1000);
    // Kept for a person to look at.
    let keep = std::env::temp_dir().join("vigil-report-screenshot.png");
    let _ = std::fs::copy(&shot, keep);
}

#[test]
fn a_plans_steps_get_tracks_and_testcases_of_their_own() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "steps:\n  - name: build\n    command: \"true\"\n  - name: check\n    command: \"exit 3\"\n",
    )
    .expect("plan");
    let out = dir.path().join("out");
    let st = Command::new(vigil_bin())
        .args(["run", "--run-id", "gate", "--continue-on-fail", "--plan"])
        .arg(&plan)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("vigil run --plan");
    assert_eq!(st.code(), Some(3));
    let b = out.join("gate");
    let pf = dir.path().join("gate.pftrace");
    let o = Command::new(vigil_bin())
        .arg("export")
        .arg(&b)
        .args(["--format", "perfetto", "--out"])
        .arg(&pf)
        .output()
        .expect("export");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tracks = python(
        r#"
import sys
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
t = pb.Trace(); t.ParseFromString(open(sys.argv[1], "rb").read())
print(sorted(p.track_descriptor.name for p in t.packet if p.HasField("track_descriptor") and p.track_descriptor.name.startswith("step ")))
"#,
        &pf,
    );
    assert_eq!(tracks.trim(), "['step build', 'step check']");
    let junit_path = dir.path().join("gate.xml");
    export(&b, "junit", &junit_path);
    let read = python(
        r#"
import sys
from junitparser import JUnitXml, Failure
for suite in JUnitXml.fromfile(sys.argv[1]):
    print(suite.tests, suite.failures, [c.name for c in suite])
"#,
        &junit_path,
    );
    assert_eq!(read.trim(), "2 1 ['build', 'check']");
}
