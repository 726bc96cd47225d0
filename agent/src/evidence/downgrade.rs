//! Data events past the evidence budget, kept as counts: per kind, and per kind and target
//! (the path, the `address:port`, the process), so a bounded layer still says exactly what it
//! left out. The targets are bounded too; what does not fit is counted under `(other)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Distinct (kind, target) pairs kept; the rest go to `(other)`.
pub const MAX_TARGETS: usize = 1000;

/// One downgraded (kind, target) and how many of its events were not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DowngradedTarget {
    pub kind: String,
    pub target: String,
    pub count: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Downgraded {
    targets: BTreeMap<(String, String), u64>,
}

impl Downgraded {
    pub fn count(&mut self, kind: &str, target: &str) {
        self.count_n(kind, target, 1);
    }

    /// `n` events of one (kind, target) at once (a coalesced run).
    pub fn count_n(&mut self, kind: &str, target: &str, n: u64) {
        let key = (kind.to_string(), target.to_string());
        if let Some(c) = self.targets.get_mut(&key) {
            *c += n;
        } else if self.targets.len() < MAX_TARGETS {
            self.targets.insert(key, n);
        } else {
            *self
                .targets
                .entry((kind.to_string(), "(other)".to_string()))
                .or_default() += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.targets.values().sum()
    }

    pub fn merge(&mut self, other: &Downgraded) {
        for ((k, t), n) in &other.targets {
            *self.targets.entry((k.clone(), t.clone())).or_default() += n;
        }
    }

    /// `downgraded_events_by_kind` of health.
    pub fn by_kind(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((k, _), n) in &self.targets {
            *out.entry(k.clone()).or_default() += n;
        }
        out
    }

    /// Every (kind, target), most downgraded first.
    pub fn targets(&self) -> Vec<DowngradedTarget> {
        let mut v: Vec<DowngradedTarget> = self
            .targets
            .iter()
            .map(|((kind, target), count)| DowngradedTarget {
                kind: kind.clone(),
                target: target.clone(),
                count: *count,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.target.cmp(&b.target)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_and_targets_bounded() {
        let mut d = Downgraded::default();
        for i in 0..(MAX_TARGETS + 10) {
            d.count("file.open", &format!("/f{i}"));
        }
        d.count("file.open", "/f0");
        d.count("network.connect", "127.0.0.1:80");
        assert_eq!(d.total(), MAX_TARGETS as u64 + 12);
        assert_eq!(d.by_kind()["file.open"], MAX_TARGETS as u64 + 11);
        let t = d.targets();
        assert_eq!(t[0].target, "(other)", "{:?}", &t[..2]);
        assert_eq!(t[0].count, 10);
        assert!(t.len() <= MAX_TARGETS + 2);
    }
}
