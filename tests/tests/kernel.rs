//! The kernel layer end to end, as root, on the real kernel: file opens, network calls, nested
//! cgroups, OOM kills, per-process spans and an event storm, each triggered by real processes.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vigil_e2e::*;

fn kernel_events(bundle: &Path) -> Vec<Value> {
    read_ndjson(&bundle.join("layers/kernel.ndjson"))
}

fn of_kind<'a>(k: &'a [Value], kind: &str) -> Vec<&'a Value> {
    k.iter().filter(|e| e["kind"] == kind).collect()
}

/// Whether this kernel loads tracing (fentry/fexit) programs, as `vigil doctor` found.
fn kernel_has_fentry() -> bool {
    let out = vigil_ok(&["doctor".as_ref(), "--json".as_ref()]);
    let r: Value = serde_json::from_slice(&out.stdout).expect("doctor json");
    r["features"]["fentry"]["status"] == "yes"
}

/// Health names the path file and network evidence came from: fexit where the kernel loads
/// tracing programs (and nothing forced the tracepoint), else the sys_exit tracepoint with why.
fn assert_syscall_path(h: &Value, forced: Option<&str>) {
    let why = h["probes"]["file.open"]["reason"].as_str().unwrap_or("");
    match forced {
        Some(path) => assert!(
            why.contains("raw_tp/sys_exit") && why.contains(&format!("VIGIL_SYSCALL_PATH={path}")),
            "{why}"
        ),
        None if kernel_has_fentry() => {
            assert!(why.contains("fexit on the syscall functions"), "{why}")
        }
        None => assert!(
            why.contains("raw_tp/sys_exit") && why.contains("fexit refused"),
            "{why}"
        ),
    }
    assert_eq!(h["probes"]["network.socket"]["reason"], why);
}

#[test]
fn opens_and_connects_carry_their_results_and_only_the_runs_appear() {
    opens_and_connects_on(None);
}

/// The same evidence from the fallback: where fexit loads, this is the other path; where it
/// does not, the test above already took it and this one checks the forcing.
#[test]
fn the_tracepoint_path_records_the_same_opens_execs_and_connects() {
    opens_and_connects_on(Some("tracepoint"));
}

