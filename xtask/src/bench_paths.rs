//! `cargo xtask bench --paths-only`: what a process outside any run pays while vigil watches
//! one, on each syscall path side by side — fexit on the syscall functions (the fast path, where
//! the kernel allows tracing programs) and the sys_exit tracepoint (`VIGIL_SYSCALL_PATH=
//! tracepoint`). Meant for the kernel matrix's guests (`cargo xtask vm -- target/debug/xtask
//! bench --paths-only --prebuilt`): this host refuses fexit, so here both rows take the
//! tracepoint. Under TCG absolute times are inflated; the ratios, measured in the same guest
//! in alternation, still tell (2,000 open/close take ~5 s there).

use anyhow::Result;

use crate::bench::{Env, Row, median, ratio_row, sh, time_ms};
use crate::bench_kernel::Watcher;

pub fn bench(env: &Env, quick: bool) -> Result<Vec<Row>> {
    let fixture = env.fixture.display();
    let reps = if quick { 3 } else { 5 };
    let opens = format!("{fixture} open-storm 2000 /etc/hostname");
    let getppid = format!("{fixture} getppid-loop 200000");
    let mut rows = Vec::new();
    // The `process` rows are the control: the same watched run with no syscall program at all,
    // so what a path adds is its ratio over the control's (under TCG vigil's own work beside the
    // loop shows in every row).
    for (name, script, layer, path) in [
        (
            "neighbour: 2,000 open/close outside, watched run with `--kernel-layer process` (control)",
            opens.as_str(),
            "process",
            None,
        ),
        (
            "neighbour: 2,000 open/close outside, watched run on the fexit path",
            opens.as_str(),
            "auto",
            None,
        ),
        (
            "neighbour: 2,000 open/close outside, watched run on the tracepoint path",
            opens.as_str(),
            "auto",
            Some("tracepoint"),
        ),
        (
            "neighbour: 200,000 getppid() outside, watched run with `--kernel-layer process` (control)",
            getppid.as_str(),
            "process",
            None,
        ),
        (
            "neighbour: 200,000 getppid() outside, watched run on the fexit path",
            getppid.as_str(),
            "auto",
            None,
        ),
        (
            "neighbour: 200,000 getppid() outside, watched run on the tracepoint path",
            getppid.as_str(),
            "auto",
            Some("tracepoint"),
        ),
    ] {
        let (mut b, mut v) = (Vec::new(), Vec::new());
        time_ms(&mut sh(script))?;
        for _ in 0..reps {
            b.push(time_ms(&mut sh(script))?);
            let watcher = Watcher::start_on(env, layer, path)?;
            v.push(time_ms(&mut sh(script))?);
            drop(watcher);
        }
        rows.push(ratio_row(name, median(b), median(v), "(stated)", |_| true));
    }
    Ok(rows)
}
