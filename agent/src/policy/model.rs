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

/// Variables a path may start with, expanded per run.
pub const VARIABLES: [&str; 3] = ["WORKSPACE", "HOME", "TMPDIR"];

impl Cidr {
    /// Whether `self` contains all of `other`.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
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
}
