//! The plan file of `vigil run --plan FILE` (YAML, or JSON — a YAML subset): ordered steps of a
//! CI gate. Everything is checked before anything runs; an error names file:line:column and
//! what is accepted (schema: specs/schema/plan.v1.json).
//!
//! ```yaml
//! timeout: 10m                  # the whole chain (timeout.case.chain)
//! steps:
//!   - name: unit
//!     command: ["pytest", "-q", "--junitxml=junit.xml"]   # argv, or a string run by `sh -c`
//!     cwd: .                    # relative to the plan file's directory
//!     env: {PYTHONHASHSEED: "0"}
//!     timeout: 5m               # this step (timeout.subprocess.wait)
//!     governance: true          # failing → triage
//!     junit: junit.xml          # the step's JUnit report, for triage
//!     triage: ["pytest", "-q", "--junitxml=junit.xml", "{ids}"]
//!     depends_on: [build]       # earlier steps that must have passed
//!     setup: "./start-db.sh"    # harness around the step (timeout.case.harness)
//!     teardown: "./stop-db.sh"
//!     harness_timeout: 30s
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::{LoaderOptions, Node};

use crate::diag::{Diagnostic, loc, unknown_keys, yaml_error};

/// A command: an argv, or a shell string run with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepCommand {
    Argv(Vec<String>),
    Shell(String),
}

