//! `--kernel-layer network` end to end, as root, on the real kernel: network evidence from the
//! cgroup hooks on the run's cgroup and the TCP-state tracepoint, with no syscall probe —
//! triggered by real connects, sends and binds, inside the run and outside it at once.
//! `cargo xtask vm` runs this binary in the guests too.

use serde_json::Value;
use vigil_e2e::*;

#[test]
fn network_scope_reports_the_runs_connects_sends_and_binds_without_syscall_probes() {
    let closed = closed_port();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let open = listener.local_addr().expect("addr").port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let udp_addr = udp.local_addr().expect("udp addr");
    let f = fixture_bin();
    // A link-local IPv6 connect without an interface fails with EINVAL inside tcp_v6_connect,
    // after the cgroup hook and before any SYN: its outcome never reaches the TCP tracepoint.
    let script = format!(
        "{f} connect 127.0.0.1:{closed}; {f} connect 127.0.0.1:{open} && {f} connect '[fe80::1]:80'; exec {f} udp-send {udp_addr}",
        f = f.display()
    );
    // Outside the run, at the same time: the same refused connect, in a loop.
    let outsider = Outsider::start(move || {
        let _ = std::net::TcpStream::connect(("127.0.0.1", closed));
    });
    let (r, _dir) = VigilRun::new("netscope")
        .args(["--kernel-layer", "network", "--", "sh", "-c", &script])
        .run();
    assert!(outsider.stop() > 0, "the outsider ran");
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let mut buf = [0u8; 16];
    assert_eq!(udp.recv(&mut buf).expect("datagram"), 5);
    drop(listener);

    let h = r.health();
    assert_eq!(
        h["kernel_layer"], "partial",
        "file opens, accepts and connected sends are not seen: {h:#}"
    );
    for p in ["file.open", "network.socket"] {
        assert_eq!(h["probes"][p]["status"], "unavailable", "{p}");
        let why = h["probes"][p]["reason"].as_str().expect("reason");
        assert!(why.contains("--kernel-layer network"), "{why}");
    }
    for p in ["network.cgroup_hooks", "network.tcp_state"] {
        assert_eq!(h["probes"][p]["status"], "attached", "{p}: {}", h["probes"]);
    }

    let k = read_ndjson(&r.bundle.join("layers/kernel.ndjson"));
    let net: Vec<&Value> = k
        .iter()
        .filter(|e| {
            e["kind"]
                .as_str()
                .is_some_and(|s| s.starts_with("network."))
        })
        .collect();
    assert!(
        net.iter().all(|e| e["observed_at"] != "syscall_exit"),
        "no syscall program: {net:#?}"
    );
    assert!(
        k.iter().all(|e| e["kind"] != "file.open"),
        "opens need the syscall program"
    );
    let sh = k
        .iter()
        .find(|e| e["kind"] == "process.exec" && e["comm"] == "sh")
        .expect("the shell's exec");
    let connect_to = |port: u16| -> Vec<&Value> {
        net.iter()
            .copied()
            .filter(|e| e["kind"] == "network.connect" && e["port"] == port)
            .collect()
    };

    let refused = connect_to(closed);
    assert_eq!(
        refused.len(),
        1,
        "the run's one refused connect, none of the outsider's: {refused:#?}"
    );
    let refused = refused[0];
    assert_eq!(refused["result"], -111, "{refused}");
    assert_eq!(refused["errno"], "ECONNREFUSED");
    assert_eq!(refused["observed_at"], "tcp_state");
    assert_eq!(refused["address"], "127.0.0.1");
    assert!(refused["fd"].is_null(), "a hook does not see the fd");
    assert_eq!(
        (refused["comm"].as_str(), &refused["ppid"]),
        (Some("vigil-fixture"), &sh["pid"]),
        "comm and ppid filled from the run's process tree: {refused}"
    );

    let accepted = connect_to(open);
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    assert_eq!(accepted[0]["result"], 0);
    assert_eq!(accepted[0]["observed_at"], "tcp_state");
    assert!(accepted[0]["errno"].is_null());

    let early = connect_to(80);
    assert_eq!(early.len(), 1, "{net:#?}");
    assert_eq!(early[0]["family"], "inet6");
    assert_eq!(early[0]["address"], "fe80::1");
    assert!(
        early[0]["result"].is_null(),
        "refused before its SYN: reported at the end, result unknown: {}",
        early[0]
    );
    assert_eq!(early[0]["observed_at"], "cgroup_hook");

    let sends: Vec<&Value> = net
        .iter()
        .copied()
        .filter(|e| e["kind"] == "network.send")
        .collect();
    assert_eq!(sends.len(), 1, "{sends:#?}");
    assert_eq!(sends[0]["port"], udp_addr.port());
    assert!(sends[0]["result"].is_null(), "a hook sees no byte count");
    let binds: Vec<&Value> = net
        .iter()
        .copied()
        .filter(|e| e["kind"] == "network.bind")
        .collect();
    assert!(
        binds
            .iter()
            .any(|b| b["result"] == 0 && b["port"].as_u64().is_some_and(|p| p > 0)),
        "a bind that succeeded, with the port the socket got: {binds:#?}"
    );
    assert_valid_bundle(&r.bundle);
}

