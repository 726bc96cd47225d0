//! Redaction (CONTRACT.md §3): no artifact holds a raw secret. Secret-named variables and
//! arguments are replaced, the environment is profiled as metadata only (set, length, keyed
//! hash), and secret values are masked wherever they appear verbatim in argv or captured output.

use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, MatchKind};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

pub const REDACTED: &str = "[REDACTED]";

/// Secret values shorter than this are not masked in output: masking every "1" or "on" would
/// destroy the log while protecting nothing a guesser could not guess.
pub const MIN_MASKED_LEN: usize = 4;

const SECRET_WORDS: [&str; 6] = [
    "token",
    "secret",
    "password",
    "authorization",
    "cookie",
    "key",
];

/// Does this name (env var, flag, JSON key) mark its value as secret?
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// One variable of `env_profile`: metadata only, never the value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EnvEntry {
    pub set: bool,
    pub length: usize,
    /// HMAC-SHA256 of the value under a per-run random key (hex, first 16 bytes): equal values
    /// within one bundle hash equally; nothing can be looked up across bundles.
    pub hash: String,
    /// Whether the name marks the value as secret (it is then also masked in output and argv).
    pub secret: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvProfile {
    pub hash: &'static str,
    pub key_scope: &'static str,
    pub variables: BTreeMap<String, EnvEntry>,
}

/// What redaction needs to know about one run: the hashing key and the secret values to mask.
pub struct Redactor {
    key: [u8; 32],
    secrets: Vec<String>,
    masker: Option<AhoCorasick>,
}

impl Redactor {
    /// Build from the child's environment. The key is random per run and never written.
    pub fn new(env: &[(String, String)]) -> Self {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            key[..8].copy_from_slice(&crate::clock::now_ns().to_le_bytes());
        }
        let mut secrets: Vec<String> = env
            .iter()
            .filter(|(k, v)| is_secret_name(k) && v.len() >= MIN_MASKED_LEN)
            .map(|(_, v)| v.clone())
            .collect();
        secrets.sort();
        secrets.dedup();
        let masker = (!secrets.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&secrets)
                .ok()
        });
        Redactor {
            key,
            secrets,
            masker: masker.flatten(),
        }
    }

    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    fn keyed_hash(&self, value: &str) -> String {
        // new_from_slice only fails for key lengths HMAC cannot take; 32 bytes always works.
        match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(value.as_bytes());
                hex::encode(&mac.finalize().into_bytes()[..16])
            }
            Err(_) => String::new(),
        }
    }

    pub fn env_profile(&self, env: &[(String, String)]) -> EnvProfile {
        let variables = env
            .iter()
            .map(|(k, v)| {
                let entry = EnvEntry {
                    set: true,
                    length: v.len(),
                    hash: self.keyed_hash(v),
                    secret: is_secret_name(k),
                };
                (k.clone(), entry)
            })
            .collect();
        EnvProfile {
            hash: "hmac-sha256-128",
            key_scope: "run",
            variables,
        }
    }

    /// Mask every known secret value inside one string.
    /// `s` with every secret value masked, borrowed when there is none (the common case: no
    /// allocation on the kernel event path).
    pub fn mask_cow<'a>(&self, s: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.masker {
            Some(ac) if ac.is_match(s) => {
                std::borrow::Cow::Owned(ac.replace_all(s, &vec![REDACTED; self.secrets.len()]))
            }
            _ => std::borrow::Cow::Borrowed(s),
        }
    }

    pub fn mask_str(&self, s: &str) -> String {
        match &self.masker {
            Some(ac) => ac.replace_all(s, &vec![REDACTED; self.secrets.len()]),
            None => s.to_string(),
        }
    }

    /// Redact an argv: values of secret-named flags (`--token=x`, `--password x`), secret-named
    /// `NAME=value` assignments, and secret values appearing anywhere.
    pub fn redact_argv(&self, argv: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(argv.len());
        let mut redact_next = false;
        for arg in argv {
            if redact_next {
                redact_next = false;
                if !arg.starts_with('-') {
                    out.push(REDACTED.to_string());
                    continue;
                }
            }
            if let Some((name, _)) = arg.split_once('=') {
                if is_secret_name(name) {
                    // The name can hold a secret value too (found by the parser properties).
                    out.push(format!("{}={REDACTED}", self.mask_cow(name)));
                    continue;
                }
            } else if arg.starts_with('-') && is_secret_name(arg.trim_start_matches('-')) {
                redact_next = true;
            }
            out.push(self.mask_str(arg));
        }
        out
    }

    /// Mask secret values in every string of a JSON value, keys included (secret-named keys
    /// are [`redact_json`]'s job; this catches a secret under any other name).
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        if self.masker.is_none() {
            return;
        }
        match value {
            Value::String(s) => {
                if let std::borrow::Cow::Owned(m) = self.mask_cow(s) {
                    *s = m;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            Value::Object(map) => {
                for (k, mut v) in std::mem::take(map) {
                    self.mask_json(&mut v);
                    map.insert(self.mask_cow(&k).into_owned(), v);
                }
            }
            _ => {}
        }
    }

    /// A streaming masker for one output stream.
    pub fn stream_masker(&self) -> Option<StreamMasker<'_>> {
        let ac = self.masker.as_ref()?;
        let max_len = self.secrets.iter().map(String::len).max().unwrap_or(0);
        Some(StreamMasker {
            ac,
            hold: max_len.saturating_sub(1),
            held: Vec::new(),
        })
    }
}