fn opens_and_connects_on(forced: Option<&str>) {
    let inside = "/nonexistent/vigil-open-inside-5d1e";
    let outside = "/nonexistent/vigil-open-outside-5d1e";
    let port = closed_port();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let open_port = listener.local_addr().expect("addr").port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let udp_addr = udp.local_addr().expect("udp addr");
    let udp6 = std::net::UdpSocket::bind("[::1]:0").expect("udp on ::1");
    let udp6_addr = udp6.local_addr().expect("udp6 addr");
    let fixture = fixture_bin();
    let script = format!(
        "cat {inside}; /nonexistent/vigil-exec-5d1e 2>/dev/null; cd /etc && cat ./vigil-relative-5d1e; {f} connect 127.0.0.1:{port}; {f} connect 127.0.0.1:{open_port} && {f} udp-send {udp6_addr} && exec {f} udp-send {udp_addr}",
        f = fixture.display()
    );
    // Outside the run, at the same time: the same open and the same connect, in a loop.
    let outsider = Outsider::start(move || {
        let _ = std::fs::File::open(outside);
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    });
    let mut run = VigilRun::new("opens");
    if let Some(path) = forced {
        run = run.env("VIGIL_SYSCALL_PATH", path);
    }
    let (f, _dir) = run.args(["--", "sh", "-c", &script]).run();
    let outside_tries = outsider.stop();
    assert!(outside_tries > 0, "the outsider ran");
    // The last command is the UDP send; the connect before it failed (exit status ignored).
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let mut buf = [0u8; 16];
    assert_eq!(udp.recv(&mut buf).expect("datagram"), 5);
    drop(listener);

    let h = f.health();
    assert_eq!(h["kernel_layer"], "observed", "{h:#}");
    for p in ["file.open", "network.socket", "oom.mark_victim"] {
        assert_eq!(h["probes"][p]["status"], "attached", "{p}: {}", h["probes"]);
    }
    assert_syscall_path(&h, forced);
    let k = kernel_events(&f.bundle);
    let execs = of_kind(&k, "process.exec_failed");
    let failed = execs
        .iter()
        .find(|e| e["path"] == "/nonexistent/vigil-exec-5d1e")
        .unwrap_or_else(|| panic!("the failed exec: {execs:#?}"));
    assert_eq!(failed["result"], -2, "{failed}");
    let opens = of_kind(&k, "file.open");
    let missing: Vec<_> = opens.iter().filter(|e| e["path"] == inside).collect();
    assert_eq!(missing.len(), 1, "one open of {inside}: {opens:#?}");
    assert_eq!(missing[0]["result"], -2);
    assert_eq!(missing[0]["errno"], "ENOENT");
    assert_eq!(missing[0]["resolved_path"], inside);
    assert_eq!(missing[0]["access"], "read");
    assert_eq!(missing[0]["comm"], "cat");
    let relative = opens
        .iter()
        .find(|e| e["path"] == "./vigil-relative-5d1e")
        .expect("relative open");
    assert_eq!(
        relative["resolved_path"], "/etc/vigil-relative-5d1e",
        "resolved against the cwd at the call"
    );

    let connects = of_kind(&k, "network.connect");
    let refused = connects
        .iter()
        .find(|e| e["port"] == port)
        .unwrap_or_else(|| panic!("connect to {port}: {connects:#?}"));
    assert_eq!(refused["family"], "inet");
    assert_eq!(refused["address"], "127.0.0.1");
    assert_eq!(refused["result"], -111);
    assert_eq!(refused["errno"], "ECONNREFUSED");
    assert_eq!(refused["endpoint_source"], "argument");
    let accepted = of_kind(&k, "network.connect")
        .into_iter()
        .find(|e| e["port"] == open_port)
        .expect("connect to the listener");
    assert_eq!(accepted["result"], 0);
    assert!(accepted["errno"].is_null());
    let sends = of_kind(&k, "network.send");
    let on_stream = sends
        .iter()
        .find(|e| e["port"] == open_port)
        .unwrap_or_else(|| panic!("send on the connected socket: {sends:#?}"));
    assert_eq!(
        on_stream["endpoint_source"], "peer",
        "no address argument: the socket's peer"
    );
    assert_eq!(on_stream["address"], "127.0.0.1");
    assert_eq!(on_stream["result"], 5);
    let sent = sends
        .iter()
        .find(|e| e["port"] == udp_addr.port())
        .unwrap_or_else(|| panic!("send to {udp_addr}: {sends:#?}"));
    assert_eq!(sent["result"], 5, "bytes sent");
    assert_eq!(sent["address"], "127.0.0.1");
    let sent6 = sends
        .iter()
        .find(|e| e["port"] == udp6_addr.port())
        .unwrap_or_else(|| panic!("send to {udp6_addr}: {sends:#?}"));
    assert_eq!(sent6["family"], "inet6");
    assert_eq!(sent6["address"], "::1");
    assert_eq!(udp6.recv(&mut buf).expect("datagram on ::1"), 5);

    // None of the outsider's thousands of identical calls leaked in.
    let cg = h["cgroup"]["id"].clone();
    assert!(k.iter().all(|e| e["cgroup_id"] == cg));
    assert!(
        !opens.iter().any(|e| e["path"] == outside),
        "an outside open leaked in"
    );
    assert_eq!(
        connects.iter().filter(|e| e["port"] == port).count(),
        1,
        "only the run's connect to {port} ({outside_tries} outside tries)"
    );
    assert_valid_bundle(&f.bundle);
}

#[test]
fn processes_in_a_nested_child_cgroup_are_observed() {
    let marker = "/nonexistent/vigil-nested-open-a41c";
    // The child makes a cgroup beneath its own, moves in, then opens and execs there — as
    // systemd-run or a container runtime would.
    let script = format!(
        "cg={mount}$(sed -n 's/^0:://p' /proc/self/cgroup) && mkdir \"$cg/inner\" && echo $$ > \"$cg/inner/cgroup.procs\" && exec cat {marker}",
        mount = cgroup2_mount().display()
    );
    let (f, _dir) = VigilRun::new("nested")
        .args(["--", "sh", "-c", &script])
        .run();
    assert_eq!(f.code(), 1, "cat of a missing file: {}", f.stderr());
    let run_cg = f.health()["cgroup"]["id"].clone();
    let k = kernel_events(&f.bundle);
    let open = k
        .iter()
        .find(|e| e["kind"] == "file.open" && e["path"] == marker)
        .unwrap_or_else(|| panic!("open in the nested cgroup: {k:#?}"));
    assert_ne!(
        open["cgroup_id"], run_cg,
        "the open happened in the child cgroup"
    );
    let exit = k
        .iter()
        .find(|e| e["kind"] == "process.exit" && e["pid"] == open["pid"] && e["group_dead"] == true)
        .expect("exit in the nested cgroup");
    assert_eq!(exit["exit_code"], 1);
    assert_valid_bundle(&f.bundle);
}

