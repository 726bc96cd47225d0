//! One postcondition clause, `FIELD OP VALUE`, over the facts of a closed span: parsed once
//! when a contract loads (counter names resolved to indexes), then checked with a match and a
//! comparison — no allocation and no lookup by name when a span closes.

use std::fmt;

use super::counts::{CounterId, Counts, counter_id, counter_names};

/// The facts of a closed span that clauses speak about.
#[derive(Debug, Clone, Default)]
pub struct SpanFacts {
    pub duration_ms: u64,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub status: String,
    pub output_bytes: u64,
    pub lost_events: u64,
    /// Kernel operation counts while the span was open, by [`CounterId`].
    pub counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    DurationMs,
    ExitCode,
    Signal,
    Status,
    OutputBytes,
    LostEvents,
    /// A kernel operation count: `<op>.count`, `<op>.allowed` or `<op>.denied`.
    Count(CounterId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    /// `null`: the field has no value (no exit code after a signal, no signal after an exit).
    Null,
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub field: Field,
    pub op: Op,
    pub value: Value,
    /// The clause as written, for violation reports.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{clause}`: {problem}")]
pub struct ClauseError {
    pub clause: String,
    pub problem: String,
}

const FIELDS: &str = "duration_ms, exit_code, signal, status, output_bytes, lost_events, or a kernel count such as process.exec.count or network.connect.denied";

impl Clause {
    pub fn parse(text: &str) -> Result<Clause, ClauseError> {
        let err = |problem: String| ClauseError {
            clause: text.to_string(),
            problem,
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [field, op, value] = parts[..] else {
            return Err(err(
                "expected `FIELD OP VALUE`, e.g. `exit_code == 0`".into()
            ));
        };
        let field = match field {
            "duration_ms" => Field::DurationMs,
            "exit_code" => Field::ExitCode,
            "signal" => Field::Signal,
            "status" => Field::Status,
            "output_bytes" => Field::OutputBytes,
            "lost_events" => Field::LostEvents,
            f if f.ends_with(".count") || f.ends_with(".denied") || f.ends_with(".allowed") => {
                Field::Count(counter_id(f).ok_or_else(|| {
                    err(format!(
                        "unknown kernel count `{f}`; accepted: {}",
                        counter_names()
                    ))
                })?)
            }
            f => return Err(err(format!("unknown field `{f}`; accepted: {FIELDS}"))),
        };
        let op = match op {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            o => {
                return Err(err(format!(
                    "unknown operator `{o}`; accepted: ==, !=, <, <=, >, >="
                )));
            }
        };
        let value = match (&field, value) {
            (Field::Status, v) => {
                if !matches!(op, Op::Eq | Op::Ne) {
                    return Err(err("`status` compares with == or != only".into()));
                }
                Value::Text(v.trim_matches('"').to_string())
            }
            (Field::ExitCode | Field::Signal, "null") => {
                if !matches!(op, Op::Eq | Op::Ne) {
                    return Err(err("`null` compares with == or != only".into()));
                }
                Value::Null
            }
            (_, v) => Value::Int(
                v.parse()
                    .map_err(|_| err(format!("`{v}` is not a whole number")))?,
            ),
        };
        Ok(Clause {
            field,
            op,
            value,
            text: text.to_string(),
        })
    }

    /// The value the clause looked at, for a violation report.
    pub fn observed(&self, f: &SpanFacts) -> Option<String> {
        let n = |v: u64| Some(v.to_string());
        match &self.field {
            Field::DurationMs => n(f.duration_ms),
            Field::OutputBytes => n(f.output_bytes),
            Field::LostEvents => n(f.lost_events),
            Field::ExitCode => f.exit_code.map(|c| c.to_string()),
            Field::Signal => f.signal.map(|c| c.to_string()),
            Field::Status => Some(f.status.clone()),
            Field::Count(id) => n(f.counts[*id]),
        }
    }

    /// Whether the facts satisfy the clause.
    pub fn holds(&self, f: &SpanFacts) -> bool {
        let int = |actual: i64| match self.value {
            Value::Int(want) => compare(self.op, actual, want),
            Value::Null => self.op == Op::Ne,
            Value::Text(_) => false,
        };
        match &self.field {
            Field::DurationMs => int(saturating(f.duration_ms)),
            Field::OutputBytes => int(saturating(f.output_bytes)),
            Field::LostEvents => int(saturating(f.lost_events)),
            Field::Count(id) => int(saturating(f.counts[*id])),
            Field::ExitCode | Field::Signal => {
                let v = if self.field == Field::ExitCode {
                    f.exit_code
                } else {
                    f.signal
                };
                match v {
                    Some(actual) => int(actual),
                    None => match self.value {
                        Value::Null => self.op == Op::Eq,
                        // A missing value satisfies only `!=` a number.
                        _ => self.op == Op::Ne,
                    },
                }
            }
            Field::Status => match &self.value {
                Value::Text(want) => (f.status == *want) == (self.op == Op::Eq),
                _ => false,
            },
        }
    }
}

fn saturating(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn compare(op: Op, a: i64, b: i64) -> bool {
    match op {
        Op::Eq => a == b,
        Op::Ne => a != b,
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
    }
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SpanFacts {
        SpanFacts {
            duration_ms: 1500,
            exit_code: Some(0),
            signal: None,
            status: "passed".into(),
            output_bytes: 10,
            lost_events: 0,
            counts: counts(&[("process.exec.count", 12), ("network.connect.denied", 1)]),
        }
    }

    pub(crate) fn counts(named: &[(&str, u64)]) -> Counts {
        let mut c = [0; super::super::counts::COUNTERS];
        for (name, n) in named {
            c[counter_id(name).expect(name)] = *n;
        }
        c
    }

    #[test]
    fn clauses_hold_or_fail_on_the_facts() {
        let f = facts();
        let holds = |c: &str| Clause::parse(c).expect(c).holds(&f);
        assert!(holds("duration_ms <= 2000"));
        assert!(!holds("duration_ms < 1000"));
        assert!(holds("exit_code == 0"));
        assert!(!holds("exit_code != 0"));
        assert!(holds("signal == null"));
        assert!(!holds("signal == 9"));
        assert!(holds("status == passed"));
        assert!(!holds("status != passed"));
        assert!(holds("process.exec.count <= 500"));
        assert!(!holds("network.connect.denied == 0"));
        assert!(holds("file.open.count == 0"), "an unseen count is zero");
        assert_eq!(
            Clause::parse("duration_ms < 1000")
                .expect("c")
                .observed(&f)
                .as_deref(),
            Some("1500")
        );
    }

    #[test]
    fn malformed_clauses_say_what_is_accepted() {
        let e = |c: &str| Clause::parse(c).expect_err(c).to_string();
        assert!(e("exit_code 0").contains("expected `FIELD OP VALUE`"));
        assert!(e("wall_time < 5").contains("unknown field `wall_time`; accepted: duration_ms"));
        assert!(e("exit_code => 0").contains("unknown operator `=>`"));
        assert!(e("duration_ms < soon").contains("`soon` is not a whole number"));
        assert!(e("status < passed").contains("== or != only"));
        assert!(e("process.exe.count < 5").contains("unknown kernel count `process.exe.count`"));
    }
}
