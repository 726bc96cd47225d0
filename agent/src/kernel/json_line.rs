//! A JSON object written field by field straight into a byte buffer: the kernel layer's
//! serializer, one line per event, which is the reader's hottest path. It writes what
//! serde_json writes for the same values — its string escaping, no spaces, `null` for a missing
//! value — without serde's per-field machinery (a profile of the derived, flattened serializer
//! put 40% of the reader's time in it), and RFC 3339 timestamps from a per-second cache.

use std::time::{Duration, UNIX_EPOCH};

/// One JSON object being written into `out`.
pub struct Obj<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Obj<'a> {
    #[inline(always)]
    pub fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, empty: true }
    }

    /// Fields that go on an object begun elsewhere (a cached run of them): each one, the first
    /// too, is written after a comma.
    pub fn continued(out: &'a mut Vec<u8>) -> Self {
        Obj { out, empty: false }
    }

    /// Bytes that are already fields of this object (from [`Obj::continued`]).
    #[inline(always)]
    pub fn raw_fields(&mut self, fields: &[u8]) {
        self.out.extend_from_slice(fields);
        self.empty &= fields.is_empty();
    }

    /// `k` is one of the layer's own field names: plain ASCII, written without escaping.
    #[inline(always)]
    fn key(&mut self, k: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    #[inline(always)]
    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        escaped(self.out, v);
    }

    #[inline(always)]
    pub fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    #[inline(always)]
    pub fn num<T: itoa::Integer>(&mut self, k: &str, v: T) {
        self.key(k);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    #[inline(always)]
    pub fn opt_num<T: itoa::Integer>(&mut self, k: &str, v: Option<T>) {
        match v {
            Some(v) => self.num(k, v),
            None => self.null(k),
        }
    }

    #[inline(always)]
    pub fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    #[inline(always)]
    pub fn null(&mut self, k: &str) {
        self.key(k);
        self.out.extend_from_slice(b"null");
    }

    #[inline(always)]
    pub fn strs(&mut self, k: &str, v: &[String]) {
        self.key(k);
        self.out.push(b'[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            escaped(self.out, s);
        }
        self.out.push(b']');
    }

    /// A timestamp as `ts` is written everywhere: RFC 3339 UTC, microseconds.
    #[inline(always)]
    pub fn ts(&mut self, k: &str, ns: u64, cache: &mut TsCache) {
        self.key(k);
        self.out.push(b'"');
        cache.write(self.out, ns);
        self.out.push(b'"');
    }

    #[inline(always)]
    pub fn close(self) {
        self.out.push(b'}');
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it: `"` and `\`, the short forms of
/// backspace, form feed, newline, carriage return and tab, `\u00XX` for the other control
/// bytes; everything else (`/`, DEL, non-ASCII) as it is. Runs without an escape are copied
/// whole.
pub fn escaped(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every string needs no escape: checked eight bytes at a time, then copied whole.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any byte is a control byte, `"` or `\`: eight bytes at a time with the classic
/// word tricks (a byte of `w` below 0x20 sets its high bit in `(w - 0x20…) & !w`; a byte equal
/// to `c` is a zero byte of `w ^ c…`), both exact as tests for "any byte".
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let special = |w: u64| {
        (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')))
    };
    let mut words = bytes.chunks_exact(8);
    let mut found = 0;
    for w in words.by_ref() {
        let mut le = [0u8; 8];
        le.copy_from_slice(w);
        found |= special(u64::from_le_bytes(le));
    }
    found != 0
        || words
            .remainder()
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// RFC 3339 UTC with microseconds (`clock::rfc3339`'s form), the date and time of day made
/// once per second: a drain's events share their second, so the calendar arithmetic is paid
/// once for thousands of lines.
#[derive(Default)]
pub struct TsCache {
    second: Option<u64>,
    /// `2026-12-04T01:48:46.` for `second`.
    prefix: Vec<u8>,
}

impl TsCache {
    fn write(&mut self, out: &mut Vec<u8>, ns: u64) {
        let second = ns / 1_000_000_000;
        if self.second != Some(second) {
            let whole = UNIX_EPOCH + Duration::from_secs(second);
            let full = humantime::format_rfc3339_micros(whole).to_string();
            // `…:46.000000Z` without the zero microseconds and the `Z`.
            self.prefix.clear();
            self.prefix
                .extend_from_slice(&full.as_bytes()[..full.len() - "000000Z".len()]);
            self.second = Some(second);
        }
        out.extend_from_slice(&self.prefix);
        let mut micros = (ns % 1_000_000_000) / 1_000;
        let mut digits = [b'0'; 6];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out.extend_from_slice(&digits);
        out.push(b'Z');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    #[test]
    fn the_word_check_finds_every_byte_that_needs_an_escape_at_every_position() {
        for len in 0..20 {
            for at in 0..len {
                for special in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut b = vec![b'a'; len];
                    b[at] = special;
                    assert!(needs_escape(&b), "{special:#x} at {at} of {len}");
                }
            }
            // Bytes just outside the special ones, and high bytes, need none.
            let plain: Vec<u8> = [0x20u8, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff]
                .iter()
                .copied()
                .cycle()
                .take(len)
                .collect();
            assert!(!needs_escape(&plain), "{plain:?}");
        }
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let tricky = [
            "",
            "plain/path.txt",
            "quote\" back\\slash",
            "ctl\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
            "ünïcödé ✓ /etc/",
            "\"",
            "end\\",
        ];
        for s in tricky {
            let mut mine = Vec::new();
            escaped(&mut mine, s);
            assert_eq!(
                String::from_utf8(mine).expect("utf8"),
                serde_json::to_string(s).expect("serde"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn an_object_is_what_serde_json_writes_for_the_same_fields() {
        let mut out = Vec::new();
        let mut o = Obj::open(&mut out);
        o.str("a", "x\"y");
        o.num("n", -100i32);
        o.num("u", u64::MAX);
        o.opt_num::<i64>("none", None);
        o.opt_str("s", Some("v"));
        o.bool("t", true);
        o.strs("argv", &["sh".into(), "-c".into(), "echo \"hi\"".into()]);
        o.strs("empty", &[]);
        o.close();
        let expect = serde_json::json!({
            "a": "x\"y", "n": -100, "u": u64::MAX, "none": null, "s": "v", "t": true,
            "argv": ["sh", "-c", "echo \"hi\""], "empty": [],
        });
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.starts_with(r#"{"a":"x\"y","n":-100,"#),
            "fields in the order written: {text}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("valid JSON"),
            expect
        );
    }

    #[test]
    fn cached_timestamps_match_the_clock_formatter_across_seconds() {
        let mut cache = TsCache::default();
        let base = 1_796_348_926_000_000_000u64;
        for ns in [
            base,
            base + 506_182_638,
            base + 999_999_999,
            base + 1_000_000_000,
            base + 1_000_000_999,
            base + 86_400_000_000_123,
            0,
        ] {
            let mut out = Vec::new();
            cache.write(&mut out, ns);
            assert_eq!(String::from_utf8(out).expect("utf8"), clock::rfc3339(ns));
        }
    }
}
