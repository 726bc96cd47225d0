//! `vigil policy lint FILE…`: every diagnostic of every file as `file:line:column: severity:
//! message`, then one line per file. Errors make the command exit 2 (the contract's usage and
//! configuration code); warnings alone do not.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::parse::parse;

pub struct LintReport {
    pub text: String,
    pub errors: usize,
    pub warnings: usize,
}

pub fn lint_files(files: &[PathBuf]) -> LintReport {
    let mut report = LintReport {
        text: String::new(),
        errors: 0,
        warnings: 0,
    };
    for file in files {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(report.text, "{name}: error: cannot read: {e}");
                report.errors += 1;
                continue;
            }
        };
        let parsed = parse(&text);
        for d in &parsed.diagnostics {
            let _ = writeln!(report.text, "{}", d.render(&name));
        }
        let errors = parsed.errors();
        let warnings = parsed.diagnostics.len() - errors;
        report.errors += errors;
        report.warnings += warnings;
        let verdict = match (errors, warnings) {
            (0, 0) => "ok".to_string(),
            (0, w) => format!("ok, {w} warning(s)"),
            (e, w) => format!("{e} error(s), {w} warning(s)"),
        };
        let _ = writeln!(report.text, "{name}: {verdict}");
    }
    report
}
