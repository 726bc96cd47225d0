//! Clocks. Every deadline is on CLOCK_MONOTONIC ([`mono_ns`]), which no wall-clock step moves;
//! every timestamp vigil writes is UTC, RFC 3339 for people and Unix-epoch nanoseconds for
//! machines (span and event ordering, chrome-trace export).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Nanoseconds on CLOCK_MONOTONIC, for deadlines and durations.
pub fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// A CLOCK_MONOTONIC instant as a tokio deadline.
pub fn mono_to_instant(deadline: u64) -> tokio::time::Instant {
    let now = mono_ns();
    tokio::time::Instant::now() + std::time::Duration::from_nanos(deadline.saturating_sub(now))
}

/// RFC 3339 UTC with microsecond precision, e.g. `2026-11-23T07:19:10.123456Z`.
pub fn rfc3339(ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Wall clock minus boot clock (CLOCK_BOOTTIME, what bpf_ktime_get_boot_ns() reads), to turn
/// kernel timestamps into Unix time.
pub fn boot_to_wall_offset_ns() -> i128 {
    let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0);
    i128::from(now_ns()) - boot
}

/// A CLOCK_BOOTTIME timestamp as Unix-epoch nanoseconds, given boot_to_wall_offset_ns().
pub fn boot_to_wall(boot_ns: u64, offset_ns: i128) -> u64 {
    u64::try_from(i128::from(boot_ns) + offset_ns).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_as_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_500_000_000_123_456_789),
            "2017-07-14T02:40:00.123456Z"
        );
    }
}
