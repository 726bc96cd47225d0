//! Network enforcement: the policy's connect and send rules as cgroup sock_addr programs
//! (`ebpf/netpolicy.bpf.c`) attached to the run's cgroup only. Rules are flattened into
//! entries — one per network × port range, in rule order, so first-match holds — and handed to
//! the programs as read-only globals before they load.

use std::net::IpAddr;
use std::path::Path;

use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};

use super::model::{Action, Cidr, NetRule, Policy, Ports};

/// Entries each of connect and send can hold (the programs' fixed arrays).
pub const MAX_ENTRIES: usize = 64;

static NETPOLICY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpolicy.bpf.o"));

/// `struct net_entry` of netpolicy.bpf.c.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetEntry {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub family: u8,
    pub allow: u8,
    pub loopback: u8,
    pub _pad: u8,
}

// SAFETY: integers only, laid out without padding (40 bytes); any bit pattern is valid.
unsafe impl aya::Pod for NetEntry {}

#[derive(Debug, thiserror::Error)]
pub enum SockAddrError {
    #[error(
        "the {list} rules need {n} entries (networks × port ranges); at most {MAX_ENTRIES} can be enforced"
    )]
    TooMany { list: &'static str, n: usize },
    #[error("loading netpolicy.bpf.o: {0}")]
    Load(String),
    #[error("attaching {program} to the run's cgroup: {error}")]
    Attach {
        program: &'static str,
        error: String,
    },
}

/// Address and mask words in network byte order, as the kernel hands them to the programs.
fn words(cidr: &Cidr) -> ([u32; 4], [u32; 4]) {
    let bytes: Vec<u8> = match cidr.addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut addr = [0u32; 4];
    let mut mask = [0u32; 4];
    for (w, chunk) in bytes.chunks(4).enumerate() {
        let start = (w as u32) * 32;
        let in_word = u32::from(cidr.prefix).saturating_sub(start).min(32);
        let m: u32 = if in_word == 0 {
            0
        } else {
            u32::MAX << (32 - in_word)
        };
        mask[w] = u32::from_ne_bytes(m.to_be_bytes());
        addr[w] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) & mask[w];
    }
    (addr, mask)
}

/// The entries of one rule list, in order.
pub fn entries(list: &'static str, rules: &[NetRule]) -> Result<Vec<NetEntry>, SockAddrError> {
    let all_ports = [Ports {
        lo: 0,
        hi: u16::MAX,
    }];
    let mut out = Vec::new();
    for rule in rules {
        let ports: &[Ports] = if rule.ports.is_empty() {
            &all_ports
        } else {
            &rule.ports
        };
        for cidr in &rule.cidrs {
            for p in ports {
                let (addr, mask) = words(cidr);
                out.push(NetEntry {
                    addr,
                    mask,
                    port_lo: p.lo,
                    port_hi: p.hi,
                    family: if cidr.addr.is_ipv4() { 2 } else { 10 },
                    allow: u8::from(rule.action == Action::Allow),
                    loopback: u8::from(cidr.addr.is_loopback() && cidr.prefix > 0),
                    _pad: 0,
                });
            }
        }
    }
    if out.len() > MAX_ENTRIES {
        return Err(SockAddrError::TooMany { list, n: out.len() });
    }
    Ok(out)
}

/// The loaded programs; dropping this detaches them.
pub struct SockAddrEnforcer {
    _ebpf: Ebpf,
    pub connect_entries: usize,
    pub send_entries: usize,
}

/// Load the programs with the policy's entries and attach them to `cgroup_dir`.
pub fn attach(policy: &Policy, cgroup_dir: &Path) -> Result<SockAddrEnforcer, SockAddrError> {
    let connect = entries("network.connect", &policy.connect)?;
    let send = entries("network.send", &policy.send)?;
    let table = |v: &[NetEntry]| {
        let mut t = [NetEntry::default(); MAX_ENTRIES];
        t[..v.len()].copy_from_slice(v);
        t
    };
    let (connect_t, send_t) = (table(&connect), table(&send));
    let (connect_n, send_n) = (connect.len() as u32, send.len() as u32);
    let default_allow = u8::from(policy.default == Action::Allow);
    let mut ebpf = EbpfLoader::new()
        .override_global("connect_entries", &connect_t, true)
        .override_global("connect_count", &connect_n, true)
        .override_global("send_entries", &send_t, true)
        .override_global("send_count", &send_n, true)
        .override_global("default_allow", &default_allow, true)
        .load(NETPOLICY_OBJECT)
        .map_err(|e| SockAddrError::Load(e.to_string()))?;
    let cgroup = std::fs::File::open(cgroup_dir).map_err(|e| SockAddrError::Attach {
        program: "cgroup",
        error: e.to_string(),
    })?;
    for program in [
        "vigil_connect4",
        "vigil_connect6",
        "vigil_sendmsg4",
        "vigil_sendmsg6",
    ] {
        let fail = |error: String| SockAddrError::Attach { program, error };
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(program)
            .ok_or_else(|| fail("missing from the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| fail(e.to_string()))?;
        prog.load().map_err(|e| fail(e.to_string()))?;
        // On 5.7+ (vigil's minimum) aya attaches with a bpf_link, which the kernel always
        // treats as multi-attach (it refuses flags there): the network evidence hooks share
        // these attach points, every program runs, any refusal refuses.
        prog.attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(SockAddrEnforcer {
        _ebpf: ebpf,
        connect_entries: connect.len(),
        send_entries: send.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_network_order_words_with_masks_in_rule_order() {
        let c = |s: &str, p| Cidr {
            addr: s.parse().expect("ip"),
            prefix: p,
        };
        let (addr, mask) = words(&c("10.1.2.3", 16));
        assert_eq!(addr[0].to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(mask[0].to_ne_bytes(), [255, 255, 0, 0]);
        let (addr, mask) = words(&c("fd00::1", 72));
        assert_eq!(mask[0], u32::MAX);
        assert_eq!(mask[1], u32::MAX);
        assert_eq!(mask[2].to_ne_bytes(), [255, 0, 0, 0]);
        assert_eq!(mask[3], 0);
        assert_eq!(addr[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        let rules = vec![
            NetRule {
                id: "a".into(),
                action: Action::Allow,
                cidrs: vec![c("127.0.0.1", 32), c("::1", 128)],
                ports: vec![Ports { lo: 443, hi: 443 }, Ports { lo: 8000, hi: 8080 }],
                at: Default::default(),
            },
            NetRule {
                id: "b".into(),
                action: Action::Deny,
                cidrs: vec![c("0.0.0.0", 0)],
                ports: vec![],
                at: Default::default(),
            },
        ];
        let e = entries("network.connect", &rules).expect("entries");
        assert_eq!(e.len(), 5);
        assert_eq!(
            (e[0].family, e[0].port_lo, e[0].loopback, e[0].allow),
            (2, 443, 1, 1)
        );
        assert_eq!((e[3].family, e[3].port_hi), (10, 8080));
        assert_eq!(
            (e[4].allow, e[4].port_lo, e[4].port_hi, e[4].loopback),
            (0, 0, 65535, 0)
        );
        let many = vec![rules[1].clone(); MAX_ENTRIES + 1];
        assert!(matches!(
            entries("network.send", &many),
            Err(SockAddrError::TooMany { n: 65, .. })
        ));
    }
}
