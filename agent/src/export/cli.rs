//! The outbound commands' mains: each returns its exit code (0 ok, 1 the thing checked does not
//! hold, 2 usage) after one clear line on stderr when it fails.

use std::path::Path;

use serde_json::Value;

use super::{dsse, ops, promotion, write_output};
use crate::cli::ExitCode;
use crate::evidence::beneath::BundleDir;
use crate::evidence::reader;

fn fail(code: i32, msg: impl std::fmt::Display) -> i32 {
    eprintln!("vigil: {msg}");
    code
}

pub fn emit_promotion(
    bundle: &Path,
    out: &Path,
    require_promotable: bool,
    sign_key: Option<&Path>,
) -> i32 {
    let key = match sign_key.map(dsse::signing_key).transpose() {
        Ok(k) => k,
        Err(e) => return fail(ExitCode::USAGE, format!("--sign-key {e}")),
    };
    let statement = match promotion::statement(bundle) {
        Ok(s) => s,
        Err(e) => return fail(1, format!("emit-promotion {}: {e}", bundle.display())),
    };
    let p = &statement["predicate"]["promotability"];
    if require_promotable && p["promotable"] != true {
        let reasons: Vec<&str> = p["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        return fail(
            1,
            format!(
                "{} is not promotable: {}; nothing written",
                bundle.display(),
                reasons.join("; ")
            ),
        );
    }
    let packet = match &key {
        Some(k) => dsse::sign(&statement, k),
        None => statement,
    };
    let mut bytes = serde_json::to_vec_pretty(&packet).unwrap_or_default();
    bytes.push(b'\n');
    match write_output(out, &bytes) {
        Ok(()) => 0,
        Err(e) => fail(ExitCode::VIGIL_FAILED, e),
    }
}

fn read_packet(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

pub fn verify_promotion(packet: &Path, key: Option<&Path>, bundle: Option<&Path>) -> i32 {
    let key = match key.map(dsse::verifying_key).transpose() {
        Ok(k) => k,
        Err(e) => return fail(ExitCode::USAGE, format!("--key {e}")),
    };
    let value = match read_packet(packet) {
        Ok(v) => v,
        Err(e) => return fail(1, e),
    };
    let statement = match dsse::verify(&value, key.as_ref()) {
        Ok(s) => s,
        Err(e) => return fail(1, format!("{}: {e}", packet.display())),
    };
    if statement["_type"] != promotion::STATEMENT_TYPE
        || statement["predicateType"] != promotion::PREDICATE_TYPE
    {
        return fail(
            1,
            format!("{}: not a vigil promotion statement", packet.display()),
        );
    }
    if let Some(dir) = bundle {
        let index = match reader::validate(dir) {
            Ok(i) => i,
            Err(p) => {
                return fail(
                    1,
                    format!(
                        "{}: {}",
                        dir.display(),
                        p.first().map(ToString::to_string).unwrap_or_default()
                    ),
                );
            }
        };
        let actual: std::collections::BTreeMap<&str, &str> = index
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.sha256.as_str()))
            .collect();
        let subjects = statement["subject"].as_array().cloned().unwrap_or_default();
        for s in &subjects {
            let name = s["name"].as_str().unwrap_or("");
            let want = s["digest"]["sha256"].as_str().unwrap_or("");
            match actual.get(name) {
                Some(got) if *got == want => {}
                Some(_) => {
                    return fail(
                        1,
                        format!("subject {name}: digest differs from the bundle's"),
                    );
                }
                None => return fail(1, format!("subject {name}: not in the bundle")),
            }
        }
        if subjects.len() != actual.len() {
            return fail(
                1,
                format!(
                    "the bundle has {} files, the packet names {}",
                    actual.len(),
                    subjects.len()
                ),
            );
        }
    }
    let p = &statement["predicate"];
    println!(
        "{}: verified{}{}; run {} {}; promotable: {}",
        packet.display(),
        if key.is_some() {
            ", signature good"
        } else {
            ""
        },
        if bundle.is_some() {
            ", every subject digest matches"
        } else {
            ""
        },
        p["run_id"].as_str().unwrap_or(""),
        p["status"].as_str().unwrap_or(""),
        p["promotability"]["promotable"]
    );
    0
}

pub fn keygen(prefix: &Path) -> i32 {
    match dsse::keygen(prefix) {
        Ok(id) => {
            println!(
                "wrote {} (secret) and {} (public); key id {id}",
                prefix.with_extension("key").display(),
                prefix.with_extension("pub").display()
            );
            0
        }
        Err(e) => fail(ExitCode::VIGIL_FAILED, format!("keygen: {e}")),
    }
}

