//! The diagnostics kit of vigil's YAML inputs (policies, plans, contracts): positions on every
//! node, `file:line:column: error: …` lines as compilers print them, unknown keys listed with the
//! accepted ones, and YAML loading errors turned into the same form.

use marked_yaml::{Marker, Node};

pub use crate::policy::model::Loc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub at: Loc,
    pub message: String,
}

impl Diagnostic {
    /// `file:line:column: error: message`, as compilers print it.
    pub fn render(&self, file: &str) -> String {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        format!(
            "{file}:{}:{}: {sev}: {}",
            self.at.line, self.at.column, self.message
        )
    }
}

pub fn loc(m: Option<&Marker>) -> Loc {
    m.map_or(Loc { line: 1, column: 1 }, |m| Loc {
        line: m.line(),
        column: m.column(),
    })
}

/// Every key of a mapping that is not accepted, as errors at the key. (serde's unknown-field
/// errors carry no position with marked-yaml and stop at the first one.)
pub fn unknown_keys(node: &Node, what: &str, accepted: &[&str]) -> Vec<Diagnostic> {
    let Some(map) = node.as_mapping() else {
        return Vec::new();
    };
    let list: Vec<String> = accepted.iter().map(|k| format!("`{k}`")).collect();
    map.keys()
        .filter(|key| !accepted.contains(&key.as_str()))
        .map(|key| Diagnostic {
            severity: Severity::Error,
            at: loc(key.span().start()),
            message: format!(
                "unknown key `{}` in {what}; accepted: {}",
                key.as_str(),
                list.join(", ")
            ),
        })
        .collect()
}

/// A YAML loading error as a diagnostic; `document` names what was being read ("the policy").
pub fn yaml_error(e: &marked_yaml::FromYamlError, document: &str) -> Diagnostic {
    use marked_yaml::LoadError;
    let (mark, message) = match e {
        marked_yaml::FromYamlError::ParseYaml(l) => match l {
            LoadError::TopLevelMustBeMapping(m) => {
                (Some(*m), format!("{document} must be a YAML mapping"))
            }
            LoadError::ScanError(m, s) => (Some(*m), format!("YAML syntax: {}", s.info())),
            LoadError::DuplicateKey(d) => (
                d.key.span().start().copied(),
                format!(
                    "duplicate key `{}` (first at line {})",
                    d.key.as_str(),
                    loc(d.prev_key.span().start()).line
                ),
            ),
            LoadError::UnexpectedAnchor(m) => (Some(*m), "YAML anchors are not accepted".into()),
            LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags are not accepted".into()),
            LoadError::MappingKeyMustBeScalar(m) => {
                (Some(*m), "mapping keys must be plain strings".into())
            }
            other => (None, other.to_string()),
        },
        marked_yaml::FromYamlError::FromNode(n) => {
            (n.start_mark(), lowercase_first(&n.to_string()))
        }
    };
    Diagnostic {
        severity: Severity::Error,
        at: loc(mark.as_ref()),
        message,
    }
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