/// Masks secrets across chunk boundaries by holding back the last `max_len - 1` bytes, which
/// could be the start of a secret that the next chunk completes.
pub struct StreamMasker<'a> {
    ac: &'a AhoCorasick,
    hold: usize,
    held: Vec<u8>,
}

impl StreamMasker<'_> {
    /// Feed a chunk; append what is safe to emit to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.held.extend_from_slice(chunk);
        let safe_end = self.held.len().saturating_sub(self.hold);
        let pos = self.emit(safe_end, out);
        let emit_end = pos.max(safe_end);
        out.extend_from_slice(&self.held[pos..emit_end]);
        self.held.drain(..emit_end);
    }

    /// End of stream: emit everything still held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let len = self.held.len();
        let pos = self.emit(len + 1, out);
        out.extend_from_slice(&self.held[pos..]);
        self.held.clear();
    }

    /// Replace matches that start before `limit`; returns the position after the last one.
    fn emit(&self, limit: usize, out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        for m in self.ac.find_iter(&self.held[..]) {
            if m.start() >= limit {
                break;
            }
            out.extend_from_slice(&self.held[pos..m.start()]);
            out.extend_from_slice(REDACTED.as_bytes());
            pos = m.end();
        }
        pos
    }
}

/// Redact values of secret-named keys anywhere in a JSON value (for self-reported data).
pub fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_name(k) {
                    *v = serde_json::Value::String(REDACTED.into());
                } else {
                    redact_json(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![
            ("API_TOKEN".into(), "tok-12345-abcdef".into()),
            ("DB_PASSWORD".into(), "hunter2hunter2".into()),
            ("SHORT_KEY".into(), "ab".into()),
            ("HOME".into(), "/root".into()),
        ]
    }

    #[test]
    fn secret_names_are_case_insensitive() {
        for n in [
            "GITHUB_TOKEN",
            "aws_secret_access_key",
            "Password",
            "HTTP_AUTHORIZATION",
            "cookie_jar",
            "SSH_KEY",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        assert!(!is_secret_name("HOME"));
        assert!(!is_secret_name("PATH"));
    }

    #[test]
    fn env_profile_holds_no_values() {
        let r = Redactor::new(&env());
        let p = r.env_profile(&env());
        let json = serde_json::to_string(&p).expect("serialize");
        assert!(!json.contains("tok-12345-abcdef"));
        assert!(!json.contains("hunter2"));
        assert!(!json.contains("/root"));
        assert_eq!(p.variables["API_TOKEN"].length, 16);
        assert!(p.variables["API_TOKEN"].secret);
        // same value, same key → same hash; different value → different hash
        assert_eq!(r.keyed_hash("x"), r.keyed_hash("x"));
        assert_ne!(r.keyed_hash("x"), r.keyed_hash("y"));
    }

    #[test]
    fn argv_secrets_are_redacted_in_every_form() {
        let r = Redactor::new(&env());
        let argv: Vec<String> = [
            "curl",
            "--token=abc",
            "--password",
            "pw1",
            "-v",
            "API_KEY=zz",
            "echo tok-12345-abcdef!",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = r.redact_argv(&argv);
        assert_eq!(
            out,
            vec![
                "curl",
                "--token=[REDACTED]",
                "--password",
                "[REDACTED]",
                "-v",
                "API_KEY=[REDACTED]",
                "echo [REDACTED]!"
            ]
        );
    }

    #[test]
    fn stream_masking_survives_chunk_boundaries() {
        let r = Redactor::new(&env());
        let text = b"start tok-12345-abcdef mid hunter2hunter2 end ab";
        for split in 1..text.len() {
            let mut m = r.stream_masker().expect("has secrets");
            let mut out = Vec::new();
            m.push(&text[..split], &mut out);
            m.push(&text[split..], &mut out);
            m.finish(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "start [REDACTED] mid [REDACTED] end ab",
                "split at {split}"
            );
        }
    }

    #[test]
    fn json_keys_are_redacted_recursively() {
        let mut v = serde_json::json!({"a": {"api_key": "x", "list": [{"Cookie": "c"}]}, "ok": 1});
        redact_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": {"api_key": REDACTED, "list": [{"Cookie": REDACTED}]}, "ok": 1})
        );
    }
}
