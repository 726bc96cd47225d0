//! Filesystem enforcement with Landlock: the policy's read/write/exec allow rules become a
//! ruleset, built here in vigil (which may allocate and open paths) and only *applied* in the
//! child between clone3 and exec, with two raw syscalls (no_new_privs, landlock_restrict_self).
//!
//! Landlock can only allow: what a ruleset handles and no rule grants is denied. So a policy is
//! enforceable when `default` is deny and no deny rule sits inside a tree an allow rule grants
//! (that would need a hole Landlock cannot punch). Anything else is refused, never weakened.

use std::os::fd::OwnedFd;

use landlock::{
    ABI, Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
};

use super::model::{Action, PathRule, Policy, path_covers};
use super::oracle::{Vars, expand_path};

/// A ruleset ready for `landlock_restrict_self`, and what health says about it.
#[derive(Debug)]
pub struct LandlockPlan {
    pub ruleset: OwnedFd,
    pub abi: i32,
    /// `landlock ABI n: rights…` and the paths that did not exist (skipped).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error(
        "Landlock is not available on this kernel (ABI {0}); filesystem rules cannot be enforced"
    )]
    Unavailable(i64),
    #[error(
        "`default: allow` cannot be enforced by Landlock, which can only allow; use `default: deny` with allow rules"
    )]
    DefaultAllow,
    #[error(
        "rule `{deny}` denies {path} inside what rule `{allow}` allows; Landlock cannot punch that hole"
    )]
    DenyInsideAllow {
        deny: String,
        allow: String,
        path: String,
    },
    #[error("Landlock ruleset: {0}")]
    Ruleset(String),
}

/// The kernel's Landlock ABI version (≤ 0: unavailable).
pub fn kernel_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version; it dereferences nothing.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    }
}

fn check_denies(rules: &[PathRule]) -> Result<(), LandlockError> {
    for deny in rules.iter().filter(|r| r.action == Action::Deny) {
        for allow in rules.iter().filter(|r| r.action == Action::Allow) {
            if let Some(path) = deny
                .paths
                .iter()
                .find(|p| allow.paths.iter().any(|a| path_covers(a, p)))
            {
                return Err(LandlockError::DenyInsideAllow {
                    deny: deny.id.clone(),
                    allow: allow.id.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Build the ruleset for a policy's filesystem rules.
pub fn plan(policy: &Policy, vars: &Vars) -> Result<LandlockPlan, LandlockError> {
    let raw_abi = kernel_abi();
    if raw_abi < 1 {
        return Err(LandlockError::Unavailable(raw_abi));
    }
    if policy.default == Action::Allow {
        return Err(LandlockError::DefaultAllow);
    }
    for list in [&policy.read, &policy.write, &policy.exec] {
        check_denies(list)?;
    }
    let abi = ABI::from(i32::try_from(raw_abi).unwrap_or(i32::MAX));
    let err = |e: landlock::RulesetError| LandlockError::Ruleset(e.to_string());
    let handled = AccessFs::from_all(abi);
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = AccessFs::from_write(abi);
    // The kernel opens a program (and its ELF interpreter) for reading to execute it, and
    // Landlock checks ReadFile there too: "may be executed" needs both.
    let exec: BitFlags<AccessFs> = AccessFs::Execute | AccessFs::ReadFile;
    let mut ruleset = Ruleset::default()
        .handle_access(handled)
        .map_err(err)?
        .create()
        .map_err(err)?;
    let mut skipped = Vec::new();
    for (rules, access) in [
        (&policy.read, read),
        (&policy.write, write),
        (&policy.exec, exec),
    ] {
        for rule in rules.iter().filter(|r| r.action == Action::Allow) {
            for path in &rule.paths {
                let path = expand_path(path, vars);
                let Ok(fd) = PathFd::new(&path) else {
                    skipped.push(path);
                    continue;
                };
                // Directory-only rights do not apply to a file: keep the file ones.
                let access = if std::path::Path::new(&path).is_dir() {
                    access
                } else {
                    access & AccessFs::from_file(abi)
                };
                ruleset = ruleset
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(err)?;
            }
        }
    }
    let fd: Option<OwnedFd> = ruleset.into();
    let ruleset = fd.ok_or_else(|| LandlockError::Ruleset("no ruleset fd".into()))?;
    let mut notes = vec![format!(
        "landlock ABI {raw_abi}: {}",
        handled
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    // Rights this vigil would handle on a current kernel that this one's ABI cannot: what the
    // host could not enforce (e.g. Truncate before ABI 3, IoctlDev before ABI 5).
    let missing: Vec<String> = (AccessFs::from_all(ABI::V5) & !handled)
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    notes.push(if missing.is_empty() {
        format!("landlock: every filesystem right is enforceable at ABI {raw_abi}")
    } else {
        format!(
            "landlock ABI {raw_abi} cannot enforce: {} (allowed to everything)",
            missing.join(", ")
        )
    });
    if !skipped.is_empty() {
        notes.push(format!(
            "landlock: paths that do not exist were left out (nothing beneath them is allowed): {}",
            skipped.join(", ")
        ));
    }
    Ok(LandlockPlan {
        ruleset,
        abi: i32::try_from(raw_abi).unwrap_or(i32::MAX),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn policy(body: &str) -> Policy {
        let p = parse(&format!("version: 1\nname: t\nmode: enforce\n{body}"));
        assert!(
            p.diagnostics
                .iter()
                .all(|d| d.severity != crate::policy::Severity::Error),
            "{:?}",
            p.diagnostics
        );
        p.policy.expect("policy")
    }

    fn vars() -> Vars {
        Vars {
            workspace: "/w".into(),
            home: "/root".into(),
            tmpdir: "/tmp".into(),
        }
    }

    #[test]
    fn what_landlock_cannot_express_is_refused_not_weakened() {
        let allow_default = policy("default: allow\n");
        assert!(matches!(
            plan(&allow_default, &vars()),
            Err(LandlockError::DefaultAllow)
        ));
        let hole = policy(
            "default: deny\nfilesystem:\n  read:\n    - id: all\n      paths: [/]\n    - id: no-shadow\n      action: deny\n      paths: [/etc/shadow]\n",
        );
        match plan(&hole, &vars()) {
            Err(LandlockError::DenyInsideAllow { deny, allow, path }) => {
                assert_eq!(
                    (deny.as_str(), allow.as_str(), path.as_str()),
                    ("no-shadow", "all", "/etc/shadow")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plan_names_the_abi_and_skips_missing_paths() {
        let p = policy(
            "default: deny\nfilesystem:\n  read:\n    - id: r\n      paths: [/usr, /nonexistent-vigil-dir]\n",
        );
        let plan = plan(&p, &vars()).expect("plan");
        assert!(plan.abi >= 1);
        assert!(plan.notes[0].starts_with(&format!("landlock ABI {}: ", plan.abi)));
        assert!(plan.notes[1].starts_with("landlock"), "{:?}", plan.notes);
        assert!(
            plan.notes[2].contains("/nonexistent-vigil-dir"),
            "{:?}",
            plan.notes
        );
    }
}