impl StepCommand {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            StepCommand::Argv(a) => a.clone(),
            StepCommand::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        }
    }

    /// The command with `{ids}` (and `{names}`) expanded: in an argv, an element that is
    /// exactly the placeholder becomes one element per id; in a shell string, the ids are
    /// single-quoted and joined by spaces.
    pub fn expand(&self, ids: &[String], names: &[String]) -> StepCommand {
        match self {
            StepCommand::Argv(a) => StepCommand::Argv(
                a.iter()
                    .flat_map(|x| match x.as_str() {
                        "{ids}" => ids.to_vec(),
                        "{names}" => names.to_vec(),
                        _ => vec![x.clone()],
                    })
                    .collect(),
            ),
            StepCommand::Shell(s) => {
                let quote = |v: &[String]| {
                    v.iter()
                        .map(|i| format!("'{}'", i.replace('\'', r"'\''")))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                StepCommand::Shell(
                    s.replace("{ids}", &quote(ids))
                        .replace("{names}", &quote(names)),
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub command: StepCommand,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub governance: bool,
    pub junit: Option<PathBuf>,
    pub triage: Option<StepCommand>,
    pub depends_on: Vec<String>,
    pub setup: Option<StepCommand>,
    pub teardown: Option<StepCommand>,
    pub harness_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub timeout: Option<Duration>,
    pub steps: Vec<Step>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--plan {file}: cannot read: {error}")]
    Unreadable { file: String, error: std::io::Error },
    #[error("--plan {file}:{line}:{column}: {message}")]
    Malformed {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

const PLAN_KEYS: [&str; 3] = ["version", "timeout", "steps"];
const STEP_KEYS: [&str; 12] = [
    "name",
    "command",
    "cwd",
    "env",
    "timeout",
    "governance",
    "junit",
    "triage",
    "depends_on",
    "setup",
    "teardown",
    "harness_timeout",
];

struct Reader<'a> {
    file: &'a str,
    base: &'a Path,
}

type R<T> = Result<T, PlanError>;

impl Reader<'_> {
    fn err(&self, node: Option<&Node>, message: String) -> PlanError {
        let at = loc(node.and_then(|n| n.span().start()));
        PlanError::Malformed {
            file: self.file.to_string(),
            line: at.line,
            column: at.column,
            message,
        }
    }

    /// A diagnostic of the shared YAML helpers as this file's error.
    fn diag(&self, d: &Diagnostic) -> PlanError {
        PlanError::Malformed {
            file: self.file.to_string(),
            line: d.at.line,
            column: d.at.column,
            message: d.message.clone(),
        }
    }

    fn scalar<'n>(&self, node: &'n Node, what: &str) -> R<&'n str> {
        node.as_scalar()
            .map(|s| s.as_str())
            .ok_or_else(|| self.err(Some(node), format!("`{what}` must be a string")))
    }

    fn duration(&self, node: Option<&Node>, what: &str) -> R<Option<Duration>> {
        let Some(node) = node else { return Ok(None) };
        let text = self.scalar(node, what)?;
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(self.err(
                Some(node),
                format!("`{what}` is `{text}`; accepted: a duration > 0 such as 90s, 1500ms or 2m"),
            )),
        }
    }

    fn path(&self, node: Option<&Node>, what: &str) -> R<Option<PathBuf>> {
        node.map(|n| self.scalar(n, what).map(|p| self.base.join(p)))
            .transpose()
    }

    fn command(&self, node: Option<&Node>, what: &str) -> R<Option<StepCommand>> {
        let Some(node) = node else { return Ok(None) };
        if let Some(s) = node.as_scalar() {
            if s.as_str().trim().is_empty() {
                return Err(self.err(Some(node), format!("`{what}` is empty")));
            }
            return Ok(Some(StepCommand::Shell(s.as_str().to_string())));
        }
        let Some(seq) = node.as_sequence() else {
            return Err(self.err(
                Some(node),
                format!("`{what}` must be an argv list or a shell string"),
            ));
        };
        let argv = seq
            .iter()
            .map(|n| self.scalar(n, what).map(str::to_string))
            .collect::<R<Vec<_>>>()?;
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err(self.err(Some(node), format!("`{what}` has no program")));
        }
        Ok(Some(StepCommand::Argv(argv)))
    }

    fn step(&self, node: &Node, earlier: &[Step]) -> R<Step> {
        if let Some(d) = unknown_keys(node, "a step", &STEP_KEYS).first() {
            return Err(self.diag(d));
        }
        let Some(map) = node.as_mapping() else {
            return Err(self.err(Some(node), "a step must be a mapping".into()));
        };
        let get = |k: &str| map.get_node(k);
        let name_node =
            get("name").ok_or_else(|| self.err(Some(node), "a step needs a `name`".into()))?;
        let name = self.scalar(name_node, "name")?.to_string();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(self.err(
                Some(name_node),
                format!("step name `{name}`: accepted: ASCII letters, digits, `_` and `-`"),
            ));
        }
        if earlier.iter().any(|s| s.name == name) {
            return Err(self.err(Some(name_node), format!("a step `{name}` already exists")));
        }
        let command = self
            .command(get("command"), "command")?
            .ok_or_else(|| self.err(Some(node), format!("step `{name}` needs a `command`")))?;
        let mut env = Vec::new();
        if let Some(e) = get("env") {
            let m = e
                .as_mapping()
                .ok_or_else(|| self.err(Some(e), "`env` must be a mapping".into()))?;
            for (k, v) in m.iter() {
                env.push((k.as_str().to_string(), self.scalar(v, "env")?.to_string()));
            }
        }
        let governance = match get("governance") {
            None => false,
            Some(g) => match self.scalar(g, "governance")? {
                "true" => true,
                "false" => false,
                other => {
                    return Err(self.err(
                        Some(g),
                        format!("`governance` is `{other}`; accepted: true, false"),
                    ));
                }
            },
        };
        let mut depends_on = Vec::new();
        if let Some(d) = get("depends_on") {
            let seq = d
                .as_sequence()
                .ok_or_else(|| self.err(Some(d), "`depends_on` must be a list".into()))?;
            for dep in seq.iter() {
                let dep_name = self.scalar(dep, "depends_on")?;
                if !earlier.iter().any(|s| s.name == dep_name) {
                    return Err(self.err(
                        Some(dep),
                        format!(
                            "`depends_on` names `{dep_name}`, which is not an earlier step; accepted: {}",
                            if earlier.is_empty() {
                                "none (this is the first step)".to_string()
                            } else {
                                earlier
                                    .iter()
                                    .map(|s| s.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }
                        ),
                    ));
                }
                depends_on.push(dep_name.to_string());
            }
        }
        Ok(Step {
            cwd: self.path(get("cwd"), "cwd")?,
            env,
            timeout: self.duration(get("timeout"), "timeout")?,
            governance,
            junit: self.path(get("junit"), "junit")?,
            triage: self.command(get("triage"), "triage")?,
            depends_on,
            setup: self.command(get("setup"), "setup")?,
            teardown: self.command(get("teardown"), "teardown")?,
            harness_timeout: self.duration(get("harness_timeout"), "harness_timeout")?,
            name,
            command,
        })
    }
}