/// Through the daemon, next to an `auto` run that keeps the syscall program attached for the
/// whole host: the `network` run gets the hooks' copy of its connect only — not the syscall
/// program's too — and none of its opens, so its evidence does not depend on its neighbours.
#[test]
fn a_network_run_of_the_daemon_is_the_same_beside_a_neighbour_with_syscall_probes() {
    use std::io::BufRead;
    let d = vigil_e2e::daemon::TestDaemon::start("netscope", &["--max-runs", "2"]);
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("out");
    std::fs::create_dir(&out).expect("mkdir out");
    let mut neighbour = d
        .run_cmd(
            &out,
            &[
                "--run-id",
                "neighbour",
                "--",
                "sh",
                "-c",
                "echo ready; exec sleep 1000",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("neighbour");
    let mut line = String::new();
    std::io::BufReader::new(neighbour.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    assert_eq!(line.trim(), "ready", "the neighbour's run started");

    let closed = closed_port();
    let script = format!(
        "cat /nonexistent/vigil-netscope-5e; {} connect 127.0.0.1:{closed}; true",
        fixture_bin().display()
    );
    let r = d
        .run_cmd(
            &out,
            &[
                "--run-id",
                "net",
                "--kernel-layer",
                "network",
                "--",
                "sh",
                "-c",
                &script,
            ],
        )
        .output()
        .expect("client");
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(neighbour.id() as i32, libc::SIGINT) };
    let _ = neighbour.wait();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    let bundle = out.join("net");
    let h = read_json(&bundle.join("observation-health.json"));
    assert_eq!(h["mode"], "daemon");
    assert_eq!(h["probes"]["network.cgroup_hooks"]["status"], "attached");
    let why = h["probes"]["file.open"]["reason"].as_str().expect("reason");
    assert!(why.contains("--kernel-layer network"), "{why}");
    let k = read_ndjson(&bundle.join("layers/kernel.ndjson"));
    let connects: Vec<&Value> = k
        .iter()
        .filter(|e| e["kind"] == "network.connect")
        .collect();
    assert_eq!(connects.len(), 1, "one connect, one copy: {connects:#?}");
    assert_eq!(connects[0]["observed_at"], "tcp_state");
    assert_eq!(connects[0]["result"], -111);
    assert_eq!(connects[0]["port"], closed);
    assert!(
        k.iter().all(|e| e["kind"] != "file.open"),
        "the neighbour's syscall program must not leak opens into this run"
    );
    assert_valid_bundle(&bundle);
    let n = read_json(&out.join("neighbour/observation-health.json"));
    assert!(
        n["probes"].get("network.cgroup_hooks").is_none(),
        "an auto run does not list the network hooks: {}",
        n["probes"]
    );
    assert_eq!(n["probes"]["file.open"]["status"], "attached");
}
