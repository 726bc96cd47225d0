//! `vigil policy suggest BUNDLE…`: the least-privilege policy that allows exactly what the
//! given runs did, from their kernel evidence. Files are collapsed to their directories (a
//! directory that was itself opened stays as it is; `/proc` and `/sys` as a whole; devices
//! exactly), executables to their directories plus the ELF interpreter or `#!` interpreter the
//! kernel opens on their behalf (which no syscall event shows), endpoints exactly as observed.
//! Paths under the run's workspace, home and temporary directory become `${…}` variables. The
//! result lints clean: entries another entry covers are dropped.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::model::path_covers;
use super::oracle::normalize;

#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error("{path}: {error}")]
    Read { path: String, error: String },
}

#[derive(Default)]
struct Seen {
    read: BTreeSet<String>,
    write: BTreeSet<String>,
    exec: BTreeSet<String>,
    connect: BTreeSet<(IpAddr, u16)>,
    send: BTreeSet<(IpAddr, u16)>,
}

/// (value, variable) pairs, most specific first.
pub(crate) fn variables(events: &str) -> Vec<(String, &'static str)> {
    let started = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["kind"] == "run_started");
    let mut vars = Vec::new();
    if let Some(v) = started.as_ref().map(|e| &e["data"]["policy_vars"]) {
        for (key, name) in [
            ("workspace", "WORKSPACE"),
            ("tmpdir", "TMPDIR"),
            ("home", "HOME"),
        ] {
            if let Some(path) = v[key].as_str().filter(|p| *p != "/") {
                vars.push((normalize(path), name));
            }
        }
    }
    vars.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    vars
}

fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map_or_else(|| "/".to_string(), |p| p.display().to_string())
}

/// The directory a file access stands for.
fn place(path: &str) -> String {
    let path = normalize(path);
    for whole in ["/proc", "/sys"] {
        if path_covers(whole, &path) {
            return whole.to_string();
        }
    }
    if path_covers("/dev", &path) || Path::new(&path).is_dir() {
        return path;
    }
    parent(&path)
}

/// What the kernel executes on a program's behalf: its ELF interpreter, or its `#!` line's.
fn interpreters(program: &str) -> Vec<String> {
    let Ok(data) = std::fs::read(program) else {
        return Vec::new();
    };
    if let Some(line) = data.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let text = String::from_utf8_lossy(line);
        return text
            .split_whitespace()
            .next()
            .map(|i| {
                let mut v = vec![i.to_string()];
                v.extend(interpreters(i));
                v
            })
            .unwrap_or_default();
    }
    use object::read::elf::{FileHeader, ProgramHeader};
    let Ok(header) = object::elf::FileHeader64::<object::Endianness>::parse(&*data) else {
        return Vec::new();
    };
    let Ok(endian) = header.endian() else {
        return Vec::new();
    };
    let Ok(headers) = header.program_headers(endian, &*data) else {
        return Vec::new();
    };
    headers
        .iter()
        .filter_map(|ph| ph.interpreter(endian, &*data).ok().flatten())
        .map(|i| String::from_utf8_lossy(i).into_owned())
        .collect()
}

fn endpoint(e: &Value) -> Option<(IpAddr, u16)> {
    let ip = e["address"].as_str()?.parse().ok()?;
    let port = u16::try_from(e["port"].as_u64()?).ok()?;
    Some((ip, port))
}

fn observe(kernel: &str, seen: &mut Seen) {
    for e in kernel
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let result = e["result"].as_i64().unwrap_or(0);
        match e["kind"].as_str().unwrap_or_default() {
            "process.exec" => {
                if let Some(f) = e["filename"].as_str().filter(|f| f.starts_with('/')) {
                    for program in std::iter::once(f.to_string()).chain(interpreters(f)) {
                        // The name as called (what the oracle judges) and the file it resolves
                        // to through symlinks such as /bin → /usr/bin (what Landlock checks).
                        seen.exec.insert(parent(&normalize(&program)));
                        if let Ok(real) = std::fs::canonicalize(&program) {
                            seen.exec.insert(parent(&real.display().to_string()));
                        }
                    }
                }
            }
            "file.open" if result >= 0 => {
                let Some(path) = e["resolved_path"].as_str() else {
                    continue;
                };
                let write = e["access"] != "read" && e["access"] != "path"
                    || e["create"] == true
                    || e["truncate"] == true;
                let set = if write {
                    &mut seen.write
                } else {
                    &mut seen.read
                };
                set.insert(place(path));
            }
            // Connected (0) or in progress (-EINPROGRESS).
            "network.connect" if result == 0 || result == -115 => {
                seen.connect.extend(endpoint(&e));
            }
            "network.send" if result >= 0 && e["endpoint_source"] == "argument" => {
                seen.send.extend(endpoint(&e));
            }
            _ => {}
        }
    }
}

