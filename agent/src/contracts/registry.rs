//! The contract registry: every `*.yaml` file of a directory (`policies/contracts/` by default),
//! keyed by (contract id, span name). A missing directory is an empty registry; a malformed
//! file is an error naming file:line:column — never skipped.
//!
//! ```yaml
//! contracts:
//!   - id: quick-build
//!     span: subprocess.wait
//!     postconditions: ["duration_ms <= 60000", "exit_code == 0", "process.exec.count <= 500"]
//!     budget_ms: 60000        # the step's timeout when the plan and flags give none
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use marked_yaml::{LoaderOptions, Spanned};
use serde::Deserialize;

use super::clause::Clause;
use crate::diag::{loc, unknown_keys, yaml_error};
use crate::evidence::trace::span;

#[derive(Debug, Clone)]
pub struct Contract {
    pub id: String,
    pub span: String,
    pub postconditions: Vec<Clause>,
    pub budget_ms: Option<u64>,
    /// `file:line` where it was defined.
    pub origin: String,
}

#[derive(Debug, Default)]
pub struct Registry {
    contracts: BTreeMap<(String, String), Contract>,
    /// The same contracts by span name (index into [`SPANS`]), for the layer's lookup when a
    /// span opens or closes.
    by_span: [Vec<Contract>; SPANS.len()],
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{file}:{line}:{column}: {message}")]
    Malformed {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: cannot read: {error}")]
    Unreadable { file: String, error: String },
}

/// The `*.yaml`/`*.yml` files of a contracts directory as (name, text), in name order; no
/// directory means no contracts.
pub fn read_dir_texts(dir: &Path) -> Result<Vec<(String, String)>, RegistryError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let name = file.display().to_string();
            std::fs::read_to_string(&file)
                .map(|text| (name.clone(), text))
                .map_err(|e| RegistryError::Unreadable {
                    file: name,
                    error: e.to_string(),
                })
        })
        .collect()
}

#[derive(Deserialize)]
struct RawFile {
    contracts: Vec<Spanned<RawContract>>,
}

#[derive(Deserialize)]
struct RawContract {
    id: Spanned<String>,
    span: Spanned<String>,
    #[serde(default)]
    postconditions: Vec<Spanned<String>>,
    budget_ms: Option<Spanned<String>>,
}

const FILE_KEYS: [&str; 1] = ["contracts"];
const CONTRACT_KEYS: [&str; 4] = ["id", "span", "postconditions", "budget_ms"];
/// The span names contracts may speak about: the run's own taxonomy.
pub const SPANS: [&str; 8] = span::ALL;

