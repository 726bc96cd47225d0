//! `struct sockaddr` as the kernel lays it out (family in host order, port and address in
//! network order), decoded into the endpoint the kernel layer records.

/// A decoded `struct sockaddr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `inet`, `inet6`, `unix`, or `af_<n>` for other families.
    pub family: String,
    /// The IP address, or the unix socket path (`@name` for the abstract namespace).
    pub address: Option<String>,
    pub port: Option<u16>,
}

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Decode a sockaddr of the kernel's layout (family in host order, port and address in network
/// order). None when no family could be read.
pub fn decode_sockaddr(a: &[u8]) -> Option<Endpoint> {
    let family = u16::from_ne_bytes([*a.first()?, *a.get(1)?]);
    let port = || Some(u16::from_be_bytes([*a.get(2)?, *a.get(3)?]));
    let (family, address, port) = match family {
        AF_INET => {
            let ip: [u8; 4] = a.get(4..8)?.try_into().ok()?;
            (
                "inet".to_string(),
                Some(std::net::Ipv4Addr::from(ip).to_string()),
                port(),
            )
        }
        AF_INET6 => {
            let ip: [u8; 16] = a.get(8..24)?.try_into().ok()?;
            (
                "inet6".to_string(),
                Some(std::net::Ipv6Addr::from(ip).to_string()),
                port(),
            )
        }
        AF_UNIX => {
            let path = a.get(2..).unwrap_or_default();
            let address = match path.first() {
                None => None,
                // Abstract namespace: a leading NUL, the name is the rest of the length.
                Some(0) if path.len() > 1 => Some(format!(
                    "@{}",
                    String::from_utf8_lossy(&path[1..]).trim_end_matches('\0')
                )),
                Some(0) => None,
                Some(_) => Some(cstr(path)),
            };
            ("unix".to_string(), address, None)
        }
        other => (format!("af_{other}"), None, None),
    };
    Some(Endpoint {
        family,
        address,
        port,
    })
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_socket_addresses() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let e = decode_sockaddr(&v4).expect("v4");
        assert_eq!(
            (e.family.as_str(), e.address.as_deref(), e.port),
            ("inet", Some("127.0.0.1"), Some(8080))
        );
        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[23] = 1;
        let e = decode_sockaddr(&v6).expect("v6");
        assert_eq!((e.address.as_deref(), e.port), (Some("::1"), Some(443)));
        let mut un = AF_UNIX.to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/x.sock\0");
        assert_eq!(
            decode_sockaddr(&un).and_then(|e| e.address).as_deref(),
            Some("/run/x.sock")
        );
        let mut abs = AF_UNIX.to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0name");
        assert_eq!(
            decode_sockaddr(&abs).and_then(|e| e.address).as_deref(),
            Some("@name")
        );
        assert_eq!(decode_sockaddr(&[2]), None);
        // A v4 address cut short is not an endpoint.
        assert_eq!(decode_sockaddr(&v4[..6]), None);
    }
}