/// A memory cgroup the child moves itself into: cgroup v1's memory controller on hybrid hosts
/// (where v2 has none), else a v2 child cgroup of the run with memory.max.
fn memory_limited_exec(limit: &str, cmd: &str) -> (String, Option<PathBuf>) {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        let dir = v1.join(format!("vigil-oom-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("v1 memory cgroup");
        std::fs::write(dir.join("memory.limit_in_bytes"), limit).expect("limit");
        let script = format!("echo $$ > {}/cgroup.procs && exec {cmd}", dir.display());
        (script, Some(dir))
    } else {
        // Pure v2: the run's own cgroup has the memory controller (vigil enables it down its
        // subtree); a child cgroup could not get it while the run's cgroup holds this shell.
        let script = format!(
            "cg={mount}$(sed -n 's/^0:://p' /proc/self/cgroup) && echo {limit} > \"$cg/memory.max\" && exec {cmd}",
            mount = cgroup2_mount().display()
        );
        (script, None)
    }
}

#[test]
fn an_oom_kill_is_recorded_as_oom_killed() {
    let fixture = fixture_bin();
    let (script, v1_dir) = memory_limited_exec(
        &(32u64 << 20).to_string(),
        &format!("{} alloc 512", fixture.display()),
    );
    let (f, _dir) = VigilRun::new("oom").args(["--", "sh", "-c", &script]).run();
    if let Some(d) = v1_dir {
        let _ = std::fs::remove_dir(d);
    }
    assert_eq!(
        f.code(),
        137,
        "the allocator dies of SIGKILL: {}",
        f.stderr()
    );
    let k = kernel_events(&f.bundle);
    let oom = of_kind(&k, "oom.kill");
    assert_eq!(oom.len(), 1, "one OOM victim: {k:#?}");
    assert_eq!(oom[0]["comm"], "vigil-fixture");
    let victim = oom[0]["pid"].clone();
    let states = events_of(&f.events(), "subprocess_state")
        .into_iter()
        .filter(|e| e["data"]["pid"] == victim)
        .map(|e| e["data"]["state"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>();
    assert!(
        states.iter().any(|s| s == "oom_killed"),
        "subprocess_state oom_killed for {victim}: {states:?}"
    );
    assert!(f.health()["probes"]["oom.mark_victim"]["status"] == "attached");
    assert_valid_bundle(&f.bundle);
}

#[test]
fn detailed_profile_has_a_span_per_process_and_basic_does_not() {
    let script = "/bin/true; /bin/true";
    let (f, _dir) = VigilRun::new("spans")
        .args(["--profile-level", "detailed", "--", "sh", "-c", script])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let spans = f.trace()["spans"].as_array().expect("spans").clone();
    let main_wait = spans
        .iter()
        .find(|s| s["name"] == "subprocess.wait" && s["attrs"]["source"].is_null())
        .expect("the main child's wait span");
    let per_process: Vec<&Value> = spans
        .iter()
        .filter(|s| s["attrs"]["source"] == "kernel")
        .collect();
    let execs: Vec<&&Value> = per_process
        .iter()
        .filter(|s| s["name"] == "subprocess.exec")
        .collect();
    assert_eq!(
        execs.len(),
        2,
        "one exec span per /bin/true: {per_process:#?}"
    );
    for s in &execs {
        assert_eq!(s["attrs"]["exec_chain"], json!(["/bin/true"]));
        assert_eq!(s["parent_id"], main_wait["span_id"]);
        assert!(s["end_ns"].as_u64() >= s["start_ns"].as_u64());
    }
    let waits: Vec<&&Value> = per_process
        .iter()
        .filter(|s| s["name"] == "subprocess.wait")
        .collect();
    assert_eq!(waits.len(), 2);
    assert!(
        waits
            .iter()
            .all(|s| s["status"] == "passed" && s["attrs"]["exit_code"] == 0)
    );

    let (b, _dir) = VigilRun::new("spans_basic")
        .args(["--profile-level", "basic", "--", "sh", "-c", script])
        .run();
    assert_eq!(b.code(), 0, "{}", b.stderr());
    let basic = b.trace()["spans"].as_array().expect("spans").clone();
    assert!(
        !basic.iter().any(|s| s["attrs"]["source"] == "kernel"),
        "per-process spans are detailed-only: {basic:#?}"
    );
    assert_valid_bundle(&f.bundle);
}

/// A million opens in a tight loop: every one is either in the layer or counted as lost, and
/// health says partial exactly when something was lost.
/// Events of the layer about `path`: lines that name it, a coalesced line counting for its
/// `count` events.
fn events_at(layer: &str, path: &str) -> u64 {
    let needle = format!("\"path\":\"{path}\"");
    layer
        .lines()
        .filter(|l| l.contains(&needle))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["count"].as_u64())
                .unwrap_or(1)
        })
        .sum()
}