pub fn summarize_ops(input: &Path, out: Option<&Path>) -> i32 {
    let summary = if input.is_dir() {
        match BundleDir::open(input)
            .map_err(|e| e.to_string())
            .and_then(|b| ops::summarize(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => return fail(1, format!("summarize-ops {}: {e}", input.display())),
        }
    } else {
        match read_packet(input).map(|p| promotion::ops_of_packet(&p)) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return fail(
                    1,
                    format!("{}: no ops summary in the packet", input.display()),
                );
            }
            Err(e) => return fail(1, e),
        }
    };
    match out {
        None => {
            print!("{}", ops::render(&summary));
            0
        }
        Some(path) => {
            let mut bytes = serde_json::to_vec_pretty(&summary).unwrap_or_default();
            bytes.push(b'\n');
            match write_output(path, &bytes) {
                Ok(()) => 0,
                Err(e) => fail(ExitCode::VIGIL_FAILED, e),
            }
        }
    }
}

/// The GitHub job summary of an opened bundle.
pub fn github_summary(dir: &BundleDir, timeline: &super::timeline::Timeline) -> String {
    let health: Value = dir
        .read_json(crate::evidence::files::HEALTH)
        .unwrap_or_default();
    let events = crate::evidence::reader::read_events(dir);
    super::github_summary::render(dir, timeline, &health, &events)
}

pub fn export(
    bundle: &Path,
    format: crate::cli::ExportFormat,
    out: Option<&Path>,
    otlp_endpoint: Option<&str>,
) -> i32 {
    use crate::cli::ExportFormat;
    if otlp_endpoint.is_some() && format != ExportFormat::OtlpJson {
        return fail(
            ExitCode::USAGE,
            "--otlp-endpoint goes with --format otlp-json",
        );
    }
    let dir = match BundleDir::open(bundle) {
        Ok(d) => d,
        Err(e) => return fail(1, format!("export {}: {e}", bundle.display())),
    };
    let timeline = match super::timeline::Timeline::read(&dir, format != ExportFormat::Junit) {
        Ok(t) => t,
        Err(e) => return fail(1, format!("export {}: {e}", bundle.display())),
    };
    if format == ExportFormat::Perfetto {
        // Binary and streamed: written packet by packet, straight to its destination.
        let written = match out {
            None => {
                super::perfetto::write(&timeline, std::io::BufWriter::new(std::io::stdout().lock()))
            }
            Some(path) => {
                let mut buf = Vec::new();
                super::perfetto::write(&timeline, &mut buf)
                    .and_then(|()| write_output(path, &buf).map_err(std::io::Error::other))
            }
        };
        return match written {
            Ok(()) => 0,
            Err(e) => fail(ExitCode::VIGIL_FAILED, format!("export: {e}")),
        };
    }
    let mut bytes = match format {
        ExportFormat::Perfetto => Vec::new(),
        ExportFormat::ChromeTrace => {
            serde_json::to_vec(&super::formats::chrome_trace(&timeline)).unwrap_or_default()
        }
        ExportFormat::OtlpJson => {
            serde_json::to_vec(&super::formats::otlp_json(&timeline)).unwrap_or_default()
        }
        ExportFormat::Junit => super::formats::junit(&timeline).into_bytes(),
        ExportFormat::Html => {
            let health: Value = dir
                .read_json(crate::evidence::files::HEALTH)
                .unwrap_or_default();
            let decisions = ops::read_decisions(&dir).unwrap_or_default();
            super::html::render(&timeline, &health, &decisions).into_bytes()
        }
        ExportFormat::GithubSummary => github_summary(&dir, &timeline).into_bytes(),
    };
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    if let Some(url) = otlp_endpoint {
        match super::otlp_http::post(url, &bytes) {
            Ok(attempts) => eprintln!("vigil: sent to {url} ({attempts} attempt(s))"),
            Err(e) => return fail(1, format!("--otlp-endpoint {e}")),
        }
        if out.is_none() {
            return 0;
        }
    }
    match out {
        None => {
            use std::io::Write;
            match std::io::stdout().lock().write_all(&bytes) {
                Ok(()) => 0,
                Err(e) => fail(ExitCode::VIGIL_FAILED, format!("stdout: {e}")),
            }
        }
        Some(path) => match write_output(path, &bytes) {
            Ok(()) => 0,
            Err(e) => fail(ExitCode::VIGIL_FAILED, e),
        },
    }
}
