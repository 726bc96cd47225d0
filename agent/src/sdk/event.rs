//! What a child may report about itself on the SDK socket: one JSON object per line, checked
//! here (pure logic). Only known fields are kept; strings are bounded; secrets are masked
//! before anything is stored.

use serde_json::{Map, Value};

use crate::evidence::redact::{Redactor, redact_json};

/// Longest accepted line, newline excluded.
pub const MAX_LINE: usize = 16 * 1024;
/// Events accepted per run; later valid ones are counted as dropped.
pub const MAX_EVENTS: u64 = 10_000;
/// Longest accepted string field, in bytes.
const MAX_STR: usize = 256;
/// Largest accepted `data` object, serialized.
const MAX_DATA: usize = 4 * 1024;

pub const KINDS: [&str; 5] = [
    "tool_call_started",
    "tool_call_completed",
    "checkpoint",
    "run_finished",
    "run_failed",
];

/// A validated, masked SDK event.
#[derive(Debug, Clone, PartialEq)]
pub struct SdkEvent {
    pub event: &'static str,
    /// Known string fields that were present: tool, tool_call_id, sdk_name, sdk_version, name,
    /// status, reason.
    pub fields: Map<String, Value>,
    /// Free-form `data` object (bounded, secret-named keys redacted).
    pub data: Option<Value>,
    /// When the client says it happened (`client_ts_ns`, wall clock ns); vigil uses it only
    /// within a few seconds before the event's arrival.
    pub client_ts_ns: Option<u64>,
}

impl SdkEvent {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }
}

/// Why a line was rejected: a token counted in health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    TooLong,
    NotJson,
    NotObject,
    UnknownEvent,
    MissingField,
    BadField,
}

impl Rejected {
    pub fn token(self) -> &'static str {
        match self {
            Rejected::TooLong => "line_too_long",
            Rejected::NotJson => "not_json",
            Rejected::NotObject => "not_an_object",
            Rejected::UnknownEvent => "unknown_event",
            Rejected::MissingField => "missing_field",
            Rejected::BadField => "bad_field",
        }
    }
}

const STRING_FIELDS: [&str; 7] = [
    "tool",
    "tool_call_id",
    "sdk_name",
    "sdk_version",
    "name",
    "status",
    "reason",
];

/// Check one line (without its newline).
pub fn parse_line(line: &[u8], redactor: &Redactor) -> Result<SdkEvent, Rejected> {
    if line.len() > MAX_LINE {
        return Err(Rejected::TooLong);
    }
    let value: Value = serde_json::from_slice(line).map_err(|_| Rejected::NotJson)?;
    let Value::Object(obj) = value else {
        return Err(Rejected::NotObject);
    };
    let event = obj
        .get("event")
        .and_then(Value::as_str)
        .and_then(|e| KINDS.iter().find(|k| **k == e).copied())
        .ok_or(Rejected::UnknownEvent)?;
    let mut fields = Map::new();
    for key in STRING_FIELDS {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_STR => {
                fields.insert(key.to_string(), Value::String(redactor.mask_str(s)));
            }
            Some(_) => return Err(Rejected::BadField),
        }
    }
    if event.starts_with("tool_call_")
        && !(fields.contains_key("tool") && fields.contains_key("tool_call_id"))
    {
        return Err(Rejected::MissingField);
    }
    let data = match obj.get("data") {
        None | Some(Value::Null) => None,
        Some(d @ Value::Object(_)) if d.to_string().len() <= MAX_DATA => {
            let mut d = d.clone();
            redact_json(&mut d);
            // A secret value under a name that does not look secret is masked too.
            redactor.mask_json(&mut d);
            Some(d)
        }
        Some(_) => return Err(Rejected::BadField),
    };
    let client_ts_ns = match obj.get("client_ts_ns") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or(Rejected::BadField)?),
    };
    Ok(SdkEvent {
        event,
        fields,
        data,
        client_ts_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<SdkEvent, Rejected> {
        let redactor = Redactor::new(&[("API_TOKEN".into(), "tok-123456".into())]);
        parse_line(line.as_bytes(), &redactor)
    }

    #[test]
    fn valid_events_keep_known_fields_masked() {
        let e = parse(r#"{"event":"tool_call_started","tool":"shell","tool_call_id":"c1","sdk_name":"py","extra":1,"data":{"cmd":"curl -H tok-123456","api_key":"x"}}"#)
            .expect("valid");
        assert_eq!(e.event, "tool_call_started");
        assert_eq!(e.str("tool"), Some("shell"));
        assert!(
            !e.fields.contains_key("extra"),
            "unknown fields are dropped"
        );
        let data = e.data.expect("data");
        assert_eq!(data["api_key"], "[REDACTED]");
        // A secret value is masked wherever it stands in `data` (the parser properties found
        // it kept verbatim under an ordinary key).
        assert_eq!(data["cmd"], "curl -H [REDACTED]");
        let c = parse(r#"{"event":"checkpoint","name":"tok-123456 reached"}"#).expect("valid");
        assert_eq!(c.str("name"), Some("[REDACTED] reached"));
    }

    #[test]
    fn malformed_events_are_rejected_with_a_reason() {
        assert_eq!(parse("not json"), Err(Rejected::NotJson));
        assert_eq!(parse("[1]"), Err(Rejected::NotObject));
        assert_eq!(parse(r#"{"event":"explode"}"#), Err(Rejected::UnknownEvent));
        assert_eq!(parse(r#"{"tool":"x"}"#), Err(Rejected::UnknownEvent));
        assert_eq!(
            parse(r#"{"event":"tool_call_completed","tool":"x"}"#),
            Err(Rejected::MissingField)
        );
        assert_eq!(
            parse(r#"{"event":"checkpoint","name":5}"#),
            Err(Rejected::BadField)
        );
        let long = format!(r#"{{"event":"checkpoint","name":"{}"}}"#, "a".repeat(300));
        assert_eq!(parse(&long), Err(Rejected::BadField));
        assert_eq!(
            parse_line(&vec![b' '; MAX_LINE + 1], &Redactor::new(&[])),
            Err(Rejected::TooLong)
        );
    }
}