/// A tight loop of identical opens is coalesced in the file (one line with `count`, first and
/// last seq and ts) while the contract counters, fed every event, stay exact.
#[test]
fn repeated_identical_opens_are_coalesced_and_counts_stay_exact() {
    const N: u64 = 5_000;
    // A file that exists: lookups that find nothing (ENOENT) are not operations for the
    // contract counters.
    let path = "/etc/hostname";
    let contracts = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        contracts.path().join("c.yaml"),
        format!("contracts:\n  - id: every-open\n    span: run.total\n    postconditions: [\"file.open.count >= {N}\"]\n"),
    )
    .expect("contract");
    let (f, _dir) = VigilRun::new("coalesce")
        .args(["--contracts".as_ref(), contracts.path().as_os_str()])
        .fixture(&["open-paced", &N.to_string(), "20000", path])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let h = f.health();
    let lost = h["lost_events"]["kernel_ring_buffer"].as_u64().unwrap_or(0);
    assert_eq!(lost, 0, "paced: nothing lost {h:#}");
    let layer = std::fs::read_to_string(f.bundle.join("layers/kernel.ndjson")).expect("layer");
    let needle = format!("\"path\":\"{path}\"");
    let lines: Vec<serde_json::Value> = layer
        .lines()
        .filter(|l| l.contains(&needle))
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(
        events_at(&layer, path),
        N,
        "every open is in the layer, coalesced or not"
    );
    // Coalescing joins what arrives within a short window: a guest under TCG opens ~20× more
    // slowly, so fewer opens share a window (the counts above stay exact either way).
    let ratio = if scaled(100) < 100 { 2 } else { 10 };
    assert!(
        (lines.len() as u64) * ratio < N,
        "{} lines for {N} identical opens (expected at least {ratio}× fewer)",
        lines.len()
    );
    let run = lines
        .iter()
        .find(|l| l["count"].as_u64().is_some())
        .expect("a coalesced line");
    let (seq, last) = (
        run["seq"].as_u64().expect("seq"),
        run["last_seq"].as_u64().expect("last"),
    );
    assert_eq!(
        last - seq + 1,
        run["count"].as_u64().expect("count"),
        "contiguous seqs: {run}"
    );
    assert!(run["last_ts_ns"].as_u64() >= run["ts_ns"].as_u64());
    // The contract saw every open: it holds (no violation), because counters are fed events.
    let t = f.trace();
    assert_eq!(
        t["summary"]["contract_violations"],
        serde_json::json!([]),
        "file.open.count >= {N} held: the counters saw every event, not the lines"
    );
    assert_matches_schema("kernel_event.v1.json", run);
    assert_valid_bundle(&f.bundle);
}