/// Parse a plan's text; `base` is the directory relative paths start from.
pub fn parse(file: &str, text: &str, base: &Path) -> Result<Plan, PlanError> {
    let r = Reader { file, base };
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let doc = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        r.diag(&yaml_error(
            &marked_yaml::FromYamlError::ParseYaml(e),
            "the plan",
        ))
    })?;
    if let Some(d) = unknown_keys(&doc, "the plan", &PLAN_KEYS).first() {
        return Err(r.diag(d));
    }
    let top = doc.as_mapping();
    if let Some(v) = top.and_then(|m| m.get_node("version")) {
        let text = r.scalar(v, "version")?;
        if text != "1" {
            return Err(r.err(Some(v), format!("`version` is `{text}`; accepted: 1")));
        }
    }
    let steps_node = top
        .and_then(|m| m.get_node("steps"))
        .ok_or_else(|| r.err(Some(&doc), "the plan needs `steps`".into()))?;
    let seq = steps_node
        .as_sequence()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| r.err(Some(steps_node), "`steps` must be a non-empty list".into()))?;
    let mut steps: Vec<Step> = Vec::new();
    for node in seq.iter() {
        let step = r.step(node, &steps)?;
        steps.push(step);
    }
    Ok(Plan {
        timeout: r.duration(top.and_then(|m| m.get_node("timeout")), "timeout")?,
        steps,
    })
}

/// Read and parse a plan file.
pub fn load(path: &Path) -> Result<Plan, PlanError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| PlanError::Unreadable {
        file: file.clone(),
        error,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parse(&file, &text, base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "timeout: 10m\nsteps:\n  - name: build\n    command: make\n  - name: unit\n    command: [\"pytest\", \"-q\"]\n    cwd: tests\n    env: {A: \"1\"}\n    timeout: 90s\n    governance: true\n    junit: junit.xml\n    triage: [\"pytest\", \"{ids}\"]\n    depends_on: [build]\n";

    #[test]
    fn a_plan_parses_with_paths_relative_to_its_directory() {
        let p = parse("p.yaml", GOOD, Path::new("/ci")).expect("plan");
        assert_eq!(p.timeout, Some(Duration::from_secs(600)));
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[0].command.argv(), ["sh", "-c", "make"]);
        let u = &p.steps[1];
        assert_eq!(u.cwd.as_deref(), Some(Path::new("/ci/tests")));
        assert_eq!(u.junit.as_deref(), Some(Path::new("/ci/junit.xml")));
        assert_eq!(u.env, [("A".to_string(), "1".to_string())]);
        assert!(u.governance);
        assert_eq!(u.depends_on, ["build"]);
        let t = u.triage.as_ref().expect("triage");
        assert_eq!(
            t.expand(&["a.py::x".into(), "b.py::y".into()], &[]).argv(),
            ["pytest", "a.py::x", "b.py::y"]
        );
        assert_eq!(
            StepCommand::Shell("pytest {ids}".into())
                .expand(&["it's".into()], &[])
                .argv()[2],
            r"pytest 'it'\''s'"
        );
        let json = r#"{"steps": [{"name": "a", "command": ["true"]}]}"#;
        assert_eq!(
            parse("p.json", json, Path::new(".")).expect("json").steps[0]
                .command
                .argv(),
            ["true"]
        );
    }

    #[test]
    fn malformed_plans_name_file_line_and_column() {
        let err = |text: &str| {
            parse("p.yaml", text, Path::new("."))
                .expect_err(text)
                .to_string()
        };
        assert!(
            err("steps:\n  - name: a\n    command: x\n    timeout: soon\n")
                .starts_with("--plan p.yaml:4:14: `timeout` is `soon`")
        );
        assert!(
            err("steps:\n  - name: a\n    command: x\n    retries: 3\n")
                .starts_with("--plan p.yaml:4:5: unknown key `retries` in a step")
        );
        assert!(
            err("steps:\n  - name: a\n    command: x\n    depends_on: [b]\n")
                .contains("`depends_on` names `b`, which is not an earlier step")
        );
        assert!(err("steps:\n  - name: a b\n    command: x\n").contains("step name `a b`"));
        assert!(err("steps:\n  - name: a\n").contains("step `a` needs a `command`"));
        assert!(
            err("steps:\n  - name: a\n    command: x\n  - name: a\n    command: y\n")
                .contains("a step `a` already exists")
        );
        assert!(err("steps: []\n").contains("`steps` must be a non-empty list"));
        assert!(err("version: 2\nsteps: []\n").contains("`version` is `2`; accepted: 1"));
    }
}
