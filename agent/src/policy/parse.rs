//! Reading a policy file: YAML with a position on every node, so that every error and warning
//! names the file, line and column it is about. Unknown keys, duplicate keys, bad values and
//! missing fields are errors; nothing is guessed.

use std::net::IpAddr;

use marked_yaml::{LoaderOptions, Node, Spanned};
use serde::Deserialize;

use super::model::{Action, Cidr, Loc, Mode, NetRule, PathRule, Policy, Ports, VARIABLES};
pub use crate::diag::{Diagnostic, Severity};
use crate::diag::{loc, unknown_keys, yaml_error};

/// The policy (when it has no errors) and everything said about it.
#[derive(Debug)]
pub struct Parsed {
    pub policy: Option<Policy>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    default: Option<Spanned<String>>,
    filesystem: Option<RawFs>,
    network: Option<RawNet>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFs {
    #[serde(default)]
    read: Vec<Spanned<RawPathRule>>,
    #[serde(default)]
    write: Vec<Spanned<RawPathRule>>,
    #[serde(default)]
    exec: Vec<Spanned<RawPathRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPathRule {
    id: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    paths: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNet {
    #[serde(default)]
    connect: Vec<Spanned<RawNetRule>>,
    #[serde(default)]
    send: Vec<Spanned<RawNetRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetRule {
    id: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    cidrs: Option<Vec<Spanned<String>>>,
    ports: Option<Vec<Spanned<String>>>,
}

/// Every item, when every item checked out (each was checked, so each error was reported).
fn all<T>(items: Vec<Option<T>>) -> Option<Vec<T>> {
    items.into_iter().collect()
}

fn at<T>(s: &Spanned<T>) -> Loc {
    loc(s.span().start())
}

/// Collects diagnostics while the raw document is turned into a policy.
#[derive(Default)]
struct Checker {
    out: Vec<Diagnostic>,
}

impl Checker {
    fn error(&mut self, at: Loc, message: String) {
        self.out.push(Diagnostic {
            severity: Severity::Error,
            at,
            message,
        });
    }

    fn warn(&mut self, at: Loc, message: String) {
        self.out.push(Diagnostic {
            severity: Severity::Warning,
            at,
            message,
        });
    }

    fn required<'a, T>(&mut self, v: &'a Option<T>, what: &str, at: Loc) -> Option<&'a T> {
        if v.is_none() {
            self.error(at, format!("missing `{what}`"));
        }
        v.as_ref()
    }

    fn choice<T: Copy>(
        &mut self,
        v: &Spanned<String>,
        field: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let found = options.iter().find(|(name, _)| *name == v.as_str());
        if found.is_none() {
            let accepted: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            self.error(
                at(v),
                format!(
                    "`{field}` is `{}`; accepted: {}",
                    v.as_str(),
                    accepted.join(", ")
                ),
            );
        }
        found.map(|(_, t)| *t)
    }

    fn action(&mut self, v: &Option<Spanned<String>>) -> Option<Action> {
        match v {
            None => Some(Action::Allow),
            Some(v) => self.choice(
                v,
                "action",
                &[("allow", Action::Allow), ("deny", Action::Deny)],
            ),
        }
    }

    fn rule_id(
        &mut self,
        id: &Option<Spanned<String>>,
        rule_at: Loc,
        seen: &mut Vec<(String, Loc)>,
    ) -> Option<String> {
        let id = self.required(id, "id", rule_at)?;
        let ok = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            self.error(
                at(id),
                format!(
                    "rule id `{}` may only hold ASCII letters, digits, `-`, `_` and `.`",
                    id.as_str()
                ),
            );
            return None;
        }
        if let Some((_, first)) = seen.iter().find(|(s, _)| s == id.as_str()) {
            self.error(
                at(id),
                format!(
                    "rule id `{}` is already used at line {}",
                    id.as_str(),
                    first.line
                ),
            );
            return None;
        }
        seen.push((id.to_string(), at(id)));
        Some(id.to_string())
    }

    fn path(&mut self, p: &Spanned<String>) -> Option<String> {
        let s = p.as_str();
        let (var, rest) = match s.strip_prefix("${") {
            Some(r) => match r.split_once('}') {
                Some((name, rest)) => (Some(name), rest),
                None => {
                    self.error(at(p), format!("path `{s}`: unclosed `${{`"));
                    return None;
                }
            },
            None => (None, s),
        };
        if let Some(name) = var
            && !VARIABLES.contains(&name)
        {
            self.error(
                at(p),
                format!("path `{s}`: unknown variable `${{{name}}}`; accepted: ${{WORKSPACE}}, ${{HOME}}, ${{TMPDIR}}"),
            );
            return None;
        }
        if rest.contains("${") {
            self.error(
                at(p),
                format!("path `{s}`: a variable may only start a path"),
            );
            return None;
        }
        if var.is_none() && !s.starts_with('/') {
            self.error(
                at(p),
                format!("path `{s}` is relative; paths are absolute or start with a variable"),
            );
            return None;
        }
        if var.is_some() && !(rest.is_empty() || rest.starts_with('/')) {
            self.error(
                at(p),
                format!("path `{s}`: a variable is followed by `/` or nothing"),
            );
            return None;
        }
        Some(s.to_string())
    }

    fn cidr(&mut self, c: &Spanned<String>) -> Option<Cidr> {
        let s = c.as_str();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            self.error(
                at(c),
                format!("`{s}` is not a CIDR; accepted: an IPv4 or IPv6 address with an optional /prefix, e.g. 10.0.0.0/8 or ::1/128"),
            );
            return None;
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    self.error(at(c), format!("`{s}`: prefix length must be 0–{max}"));
                    return None;
                }
            },
        };
        Some(Cidr { addr, prefix })
    }

    fn ports(&mut self, p: &Spanned<String>) -> Option<Ports> {
        let s = p.as_str();
        let parse = |x: &str| x.trim().parse::<u16>().ok().filter(|n| *n > 0);
        let range = match s.split_once('-') {
            Some((lo, hi)) => parse(lo).zip(parse(hi)),
            None => parse(s).map(|n| (n, n)),
        };
        match range {
            Some((lo, hi)) if lo <= hi => Some(Ports { lo, hi }),
            _ => {
                self.error(
                    at(p),
                    format!(
                        "`{s}` is not a port or port range; accepted: 1–65535 or LO-HI with LO ≤ HI"
                    ),
                );
                None
            }
        }
    }

    /// A required, non-empty list of values, each checked (and each error reported).
    fn list<T>(
        &mut self,
        values: &Option<Vec<Spanned<String>>>,
        field: &str,
        one: &str,
        rule_at: Loc,
        check: impl Fn(&mut Self, &Spanned<String>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let values = self.required(values, field, rule_at)?;
        if values.is_empty() {
            self.error(
                rule_at,
                format!("`{field}` is empty; a rule needs at least one {one}"),
            );
            return None;
        }
        all(values.iter().map(|v| check(self, v)).collect())
    }

    fn path_rules(
        &mut self,
        list: &str,
        raw: &[Spanned<RawPathRule>],
        ids: &mut Vec<(String, Loc)>,
    ) -> Vec<PathRule> {
        let mut rules = Vec::new();
        for r in raw {
            let rule_at = at(r);
            let id = self.rule_id(&r.id, rule_at, ids);
            let action = self.action(&r.action);
            let paths = self.list(&r.paths, "paths", "path", rule_at, Self::path);
            if let (Some(id), Some(action), Some(paths)) = (id, action, paths) {
                rules.push(PathRule {
                    id,
                    action,
                    paths,
                    at: rule_at,
                });
            }
        }
        self.shadowing(
            list,
            &rules,
            |a, b| {
                b.paths
                    .iter()
                    .all(|p| a.paths.iter().any(|q| super::model::path_covers(q, p)))
            },
            |r| (&r.id, r.action, r.at),
        );
        rules
    }

    fn net_rules(
        &mut self,
        list: &str,
        raw: &[Spanned<RawNetRule>],
        ids: &mut Vec<(String, Loc)>,
    ) -> Vec<NetRule> {
        let mut rules = Vec::new();
        for r in raw {
            let rule_at = at(r);
            let id = self.rule_id(&r.id, rule_at, ids);
            let action = self.action(&r.action);
            let cidrs = self.list(&r.cidrs, "cidrs", "network", rule_at, Self::cidr);
            let ports = match &r.ports {
                None => Some(Vec::new()),
                Some(p) => all(p.iter().map(|p| self.ports(p)).collect()),
            };
            if let (Some(id), Some(action), Some(cidrs), Some(ports)) = (id, action, cidrs, ports) {
                rules.push(NetRule {
                    id,
                    action,
                    cidrs,
                    ports,
                    at: rule_at,
                });
            }
        }
        self.shadowing(
            list,
            &rules,
            |a, b| {
                let nets = b.cidrs.iter().all(|c| a.cidrs.iter().any(|d| d.covers(c)));
                let ports = a.ports.is_empty()
                    || (!b.ports.is_empty()
                        && b.ports.iter().all(|p| a.ports.iter().any(|q| q.covers(p))));
                nets && ports
            },
            |r| (&r.id, r.action, r.at),
        );
        rules
    }

    /// Warn about rules an earlier rule of the same list already decides (first match wins):
    /// with the same action they are redundant, with the other they contradict it and never
    /// apply.
    fn shadowing<R>(
        &mut self,
        list: &str,
        rules: &[R],
        covers: impl Fn(&R, &R) -> bool,
        meta: impl Fn(&R) -> (&String, Action, Loc),
    ) {
        for (i, later) in rules.iter().enumerate() {
            let Some(earlier) = rules[..i].iter().find(|e| covers(e, later)) else {
                continue;
            };
            let (id, action, loc) = meta(later);
            let (eid, eaction, eloc) = meta(earlier);
            let msg = if action == eaction {
                format!(
                    "{list} rule `{id}` is shadowed by rule `{eid}` (line {}), which already covers it; it never applies",
                    eloc.line
                )
            } else {
                format!(
                    "{list} rule `{id}` contradicts rule `{eid}` (line {}), which covers it with the opposite action and wins (first match); it never applies",
                    eloc.line
                )
            };
            self.warn(loc, msg);
        }
    }
}

