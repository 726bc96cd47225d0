//! JUnit XML reports (pytest `--junitxml`, cargo nextest, go-junit-report) → the failing checks
//! of a step, as ids a targeted rerun can name, and their common module/path prefixes.
//!
//! Ids: pytest node ids (`tests/test_x.py::TestC::test_a`) when the report's `file` attribute or
//! a module file under the step's directory resolves the dotted `classname`; otherwise
//! `classname::name` (nextest: `binary::module::test`; go: `pkg/path::TestX`).

use std::path::Path;

use quick_xml::events::{BytesStart, Event};

/// One failing test case of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingCheck {
    /// The id a rerun names (`{ids}` in a triage template).
    pub id: String,
    /// The test case's own `name` (`{names}`).
    pub name: String,
    /// The module or path the check lives in.
    pub prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("{path}: cannot read: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: not JUnit XML: {error}")]
    Xml { path: String, error: String },
}

/// The failing checks of a report (failures and errors), in report order, without repeats.
pub fn failing_checks(report: &Path, cwd: &Path) -> Result<Vec<FailingCheck>, JunitError> {
    let path = report.display().to_string();
    let text = std::fs::read_to_string(report).map_err(|error| JunitError::Read {
        path: path.clone(),
        error,
    })?;
    parse(&text, cwd).map_err(|error| JunitError::Xml { path, error })
}

struct Case {
    classname: String,
    name: String,
    file: Option<String>,
    failed: bool,
}

fn attr(e: &BytesStart<'_>, key: &str) -> Option<String> {
    e.try_get_attribute(key)
        .ok()
        .flatten()
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// The failing checks of a report's text (`failing_checks` reads the file).
pub fn parse(text: &str, cwd: &Path) -> Result<Vec<FailingCheck>, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut out: Vec<FailingCheck> = Vec::new();
    let mut case: Option<Case> = None;
    let mut saw_suite = false;
    loop {
        let event = reader.read_event().map_err(|e| e.to_string())?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                match e.name().as_ref() {
                    b"testsuite" | b"testsuites" => saw_suite = true,
                    b"testcase" => {
                        let c = Case {
                            classname: attr(e, "classname").unwrap_or_default(),
                            name: attr(e, "name").unwrap_or_default(),
                            file: attr(e, "file"),
                            failed: false,
                        };
                        if !empty {
                            case = Some(c);
                        }
                    }
                    b"failure" | b"error" => {
                        if let Some(c) = case.as_mut() {
                            c.failed = true;
                        }
                    }
                    _ => {}
                }
            }
            Event::End(ref e) if e.name().as_ref() == b"testcase" => {
                if let Some(c) = case.take().filter(|c| c.failed) {
                    let check = check_of(&c, cwd);
                    if !out.iter().any(|o| o.id == check.id) {
                        out.push(check);
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_suite {
        return Err("no <testsuite> or <testsuites> element".into());
    }
    Ok(out)
}

/// A pytest node id when the module file can be found, else `classname::name`.
fn check_of(c: &Case, cwd: &Path) -> FailingCheck {
    let parts: Vec<&str> = c.classname.split('.').filter(|p| !p.is_empty()).collect();
    // The longest dotted prefix of the classname that is a module file (`a.b` → `a/b.py`),
    // checked against the report's `file` when it has one.
    let module = (1..=parts.len()).rev().find_map(|n| {
        let rel = format!("{}.py", parts[..n].join("/"));
        let found = match &c.file {
            Some(f) => f == &rel,
            None => cwd.join(&rel).is_file(),
        };
        found.then_some((rel, n))
    });
    match module {
        Some((file, n)) => {
            let mut id = file.clone();
            for class in &parts[n..] {
                id.push_str("::");
                id.push_str(class);
            }
            id.push_str("::");
            id.push_str(&c.name);
            FailingCheck {
                id,
                name: c.name.clone(),
                prefix: file,
            }
        }
        None => FailingCheck {
            id: if c.classname.is_empty() {
                c.name.clone()
            } else {
                format!("{}::{}", c.classname, c.name)
            },
            name: c.name.clone(),
            prefix: c.classname.clone(),
        },
    }
}

/// The common prefixes of failing checks: their modules or paths, sorted, once each.
pub fn prefixes(checks: &[FailingCheck]) -> Vec<String> {
    let mut p: Vec<String> = checks
        .iter()
        .map(|c| c.prefix.clone())
        .filter(|p| !p.is_empty())
        .collect();
    p.sort();
    p.dedup();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="2" skipped="0" tests="3"><testcase classname="tests.test_gate" name="test_ok" time="0.001" /><testcase classname="tests.test_gate" name="test_flaky" time="0.001"><failure message="assert False">tests/test_gate.py:5: AssertionError</failure></testcase><testcase classname="tests.test_gate.TestReal" name="test_broken" time="0.001"><error message="boom &amp; more">x</error></testcase></testsuite></testsuites>"#;

    #[test]
    fn pytest_reports_give_node_ids_when_the_module_resolves() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tests")).expect("dir");
        std::fs::write(dir.path().join("tests/test_gate.py"), "").expect("file");
        let checks = parse(PYTEST, dir.path()).expect("parse");
        let ids: Vec<_> = checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "tests/test_gate.py::test_flaky",
                "tests/test_gate.py::TestReal::test_broken"
            ]
        );
        assert_eq!(prefixes(&checks), ["tests/test_gate.py"]);
        // Without the module file: classname::name.
        let checks = parse(PYTEST, Path::new("/nonexistent")).expect("parse");
        assert_eq!(checks[0].id, "tests.test_gate::test_flaky");
        assert_eq!(
            prefixes(&checks),
            ["tests.test_gate", "tests.test_gate.TestReal"]
        );
    }

    #[test]
    fn nextest_and_go_reports_and_garbage() {
        let nextest = r#"<testsuites name="nextest-run" tests="2" failures="1"><testsuite name="vigil::bin/vigil" tests="2"><testcase name="cli::tests::parses" classname="vigil::bin/vigil"/><testcase name="run::tests::kills" classname="vigil::bin/vigil"><failure type="test failure"/></testcase></testsuite></testsuites>"#;
        let checks = parse(nextest, Path::new(".")).expect("parse");
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].id, "vigil::bin/vigil::run::tests::kills");
        assert_eq!(checks[0].name, "run::tests::kills");
        let go = r#"<testsuites><testsuite name="example.com/pkg" tests="1"><testcase classname="pkg" name="TestX"><failure message="Failed"/></testcase></testsuite></testsuites>"#;
        assert_eq!(parse(go, Path::new(".")).expect("go")[0].id, "pkg::TestX");
        assert!(parse("<html></html>", Path::new(".")).is_err());
        assert!(parse("<testsuite><testcase", Path::new(".")).is_err());
    }
}