/// Variables for prefixes, then only the entries no other entry covers.
fn minimal(paths: &BTreeSet<String>, vars: &[(String, &'static str)]) -> Vec<String> {
    let named: BTreeSet<String> = paths
        .iter()
        .map(|p| {
            vars.iter().find(|(v, _)| path_covers(v, p)).map_or_else(
                || p.clone(),
                |(v, name)| format!("${{{name}}}{}", &p[v.len()..]),
            )
        })
        .collect();
    named
        .iter()
        .filter(|p| !named.iter().any(|q| q != *p && path_covers(q, p)))
        .cloned()
        .collect()
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The suggested policy, as YAML.
pub fn suggest(bundles: &[PathBuf]) -> Result<String, SuggestError> {
    let mut seen = Seen::default();
    let mut vars = Vec::new();
    for b in bundles {
        // An untrusted bundle: read beneath its directory, links refused, bounded.
        let refused = |rel: &str, e: crate::evidence::beneath::Refused| SuggestError::Read {
            path: b.join(rel).display().to_string(),
            error: e.to_string(),
        };
        let dir = crate::evidence::beneath::BundleDir::open(b).map_err(|e| refused(".", e))?;
        let read = |rel: &str| {
            dir.read(rel, crate::evidence::beneath::MAX_DOCUMENT)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .map_err(|e| refused(rel, e))
        };
        let events = read("events.ndjson")?;
        if vars.is_empty() {
            vars = variables(&events);
        }
        observe(&read("layers/kernel.ndjson")?, &mut seen);
    }
    let mut y = String::new();
    let names: Vec<String> = bundles.iter().map(|b| b.display().to_string()).collect();
    let _ = writeln!(
        y,
        "# Suggested by `vigil policy suggest` from {}.",
        names.join(", ")
    );
    let _ = writeln!(
        y,
        "# It allows what those runs did and nothing else; review it before enforcing it.\nversion: 1\nname: suggested\nmode: enforce\ndefault: deny"
    );
    let mut fs = String::new();
    for (list, set) in [
        ("read", &seen.read),
        ("write", &seen.write),
        ("exec", &seen.exec),
    ] {
        let paths = minimal(set, &vars);
        if paths.is_empty() {
            continue;
        }
        let list_of: Vec<String> = paths.iter().map(|p| quoted(p)).collect();
        let _ = writeln!(
            fs,
            "  {list}:\n    - id: observed-{list}\n      paths: [{}]",
            list_of.join(", ")
        );
    }
    if !fs.is_empty() {
        let _ = write!(y, "filesystem:\n{fs}");
    }
    let mut net = String::new();
    for (list, set) in [("connect", &seen.connect), ("send", &seen.send)] {
        if set.is_empty() {
            continue;
        }
        let _ = writeln!(net, "  {list}:");
        for (i, (ip, port)) in set.iter().enumerate() {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            let _ = writeln!(
                net,
                "    - id: observed-{list}-{}\n      cidrs: [{}]\n      ports: [{port}]",
                i + 1,
                quoted(&format!("{ip}/{prefix}"))
            );
        }
    }
    if !net.is_empty() {
        let _ = write!(y, "network:\n{net}");
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_collapse_to_directories_under_variables_without_overlap() {
        let vars = vec![
            ("/w/ws".to_string(), "WORKSPACE"),
            ("/tmp".to_string(), "TMPDIR"),
        ];
        let set: BTreeSet<String> = [
            "/w/ws",
            "/w/ws/src",
            "/tmp/x",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/etc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            minimal(&set, &vars),
            ["${TMPDIR}/x", "${WORKSPACE}", "/etc", "/usr/lib"]
        );
        assert_eq!(place("/proc/1234/stat"), "/proc");
        assert_eq!(place("/dev/null"), "/dev/null");
        assert_eq!(place("/etc/hostname"), "/etc");
        assert_eq!(place("/usr"), "/usr", "a directory opened as such stays");
    }

    #[test]
    fn elf_programs_bring_their_interpreter() {
        let interp = interpreters("/bin/sh");
        assert_eq!(interp.len(), 1, "{interp:?}");
        assert!(interp[0].contains("ld-linux"), "{interp:?}");
    }
}