/// The keys each level accepts: (path of the level, keys).
const TOP_KEYS: [&str; 6] = [
    "version",
    "name",
    "mode",
    "default",
    "filesystem",
    "network",
];
const FS_KEYS: [&str; 3] = ["read", "write", "exec"];
const NET_KEYS: [&str; 2] = ["connect", "send"];
const PATH_RULE_KEYS: [&str; 3] = ["id", "action", "paths"];
const NET_RULE_KEYS: [&str; 4] = ["id", "action", "cidrs", "ports"];

impl Checker {
    fn keys(&mut self, node: &Node, what: &str, accepted: &[&str]) {
        self.out.extend(unknown_keys(node, what, accepted));
    }

    fn rule_list_keys(&mut self, node: Option<&Node>, what: &str, accepted: &[&str]) {
        let rules = node.and_then(Node::as_sequence).map(|s| s.iter());
        for rule in rules.into_iter().flatten() {
            self.keys(rule, &format!("a {what} rule"), accepted);
        }
    }

    fn unknown_keys(&mut self, doc: &Node) {
        self.keys(doc, "the policy", &TOP_KEYS);
        let Some(top) = doc.as_mapping() else {
            return;
        };
        if let Some(fs) = top.get_node("filesystem") {
            self.keys(fs, "`filesystem`", &FS_KEYS);
            for list in FS_KEYS {
                let rules = fs.as_mapping().and_then(|m| m.get_node(list));
                self.rule_list_keys(rules, &format!("filesystem.{list}"), &PATH_RULE_KEYS);
            }
        }
        if let Some(net) = top.get_node("network") {
            self.keys(net, "`network`", &NET_KEYS);
            for list in NET_KEYS {
                let rules = net.as_mapping().and_then(|m| m.get_node(list));
                self.rule_list_keys(rules, &format!("network.{list}"), &NET_RULE_KEYS);
            }
        }
    }
}