#[test]
fn an_open_storm_is_recorded_or_exactly_counted() {
    let n = scaled(1_000_000);
    let path = "/nonexistent/vigil-storm-e7b0";
    let (f, _dir) = VigilRun::new("storm")
        .fixture(&["open-storm", &n.to_string(), path])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let h = f.health();
    let lost = h["lost_events"]["kernel_ring_buffer_by_kind"]["file.open"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(h["lost_events"]["reader"], 0);
    // Count without holding a million parsed lines.
    let layer = std::fs::read_to_string(f.bundle.join("layers/kernel.ndjson")).expect("layer");
    let seen = events_at(&layer, path);
    assert_eq!(
        seen + lost,
        n,
        "{seen} recorded + {lost} counted lost must be every open"
    );
    let expected = if lost == 0 { "observed" } else { "partial" };
    assert_eq!(h["kernel_layer"], expected, "{}", h["lost_events"]);
    eprintln!("storm: {seen} recorded, {lost} lost");
    assert_valid_bundle(&f.bundle);
}

/// `--evidence-max-bytes`: a million-open storm under a 4 MiB budget leaves a layer within the
/// budget (control events may pass it), every exec and exit of the run in it, and every open
/// either recorded, downgraded to a per-target count, or counted lost — exactly. (4 MiB, not
/// the 16 MiB of the issue: the debug-build reader keeps ~5 % of a tight 1M storm, ~20 MB,
/// which a 16 MiB budget does not reliably cross.)
#[test]
fn an_evidence_budget_bounds_the_layer_and_keeps_control_events_and_exact_counts() {
    let n = scaled(1_000_000);
    // The budget shrinks with the storm, so that it is still reached.
    let budget = scaled(4 << 20);
    // Distinct paths, as fast as it goes: nothing to coalesce, so the budget is what bounds.
    let path = "/nonexistent/vigil-distinct-";
    let (f, _dir) = VigilRun::new("budget")
        .args(["--evidence-max-bytes", &budget.to_string()])
        .fixture(&["open-distinct", &n.to_string(), "1e12"])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let h = f.health();
    let layer_path = f.bundle.join("layers/kernel.ndjson");
    let size = std::fs::metadata(&layer_path).expect("layer").len();
    assert!(
        size <= budget + 64 * 1024,
        "layer {size} bytes, budget {budget}"
    );
    let layer = std::fs::read_to_string(&layer_path).expect("layer");
    let seen = layer
        .lines()
        .filter(|l| l.contains(&format!("\"path\":\"{path}")))
        .count() as u64;
    let lost = h["lost_events"]["kernel_ring_buffer_by_kind"]["file.open"]
        .as_u64()
        .unwrap_or(0);
    let downgraded = h["downgraded_events_by_kind"]["file.open"]
        .as_u64()
        .unwrap_or(0);
    assert!(downgraded > 0, "the budget was reached: {h:#}");
    assert_eq!(
        seen + downgraded + lost,
        n,
        "{seen} recorded + {downgraded} downgraded + {lost} lost must be every open"
    );
    let targets = h["downgraded_targets"].as_array().expect("targets");
    assert!(targets.len() <= 1001, "bounded: {}", targets.len());
    let by_target: u64 = targets.iter().filter_map(|t| t["count"].as_u64()).sum();
    assert_eq!(by_target, downgraded, "per-target counts add up");
    assert_eq!(h["kernel_layer"], "partial");
    for kind in ["process.exec", "process.exit"] {
        assert!(
            layer.contains(&format!("\"kind\":\"{kind}\"")),
            "{kind} is control evidence and always written"
        );
    }
    assert_valid_bundle(&f.bundle);
}

#[test]
fn process_scope_leaves_out_the_syscall_probes_and_says_so() {
    let (f, _dir) = VigilRun::new("process_scope")
        .args([
            "--kernel-layer",
            "process",
            "--",
            "cat",
            "/nonexistent/vigil-scope",
        ])
        .run();
    assert_eq!(f.code(), 1, "{}", f.stderr());
    let h = f.health();
    assert_eq!(h["kernel_layer"], "partial", "a lower claim: {h:#}");
    for p in ["file.open", "network.socket"] {
        assert_eq!(h["probes"][p]["status"], "unavailable", "{p}");
        assert!(
            h["probes"][p]["reason"]
                .as_str()
                .expect("reason")
                .contains("--kernel-layer process")
        );
    }
    assert_eq!(
        h["probes"]["process.sched_process_exec"]["status"],
        "attached"
    );
    let k = kernel_events(&f.bundle);
    assert!(of_kind(&k, "file.open").is_empty());
    assert_eq!(of_kind(&k, "process.exec").len(), 1, "{k:#?}");
    assert_valid_bundle(&f.bundle);
}

/// What depends on the kernel's version is used where it exists and replaced or refused, with
/// a reason, where it does not: Landlock (5.13) holds an enforce policy, else the policy is
/// refused in one line and audit still works; `cgroup.kill` (5.14) ends a TERM-ignoring run,
/// else the kill loop does. `cargo xtask vm` runs this on 5.10, which has neither.
#[test]
fn landlock_and_cgroup_kill_are_used_where_the_kernel_has_them() {
    // SAFETY: landlock_create_ruleset with LANDLOCK_CREATE_RULESET_VERSION only asks the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        "version: 1\nname: fs\nmode: enforce\ndefault: deny\nfilesystem:\n  read:\n    - id: r\n      paths: [/]\n  write:\n    - id: w\n      paths: [/tmp, /dev/null]\n  exec:\n    - id: x\n      paths: [/]\n",
    )
    .expect("policy");
    let (f, _d) = VigilRun::new("ll-enforce")
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--", "true"])
        .run();
    if abi >= 1 {
        assert_eq!(f.code(), 0, "Landlock ABI {abi}: {}", f.stderr());
        assert_eq!(f.health()["policy_layer"], "enforced");
    } else {
        assert_eq!(
            f.code(),
            2,
            "no Landlock: enforce is refused, {}",
            f.stderr()
        );
        let err = f.stderr();
        assert!(
            err.contains("cannot enforce") && err.contains("accepted: --policy-mode audit"),
            "{err}"
        );
        let (a, _d) = VigilRun::new("ll-audit")
            .args(["--policy".as_ref(), policy.as_os_str()])
            .args(["--policy-mode", "audit", "--", "true"])
            .run();
        assert_eq!(a.code(), 0, "without Landlock audit works: {}", a.stderr());
        assert_eq!(a.health()["policy_layer"], "audited");
    }

    let pidfile = dir.path().join("pid");
    let (k, _d) = VigilRun::new("kill-mech")
        .args([
            "--liveness-level",
            "off",
            "--liveness-hard-cap-ms",
            "500",
            "--liveness-kill-grace-ms",
            "300",
        ])
        .fixture(&["ignore-term", pidfile.to_str().expect("utf8")])
        .run();
    assert_eq!(k.code(), 124, "{}", k.stderr());
    assert!(
        !pid_alive(read_pid(&pidfile)),
        "the TERM-ignoring child died"
    );
    let h = k.health();
    let run_cgroup = h["cgroup"]["path"].as_str().expect("cgroup path");
    // The run's cgroup and its owner directory are gone; `--cgroup-parent` stays, with the
    // same files a run cgroup had.
    let parent = Path::new(run_cgroup)
        .ancestors()
        .nth(2)
        .expect("the cgroup parent");
    let expected = match parent.join("cgroup.kill").exists() {
        true => "cgroup.kill",
        false => "sigkill_loop",
    };
    assert_eq!(h["cgroup"]["kill_mechanism"], expected, "{h:#}");
}

