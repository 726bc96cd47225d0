//! The policy parser: every diagnostic with its position.

use super::*;

const GOOD: &str = "version: 1\nname: t\nmode: enforce\ndefault: deny\n";

/// Every diagnostic as `line:column: severity: message`.
fn said(yaml: &str) -> Vec<String> {
    parse(yaml)
        .diagnostics
        .iter()
        .map(|d| d.render("f").trim_start_matches("f:").to_string())
        .collect()
}

fn with(body: &str) -> String {
    format!("{GOOD}{body}")
}

#[test]
fn a_good_policy_parses_with_its_rules_in_order() {
    let p = parse(&with(
        "filesystem:\n  write:\n    - id: w\n      paths: [\"${WORKSPACE}/out\", /tmp]\nnetwork:\n  connect:\n    - id: web\n      cidrs: [\"0.0.0.0/0\", \"::/0\"]\n      ports: [443, \"8000-8080\"]\n",
    ));
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    let policy = p.policy.expect("policy");
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(policy.write[0].paths, ["${WORKSPACE}/out", "/tmp"]);
    assert_eq!(
        policy.write[0].at,
        Loc { line: 7, column: 9 },
        "the rule's first key"
    );
    assert_eq!(
        policy.connect[0].ports,
        [Ports { lo: 443, hi: 443 }, Ports { lo: 8000, hi: 8080 }]
    );
    assert_eq!(policy.connect[0].cidrs[1].prefix, 0);
}

#[test]
fn each_kind_of_mistake_is_named_where_it_is() {
    let cases: [(&str, String, &str); 14] = [
        (
            "syntax",
            "version: 1\nname: [unclosed\n".into(),
            "3:1: error: YAML syntax",
        ),
        (
            "not a mapping",
            "- a\n- b\n".into(),
            "1:1: error: the policy must be a YAML mapping",
        ),
        (
            "duplicate key",
            format!("{GOOD}mode: audit\n"),
            "5:1: error: duplicate key `mode` (first at line 3)",
        ),
        (
            "unknown top key",
            with("rules: []\n"),
            "5:1: error: unknown key `rules` in the policy; accepted: `version`, `name`, `mode`, `default`, `filesystem`, `network`",
        ),
        (
            "unknown rule key",
            with("filesystem:\n  read:\n    - id: r\n      path: [/]\n"),
            "8:7: error: unknown key `path` in a filesystem.read rule; accepted: `id`, `action`, `paths`",
        ),
        (
            "missing field",
            "version: 1\nname: t\nmode: audit\n".into(),
            "1:1: error: missing `default`",
        ),
        (
            "bad version",
            "version: 2\nname: t\nmode: audit\ndefault: deny\n".into(),
            "1:10: error: `version` is `2`; accepted: 1",
        ),
        (
            "bad mode",
            "version: 1\nname: t\nmode: watch\ndefault: deny\n".into(),
            "3:7: error: `mode` is `watch`; accepted: audit, enforce",
        ),
        (
            "bad action",
            with("filesystem:\n  read:\n    - id: r\n      action: maybe\n      paths: [/]\n"),
            "8:15: error: `action` is `maybe`; accepted: allow, deny",
        ),
        (
            "duplicate id",
            with(
                "filesystem:\n  read:\n    - id: r\n      paths: [/usr]\n  write:\n    - id: r\n      paths: [/tmp]\n",
            ),
            "10:11: error: rule id `r` is already used at line 7",
        ),
        (
            "relative path",
            with("filesystem:\n  exec:\n    - id: e\n      paths: [bin]\n"),
            "8:15: error: path `bin` is relative; paths are absolute or start with a variable",
        ),
        (
            "unknown variable",
            with("filesystem:\n  exec:\n    - id: e\n      paths: [\"${REPO}/bin\"]\n"),
            "8:15: error: path `${REPO}/bin`: unknown variable `${REPO}`; accepted: ${WORKSPACE}, ${HOME}, ${TMPDIR}",
        ),
        (
            "bad cidr",
            with("network:\n  connect:\n    - id: n\n      cidrs: [\"10.0.0.0/33\"]\n"),
            "8:15: error: `10.0.0.0/33`: prefix length must be 0–32",
        ),
        (
            "bad port range",
            with(
                "network:\n  send:\n    - id: n\n      cidrs: [\"::1\"]\n      ports: [\"90-80\"]\n",
            ),
            "9:15: error: `90-80` is not a port or port range; accepted: 1–65535 or LO-HI with LO ≤ HI",
        ),
    ];
    for (what, yaml, expected) in cases {
        let p = parse(&yaml);
        assert!(
            p.policy.is_none(),
            "{what}: a policy with errors is refused"
        );
        let got = said(&yaml);
        assert!(
            got.iter().any(|g| g.starts_with(expected)),
            "{what}: expected `{expected}`, got {got:#?}"
        );
    }
}

#[test]
fn every_bad_value_of_a_list_is_reported_not_just_the_first() {
    let got = said(&with(
        "network:\n  connect:\n    - id: n\n      cidrs: [\"300.1.1.1\", \"10.0.0.0/40\"]\n      ports: [0, 70000]\n",
    ));
    assert_eq!(got.len(), 4, "{got:#?}");
}

#[test]
fn shadowed_and_contradicting_rules_are_warnings() {
    let p = parse(&with(
        "filesystem:\n  read:\n    - id: all\n      paths: [/]\n    - id: usr\n      paths: [/usr]\n    - id: no-etc\n      action: deny\n      paths: [/etc]\nnetwork:\n  connect:\n    - id: web\n      cidrs: [\"0.0.0.0/0\"]\n      ports: [\"1-1024\"]\n    - id: https\n      cidrs: [\"10.0.0.0/8\"]\n      ports: [443]\n    - id: other\n      cidrs: [\"10.0.0.0/8\"]\n      ports: [8080]\n",
    ));
    assert!(p.policy.is_some(), "warnings do not refuse a policy");
    let got: Vec<String> = p.diagnostics.iter().map(|d| d.render("f")).collect();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got[0].starts_with(
        "f:9:9: warning: filesystem.read rule `usr` is shadowed by rule `all` (line 7)"
    ));
    assert!(got[1].starts_with(
        "f:11:9: warning: filesystem.read rule `no-etc` contradicts rule `all` (line 7)"
    ));
    assert!(got[2].contains("network.connect rule `https` is shadowed by rule `web`"));
}
