//! `--otlp-endpoint URL`: POST an OTLP/JSON request to an OTLP/HTTP receiver (`/v1/traces`) —
//! plain HTTP/1.1 over a TCP stream (one request, `Connection: close`: no HTTP stack for that).
//! Retries on connection errors, 429 and 502/503/504 (honouring `Retry-After` seconds, capped),
//! at most ATTEMPTS times within a bounded time; never more. `https://` needs a TLS stack vigil
//! does not carry: it is refused with a clear error (point it at a local collector).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const ATTEMPTS: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq)]
struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse(url: &str) -> Result<Target, String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(format!(
                "{url}: https needs TLS, which vigil does not carry; accepted: http:// (a collector on loopback)"
            ));
        }
        _ => return Err(format!("{url}: accepted: http://HOST[:PORT][/PATH]")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url}: bad port {p:?}"))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    // The base endpoint gets the signal's path, as OTEL_EXPORTER_OTLP_ENDPOINT does.
    let path = if path.ends_with("/v1/traces") {
        path.to_string()
    } else {
        format!("{}/v1/traces", path.trim_end_matches('/'))
    };
    Ok(Target {
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        path,
    })
}

/// One attempt: the status code and a `Retry-After` in seconds, if any.
fn post_once(t: &Target, body: &[u8]) -> std::io::Result<(u16, Option<u64>)> {
    let addr = (t.host.as_str(), t.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: vigil/{}\r\n\r\n",
        t.path,
        t.host,
        t.port,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut reply = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line in the reply"))?;
    let retry_after = text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().parse().ok())
            .flatten()
    });
    Ok((status, retry_after))
}

/// POST `body`; Ok with the number of attempts it took.
pub fn post(url: &str, body: &[u8]) -> Result<u32, String> {
    let t = parse(url)?;
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match post_once(&t, body) {
            Ok((200..=299, _)) => return Ok(attempt),
            Ok((code @ (429 | 502 | 503 | 504), after)) => {
                last = format!("HTTP {code}");
                if let Some(s) = after {
                    backoff = Duration::from_secs(s).min(MAX_BACKOFF);
                }
            }
            Ok((code, _)) => return Err(format!("{url}: HTTP {code} (not retried)")),
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    Err(format!("{url}: gave up after {ATTEMPTS} attempts ({last})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_and_https_is_refused_clearly() {
        assert_eq!(
            parse("http://127.0.0.1:4318").expect("ok"),
            Target {
                host: "127.0.0.1".into(),
                port: 4318,
                path: "/v1/traces".into()
            }
        );
        assert_eq!(
            parse("http://collector/otlp/v1/traces").expect("ok").path,
            "/otlp/v1/traces"
        );
        assert_eq!(
            parse("http://c:9/base/").expect("ok").path,
            "/base/v1/traces"
        );
        assert!(parse("https://c").expect_err("tls").contains("TLS"));
        assert!(parse("ftp://c").is_err());
        assert!(parse("http://c:x").is_err());
    }
}
