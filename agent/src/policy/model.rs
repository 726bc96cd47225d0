//! A sandbox policy as vigil uses it: what a run may read, write and execute, and where it may
//! connect and send. Rules are allow- or deny-lists with ids; the first matching rule of a list
//! decides, and `default` decides when none matches (the order people know from firewalls).

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing is blocked; would-be decisions are recorded.
    Audit,
    /// Denied operations fail in the kernel.
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// Where a rule was written: for diagnostics that point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PathRule {
    pub id: String,
    pub action: Action,
    /// Absolute paths, possibly starting with `${WORKSPACE}`, `${HOME}` or `${TMPDIR}`; a rule
    /// covers each path and everything beneath it.
    pub paths: Vec<String>,
    pub at: Loc,
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetRule {
    pub id: String,
    pub action: Action,
    pub cidrs: Vec<Cidr>,
    /// Empty: every port.
    pub ports: Vec<Ports>,
    pub at: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub version: u32,
    pub name: String,
    pub mode: Mode,
    pub default: Action,
    pub read: Vec<PathRule>,
    pub write: Vec<PathRule>,
    pub exec: Vec<PathRule>,
    pub connect: Vec<NetRule>,
    pub send: Vec<NetRule>,
}

impl Policy {
    /// Whether the network rules leave every connect and send allowed (so a policy can be
    /// enforced on a host, or by a vigil, that holds only its filesystem rules).
    pub fn network_unrestricted(&self) -> bool {
        let everything: [Cidr; 4] = [("0.0.0.0", 0), ("::", 0), ("127.0.0.0", 8), ("::1", 128)]
            .map(|(a, prefix)| Cidr {
                addr: a.parse().unwrap_or(IpAddr::from([0u8; 4])),
                prefix,
            });
        [&self.connect, &self.send]
            .into_iter()
            .all(|rules| match self.default {
                Action::Allow => rules.iter().all(|r| r.action == Action::Allow),
                Action::Deny => rules.first().is_some_and(|r| {
                    r.action == Action::Allow
                        && r.ports.is_empty()
                        && everything
                            .iter()
                            .all(|e| r.cidrs.iter().any(|c| c.covers(e) && c.admits(e.addr)))
                }),
            })
    }

    /// Whether reads, writes and execs are allowed everywhere (each list's first rule allows
    /// `/`): such a policy restricts only the network, which a `vigil watch` can enforce.
    pub fn filesystem_unrestricted(&self) -> bool {
        [&self.read, &self.write, &self.exec]
            .into_iter()
            .all(|rules| {
                rules
                    .first()
                    .is_some_and(|r| r.action == Action::Allow && r.paths.iter().any(|p| p == "/"))
            })
    }
}

/// Variables a path may start with, expanded per run.
pub const VARIABLES: [&str; 3] = ["WORKSPACE", "HOME", "TMPDIR"];

impl Cidr {
    /// Whether `self` contains all of `other`.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }

    /// Whether a rule with this network reaches `ip`. Loopback is only reached through a
    /// network that names it: 0.0.0.0/0 means "anywhere out there", not the host's own
    /// services.
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.contains(ip) && (!ip.is_loopback() || self.addr.is_loopback() && self.prefix > 0)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Ports {
    pub fn covers(&self, other: &Ports) -> bool {
        self.lo <= other.lo && other.hi <= self.hi
    }
}

/// Whether path `outer` covers `inner` (equal, or an ancestor directory of it).
pub fn path_covers(outer: &str, inner: &str) -> bool {
    let outer = outer.trim_end_matches('/');
    inner == outer
        || outer.is_empty()
        || inner
            .strip_prefix(outer)
            .is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_paths_cover_what_they_should() {
        let net = |s: &str, p| Cidr {
            addr: s.parse().expect("ip"),
            prefix: p,
        };
        assert!(net("10.0.0.0", 8).covers(&net("10.1.2.0", 24)));
        assert!(!net("10.1.2.0", 24).covers(&net("10.0.0.0", 8)));
        assert!(net("0.0.0.0", 0).contains("192.168.1.1".parse().expect("ip")));
        assert!(!net("0.0.0.0", 0).contains("::1".parse().expect("ip")));
        assert!(net("fd00::", 8).contains("fd12::1".parse().expect("ip")));
        assert!(path_covers("/usr", "/usr/bin"));
        assert!(path_covers("/", "/etc"));
        assert!(!path_covers("/usr", "/usrlocal"));
        assert!(path_covers("${WORKSPACE}", "${WORKSPACE}/src"));
    }

    #[test]
    fn network_is_unrestricted_only_when_every_address_is_allowed() {
        let parse = |body: &str| {
            crate::policy::parse(&format!("version: 1\nname: t\nmode: enforce\n{body}"))
                .policy
                .expect("policy")
        };
        assert!(parse("default: allow\n").network_unrestricted());
        assert!(!parse("default: deny\n").network_unrestricted());
        let open = "default: deny\nnetwork:\n  connect:\n    - id: c\n      cidrs: [\"0.0.0.0/0\", \"::/0\", \"127.0.0.0/8\", \"::1/128\"]\n  send:\n    - id: s\n      cidrs: [\"0.0.0.0/0\", \"::/0\", \"127.0.0.0/8\", \"::1/128\"]\n";
        assert!(parse(open).network_unrestricted());
        // Without loopback named, loopback stays closed.
        let no_loop = open.replace(", \"127.0.0.0/8\", \"::1/128\"", "");
        assert!(!parse(&no_loop).network_unrestricted());
    }
}
