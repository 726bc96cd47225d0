//! Every parser of untrusted input under property-based tests (proptest, stable Rust): kernel
//! event bytes, policy, plan and contract YAML, contract clauses, SDK lines, JUnit XML, and the
//! JSON documents of a bundle. Inputs are arbitrary bytes and random edits of real, valid
//! inputs (the shipped policies and contracts, the example plan), so the parsers are driven past
//! their first checks. Properties: no panic, no hang, errors point inside the input, and what is
//! accepted holds no secret. `cargo xtask fuzz --cases N` runs them with N cases each (CI runs the
//! default); every failure found becomes a regression case below.

use std::path::Path;

use proptest::prelude::*;
use vigil::evidence::redact::Redactor;

/// A real, valid input of the repository.
fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One random edit of a text: replace, insert or delete a byte-sized piece at a position.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, char),
    Insert(usize, String),
    Delete(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Characters YAML, JSON and XML give meaning to, and some that they do not.
    let special = prop::sample::select(vec![
        ':', '-', ' ', '\n', '\t', '"', '\'', '[', ']', '{', '}', ',', '#', '&', '*', '!', '|',
        '>', '<', '/', '=', '\\', '%', '@', '`', '\0', 'é', 'a', '0', '9',
    ]);
    prop_oneof![
        (any::<usize>(), special.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<usize>(), prop::collection::vec(special, 1..8))
            .prop_map(|(i, cs)| Edit::Insert(i, cs.into_iter().collect())),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len().max(1);
        match e {
            Edit::Replace(i, c) if !chars.is_empty() => chars[i % len] = *c,
            Edit::Insert(i, s) => {
                let at = i % (chars.len() + 1);
                chars.splice(at..at, s.chars());
            }
            Edit::Delete(i, n) if !chars.is_empty() => {
                let at = i % len;
                let end = (at + n).min(chars.len());
                chars.drain(at..end);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// A text derived from `base` by up to eight random edits.
fn mutated(base: String) -> impl Strategy<Value = String> {
    prop::collection::vec(edit(), 0..8).prop_map(move |edits| apply(&base, &edits))
}

/// Bytes that start with a plausible event header (version 1, a known kind), then anything.
fn event_bytes() -> impl Strategy<Value = Vec<u8>> {
    (1u32..=10, prop::collection::vec(any::<u8>(), 0..1200)).prop_map(|(kind, mut tail)| {
        let mut b = Vec::with_capacity(tail.len() + 8);
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.append(&mut tail);
        b
    })
}

const SECRET: &str = "hunter2-very-secret";

fn redactor() -> Redactor {
    Redactor::new(&[("API_TOKEN".into(), SECRET.into())])
}

proptest! {
    // Cases from PROPTEST_CASES (`cargo xtask fuzz --cases N`), 256 by default; failures are
    // pinned in `regressions` below, not written into the source tree.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn kernel_event_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        let _ = vigil::kernel::decode(&bytes);
    }

    #[test]
    fn decoded_kernel_events_carry_no_secret_once_redacted(bytes in event_bytes(), at in any::<usize>()) {
        // Plant the secret somewhere in the body: wherever a path or argv lands, it is masked.
        let mut bytes = bytes;
        if bytes.len() > 64 {
            let i = 56 + at % (bytes.len() - 56);
            let end = (i + SECRET.len()).min(bytes.len());
            bytes[i..end].copy_from_slice(&SECRET.as_bytes()[..end - i]);
        }
        if let Ok(mut ev) = vigil::kernel::decode(&bytes) {
            ev.redact(&redactor());
            let shown = format!("{ev:?}");
            // The comm fields are the kernel's 16-byte task names, not data a process chose.
            let comm_free = shown.replace(&ev.header().comm, "");
            prop_assert!(!comm_free.contains(SECRET), "{shown}");
        }
    }

    #[test]
    fn policy_parsing_never_panics_and_points_inside_the_file(
        text in prop_oneof![
            mutated(repo_file("policies/strict-example.yaml")),
            mutated(repo_file("policies/readonly-workspace.yaml")),
            "\\PC{0,400}",
        ]
    ) {
        let parsed = vigil::policy::parse(&text);
        let lines = text.lines().count().max(1) + 1;
        for d in &parsed.diagnostics {
            prop_assert!(d.at.line >= 1 && d.at.line <= lines, "{d:?} in {lines} lines");
        }
    }

    #[test]
    fn plan_parsing_never_panics(
        text in prop_oneof![mutated(repo_file("examples/gate/plan.yaml")), "\\PC{0,400}"]
    ) {
        let _ = vigil::run::plan_file::parse("plan.yaml", &text, Path::new("/tmp"));
    }

    #[test]
    fn contract_files_and_clauses_never_panic(
        text in prop_oneof![mutated(repo_file("policies/contracts/ci-default.yaml")), "\\PC{0,300}"],
        clause in prop_oneof![
            mutated("duration_ms <= 60000".to_string()),
            mutated("process.exec.count >= 1".to_string()),
            "\\PC{0,60}",
        ],
    ) {
        let mut registry = vigil::contracts::Registry::default();
        let _ = registry.add_text("c.yaml", &text);
        let _ = vigil::contracts::clause::Clause::parse(&clause);
    }

    #[test]
    fn sdk_lines_never_panic_and_accepted_events_hold_no_secret(
        line in prop_oneof![
            mutated(format!(r#"{{"event":"tool_call_started","tool":"sh","tool_call_id":"c1","data":{{"cmd":"{SECRET}","token":"x"}}}}"#)),
            mutated(format!(r#"{{"event":"checkpoint","name":"{SECRET}"}}"#)),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    ) {
        if let Ok(ev) = vigil::sdk::event::parse_line(line.as_bytes(), &redactor()) {
            let shown = format!("{:?} {:?}", ev.fields, ev.data);
            prop_assert!(!shown.contains(SECRET), "{shown}");
        }
    }

    #[test]
    fn junit_parsing_never_panics(
        text in prop_oneof![
            mutated(r#"<?xml version="1.0"?><testsuites><testsuite name="s" tests="2"><testcase classname="tests.test_a" name="test_ok" file="tests/test_a.py"/><testcase classname="tests.test_a" name="test_bad"><failure message="boom">trace</failure></testcase></testsuite></testsuites>"#.to_string()),
            "\\PC{0,300}",
        ]
    ) {
        let _ = vigil::run::junit::parse(&text, Path::new("/tmp"));
    }
}

proptest! {
    // Each case writes a bundle directory: fewer cases, same properties.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).map_or(32, |c: u32| c.min(256)),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn bundle_readers_never_panic_on_arbitrary_documents(
        index in prop_oneof![
            mutated(r#"{"schema":"vigil.artifact_index.v1","run_id":"r","created_at":"x","state":"committed","files":[{"path":"run-trace.json","sha256":"00","bytes":2}]}"#.to_string()),
            "\\PC{0,200}",
        ],
        trace in prop_oneof![
            mutated(r#"{"run_id":"r","run_status":{"state":"committed"},"status":"passed","summary":{"steps":[]},"spans":[],"events":[]}"#.to_string()),
            "\\PC{0,200}",
        ],
        events in prop_oneof![
            mutated("{\"seq\":0,\"kind\":\"run_started\",\"ts\":\"x\",\"ts_ns\":1,\"data\":{}}\n".to_string()),
            "\\PC{0,200}",
        ],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = dir.path().join("r");
        std::fs::create_dir(&b).expect("mkdir");
        std::fs::write(b.join("artifact_index.json"), &index).expect("write");
        std::fs::write(b.join("run-trace.json"), &trace).expect("write");
        std::fs::write(b.join("events.ndjson"), &events).expect("write");
        let _ = vigil::evidence::reader::validate(&b);
        let _ = vigil::evidence::inspect::inspect(&b);
        let _ = vigil::evidence::reader::repair(&b);
    }
}

/// Regression cases found by the properties above, with their minimal inputs.
#[test]
fn regressions() {
    // A secret value under an ordinary key of an SDK event's `data` was stored verbatim.
    let line = format!(
        r#"{{"event":"tool_call_started","tool":"sh","tool_call_id":"c1","data":{{"cmd":"{SECRET}","token":"x"}}}}"#
    );
    let ev = vigil::sdk::event::parse_line(line.as_bytes(), &redactor()).expect("valid");
    assert!(!format!("{:?}", ev.data).contains(SECRET));
    // An argv `NAME=value` whose secret-looking name contains the secret value itself kept the
    // name verbatim.
    let argv = redactor().redact_argv(&[format!("x{SECRET}y=v")]);
    assert!(!argv[0].contains(SECRET), "{argv:?}");
    assert!(argv[0].ends_with("=[REDACTED]"), "{argv:?}");
}
