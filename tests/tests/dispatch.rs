//! The dispatcher under load, as root, on the real kernel: deadlines fire on time by
//! construction, whatever the kernel and the output streams produce meanwhile.

use serde_json::Value;
use vigil_e2e::*;

fn ns(e: &Value) -> u64 {
    e["ts_ns"].as_u64().expect("ts_ns")
}

fn first(events: &[Value], pred: impl Fn(&Value) -> bool) -> &Value {
    events
        .iter()
        .find(|e| pred(e))
        .unwrap_or_else(|| panic!("no such event in {events:#?}"))
}

/// A run doing nothing but opens (the kernel layer busy every millisecond, the ring buffer
/// overflowing) with `--timeout 2s`: the timeout fires at 2 s, the run is killed within
/// timeout + grace + 100 ms, and 250 ms heartbeats keep their period within ±20 %.
#[test]
fn deadlines_fire_on_time_under_an_open_storm() {
    const TIMEOUT_MS: u64 = 2000;
    const GRACE_MS: u64 = 500;
    const BEAT_MS: u64 = 250;
    let (f, _dir) = VigilRun::new("storm-deadlines")
        .args([
            "--timeout",
            "2s",
            "--liveness-level",
            "off",
            "--liveness-kill-grace-ms",
            &GRACE_MS.to_string(),
            "--profile-heartbeat-ms",
            &BEAT_MS.to_string(),
        ])
        .fixture(&["open-storm", "1000000000", "/etc/hostname"])
        .run();
    assert_eq!(f.code(), 124, "{}", f.stderr());
    let events = f.events();
    let spawned = ns(first(&events, |e| {
        e["kind"] == "subprocess_state" && e["data"]["state"] == "spawned"
    }));
    let fired = ns(first(&events, |e| {
        e["kind"] == "watchdog" && e["reason"] == "timeout.subprocess.wait"
    }));
    let complete = ns(first(&events, |e| {
        e["kind"] == "note" && e["data"]["what"] == "kill_complete"
    }));
    let ms = |t: u64| (t.saturating_sub(spawned)) as f64 / 1e6;
    assert!(
        ms(fired) >= TIMEOUT_MS as f64,
        "the timeout fired early: {} ms",
        ms(fired)
    );
    assert!(
        ms(complete) <= (TIMEOUT_MS + GRACE_MS + 100) as f64,
        "killed {} ms after the spawn (timeout fired at {} ms); bound {} ms",
        ms(complete),
        ms(fired),
        TIMEOUT_MS + GRACE_MS + 100
    );
    // The storm really was a storm: the kernel layer saw a great many opens.
    let health = f.health();
    let k = read_ndjson(&f.bundle.join("layers/kernel.ndjson"));
    let lost = health["lost_events"]["kernel_ring_buffer"]
        .as_u64()
        .unwrap_or(0);
    // A coalesced line stands for `count` events.
    let recorded: u64 = k.iter().map(|e| e["count"].as_u64().unwrap_or(1)).sum();
    assert!(
        recorded + lost > 50_000,
        "{recorded} events recorded ({} lines), {lost} lost",
        k.len()
    );
    let beats: Vec<u64> = events_of(&events, "heartbeat")
        .iter()
        .map(|e| ns(e))
        .filter(|t| *t <= fired)
        .collect();
    assert!(
        beats.len() >= 6,
        "{} heartbeats before the timeout",
        beats.len()
    );
    for pair in beats.windows(2) {
        let gap = (pair[1] - pair[0]) as f64 / 1e6;
        assert!(
            (gap - BEAT_MS as f64).abs() <= BEAT_MS as f64 * 0.2,
            "heartbeat gap {gap:.1} ms, period {BEAT_MS} ms ±20 %: {beats:?}"
        );
    }
    assert_valid_bundle(&f.bundle);
}