impl Registry {
    /// Load every `*.yaml` in `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<Registry, RegistryError> {
        Registry::from_texts(&read_dir_texts(dir)?)
    }

    /// The contracts of (file name, text) pairs, in order.
    pub fn from_texts(texts: &[(String, String)]) -> Result<Registry, RegistryError> {
        let mut registry = Registry::default();
        for (name, text) in texts {
            registry.add_text(name, text)?;
        }
        Ok(registry)
    }

    /// Add the contracts of one file's text.
    pub fn add_text(&mut self, file: &str, text: &str) -> Result<(), RegistryError> {
        let malformed = |line: usize, column: usize, message: String| RegistryError::Malformed {
            file: file.to_string(),
            line,
            column,
            message,
        };
        let options = LoaderOptions::default().error_on_duplicate_keys(true);
        let doc = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
            let d = yaml_error(
                &marked_yaml::FromYamlError::ParseYaml(e),
                "a contracts file",
            );
            malformed(d.at.line, d.at.column, d.message)
        })?;
        let mut unknown = unknown_keys(&doc, "a contracts file", &FILE_KEYS);
        let items = doc
            .as_mapping()
            .and_then(|m| m.get_node("contracts"))
            .and_then(|n| n.as_sequence());
        for item in items.into_iter().flat_map(|s| s.iter()) {
            unknown.extend(unknown_keys(item, "a contract", &CONTRACT_KEYS));
        }
        if let Some(d) = unknown.first() {
            return Err(malformed(d.at.line, d.at.column, d.message.clone()));
        }
        let raw: RawFile = marked_yaml::from_node(&doc).map_err(|e| {
            let d = yaml_error(&marked_yaml::FromYamlError::FromNode(e), "a contracts file");
            malformed(d.at.line, d.at.column, d.message)
        })?;
        for c in raw.contracts {
            let at = loc(c.span().start());
            if !SPANS.contains(&c.span.as_str()) {
                let p = loc(c.span.span().start());
                return Err(malformed(
                    p.line,
                    p.column,
                    format!(
                        "unknown span `{}`; accepted: {}",
                        c.span.as_str(),
                        SPANS.join(", ")
                    ),
                ));
            }
            let mut postconditions = Vec::new();
            for p in &c.postconditions {
                let clause = Clause::parse(p).map_err(|e| {
                    let at = loc(p.span().start());
                    malformed(at.line, at.column, e.to_string())
                })?;
                postconditions.push(clause);
            }
            let budget_ms = match &c.budget_ms {
                None => None,
                Some(b) => Some(b.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    let at = loc(b.span().start());
                    malformed(
                        at.line,
                        at.column,
                        format!(
                            "`budget_ms` is `{}`; accepted: whole milliseconds ≥ 1",
                            b.as_str()
                        ),
                    )
                })?),
            };
            let key = (c.id.to_string(), c.span.to_string());
            if let Some(first) = self.contracts.get(&key) {
                let p = loc(c.id.span().start());
                return Err(malformed(
                    p.line,
                    p.column,
                    format!(
                        "contract `{}` for span `{}` is already defined at {}",
                        key.0, key.1, first.origin
                    ),
                ));
            }
            let contract = Contract {
                id: key.0.clone(),
                span: key.1.clone(),
                postconditions,
                budget_ms,
                origin: format!("{file}:{}", at.line),
            };
            if let Some(slot) = span_slot(&contract.span) {
                self.by_span[slot].push(contract.clone());
            }
            self.contracts.insert(key, contract);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.contracts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contracts.is_empty()
    }

    /// The contracts about one span name.
    pub fn for_span(&self, span: &str) -> &[Contract] {
        span_slot(span).map_or(&[], |slot| &self.by_span[slot])
    }

    /// The time budget for a span name, the smallest when several contracts give one.
    pub fn budget_ms(&self, span: &str) -> Option<u64> {
        self.for_span(span).iter().filter_map(|c| c.budget_ms).min()
    }
}

/// A span name's index in [`SPANS`].
pub fn span_slot(name: &str) -> Option<usize> {
    SPANS.iter().position(|s| *s == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "contracts:\n  - id: quick\n    span: subprocess.wait\n    postconditions: [\"duration_ms <= 1000\", \"exit_code == 0\"]\n    budget_ms: 5000\n  - id: quick\n    span: run.total\n";

    #[test]
    fn contracts_load_keyed_by_id_and_span_with_budgets() {
        let mut r = Registry::default();
        r.add_text("c.yaml", GOOD).expect("load");
        assert_eq!(r.len(), 2, "same id, two spans: two contracts");
        assert_eq!(
            r.for_span("subprocess.wait")
                .first()
                .map(|c| c.postconditions.len()),
            Some(2)
        );
        assert_eq!(r.budget_ms("subprocess.wait"), Some(5000));
        assert_eq!(r.budget_ms("case.run"), None);
        assert!(
            Registry::load_dir(Path::new("/nonexistent-vigil-contracts"))
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn malformed_files_name_file_line_and_column() {
        let err = |text: &str| {
            let mut r = Registry::default();
            r.add_text("c.yaml", text).expect_err(text).to_string()
        };
        assert!(
            err("contracts:\n  - id: x\n    span: sub.wait\n")
                .starts_with("c.yaml:3:11: unknown span `sub.wait`")
        );
        assert!(
            err("contracts:\n  - id: x\n    span: run.total\n    postconditions: [\"wall < 5\"]\n")
                .starts_with("c.yaml:4:22: `wall < 5`: unknown field `wall`")
        );
        assert!(
            err("contracts:\n  - id: x\n    span: run.total\n    timeout: 5\n")
                .starts_with("c.yaml:4:5: unknown key `timeout` in a contract")
        );
        assert!(
            err("contracts:\n  - id: x\n    span: run.total\n    budget_ms: soon\n")
                .starts_with("c.yaml:4:16: `budget_ms` is `soon`")
        );
        assert!(
            err(&format!("{GOOD}  - id: quick\n    span: run.total\n")).starts_with(
                "c.yaml:8:9: contract `quick` for span `run.total` is already defined at c.yaml:6"
            )
        );
        assert!(err("contracts: [\n").starts_with("c.yaml:2:1: YAML syntax"));
    }
}