/// BPF LSM is claimed only where `bpf` is an active LSM: an LSM program attaches either way but
/// runs only then. Both branches run in CI: 7.x's default LSM list has `bpf`, 5.10's does not;
/// on a host whose securityfs is unmounted, an attach is not claimed either.
#[test]
fn doctor_claims_bpf_lsm_only_where_bpf_is_an_active_lsm() {
    let out = vigil_ok(&["doctor".as_ref(), "--json".as_ref()]);
    let r: Value = serde_json::from_slice(&out.stdout).expect("doctor json");
    let lsm = &r["features"]["bpf_lsm"];
    let detail = lsm["detail"].as_str().expect("detail");
    match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(list) if list.trim().split(',').any(|l| l == "bpf") => {
            assert!(detail.contains(list.trim()), "{lsm}");
            assert!(
                lsm["status"] == "yes" || detail.contains("BPF_PROG_LOAD"),
                "active: attached, or the kernel's refusal named: {lsm}"
            );
        }
        Ok(list) => {
            assert_eq!(lsm["status"], "no", "{lsm}");
            assert!(
                detail.contains("not an active LSM") || detail.contains("BPF_PROG_LOAD"),
                "{list}: {lsm}"
            );
        }
        Err(_) => assert_ne!(lsm["status"], "yes", "{lsm}"),
    }
}