/// Parse and check a policy document.
pub fn parse(text: &str) -> Parsed {
    let mut c = Checker::default();
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let failed = |c: Checker| Parsed {
        policy: None,
        diagnostics: c.out,
    };
    let doc = match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(d) => d,
        Err(e) => {
            c.out.push(yaml_error(
                &marked_yaml::FromYamlError::ParseYaml(e),
                "the policy",
            ));
            return failed(c);
        }
    };
    c.unknown_keys(&doc);
    if !c.out.is_empty() {
        c.out.sort_by_key(|d| (d.at.line, d.at.column));
        return failed(c);
    }
    let raw: RawPolicy = match marked_yaml::from_node(&doc) {
        Ok(r) => r,
        Err(e) => {
            c.out.push(yaml_error(
                &marked_yaml::FromYamlError::FromNode(e),
                "the policy",
            ));
            return failed(c);
        }
    };
    let top = Loc { line: 1, column: 1 };
    let version = c.required(&raw.version, "version", top).and_then(|v| {
        let ok = v.as_str() == "1";
        if !ok {
            c.error(at(v), format!("`version` is `{}`; accepted: 1", v.as_str()));
        }
        ok.then_some(1)
    });
    let name = c.required(&raw.name, "name", top).and_then(|n| {
        if n.trim().is_empty() {
            c.error(at(n), "`name` is empty".into());
            None
        } else {
            Some(n.to_string())
        }
    });
    let mode = c.required(&raw.mode, "mode", top).and_then(|m| {
        c.choice(
            m,
            "mode",
            &[("audit", Mode::Audit), ("enforce", Mode::Enforce)],
        )
    });
    let default = c.required(&raw.default, "default", top).and_then(|d| {
        c.choice(
            d,
            "default",
            &[("allow", Action::Allow), ("deny", Action::Deny)],
        )
    });
    let fs = raw.filesystem.unwrap_or_default();
    let net = raw.network.unwrap_or_default();
    let mut ids = Vec::new();
    let read = c.path_rules("filesystem.read", &fs.read, &mut ids);
    let write = c.path_rules("filesystem.write", &fs.write, &mut ids);
    let exec = c.path_rules("filesystem.exec", &fs.exec, &mut ids);
    let connect = c.net_rules("network.connect", &net.connect, &mut ids);
    let send = c.net_rules("network.send", &net.send, &mut ids);
    let errors = c.out.iter().any(|d| d.severity == Severity::Error);
    let policy = match (version, name, mode, default, errors) {
        (Some(version), Some(name), Some(mode), Some(default), false) => Some(Policy {
            version,
            name,
            mode,
            default,
            read,
            write,
            exec,
            connect,
            send,
        }),
        _ => None,
    };
    c.out.sort_by_key(|d| (d.at.line, d.at.column));
    Parsed {
        policy,
        diagnostics: c.out,
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
