//! `vigil` binary: parse the command line, dispatch, map results to exit codes. anyhow lives
//! only here; the library reports typed errors.

use std::process::ExitCode as ProcessExit;

use clap::Parser;
use vigil::cli::{Cli, Command, ExitCode, PlanCommand, PolicyCommand, one_line_usage_error};
use vigil::evidence::{inspect, reader};
use vigil::export::cli as export;
use vigil::run::spec::RunSpec;
use vigil::run::{guard, plan, plan_file, supervisor};

fn main() -> ProcessExit {
    let code = match Cli::try_parse() {
        Ok(cli) => dispatch(cli),
        Err(err) => match one_line_usage_error(&err) {
            Some(line) => {
                eprintln!("{line}");
                ExitCode::USAGE
            }
            None => {
                let _ = err.print();
                0
            }
        },
    };
    ProcessExit::from(u8::try_from(code).unwrap_or(u8::MAX))
}

fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Validate { bundle } => match reader::validate(&bundle) {
            Ok(index) => {
                println!(
                    "{}: committed ({}), {} files verified",
                    bundle.display(),
                    index.state,
                    index.files.len()
                );
                0
            }
            Err(problems) => report_problems(&bundle, &problems),
        },
        Command::Reindex(args) if args.mode.strict => match reader::reindex_strict(&args.bundle) {
            Ok(index) => {
                println!(
                    "{}: index matches ({} files)",
                    args.bundle.display(),
                    index.files.len()
                );
                0
            }
            Err(problems) => report_problems(&args.bundle, &problems),
        },
        Command::Reindex(args) => match reader::repair(&args.bundle) {
            Ok(r) if r.already_committed => {
                println!(
                    "{}: already committed and intact; nothing to repair",
                    args.bundle.display()
                );
                0
            }
            Ok(r) => {
                println!("{}: repaired: {}", args.bundle.display(), r.reason);
                0
            }
            Err(e) => {
                eprintln!("vigil: reindex --repair {}: {e}", args.bundle.display());
                ExitCode::INVALID_BUNDLE
            }
        },
        Command::Inspect { bundle } => match inspect::inspect(&bundle) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("vigil: inspect {}: {e}", bundle.display());
                ExitCode::INVALID_BUNDLE
            }
        },
        Command::Doctor { json } => {
            let report = vigil::kernel::probe::probe_host();
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("vigil: doctor: {e}"),
                }
            } else {
                print!("{}", vigil::kernel::probe::render(&report));
            }
            // Exit 1 when vigil cannot supervise runs here at all (no cgroup v2).
            if report.can_run() {
                0
            } else {
                ExitCode::HOST_UNSUPPORTED
            }
        }
        Command::Policy {
            command: PolicyCommand::Lint { files },
        } => {
            let report = vigil::policy::lint::lint_files(&files);
            eprint!("{}", report.text);
            if report.errors > 0 {
                ExitCode::USAGE
            } else {
                0
            }
        }
        Command::Policy {
            command: PolicyCommand::Suggest { bundles, out },
        } => match vigil::policy::suggest::suggest(&bundles) {
            Ok(yaml) => match out {
                None => {
                    print!("{yaml}");
                    0
                }
                Some(path) => match std::fs::write(&path, yaml) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("vigil: policy suggest: {}: {e}", path.display());
                        ExitCode::VIGIL_FAILED
                    }
                },
            },
            Err(e) => {
                eprintln!("vigil: policy suggest: {e}");
                ExitCode::INVALID_BUNDLE
            }
        },
        Command::Compare { baseline, scenario } => {
            match vigil::policy::compare::compare(&baseline, &scenario) {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(e) => {
                    eprintln!("vigil: compare: {e}");
                    ExitCode::INVALID_BUNDLE
                }
            }
        }
        Command::Daemon(args) => daemon(args),
        Command::Watch(args) => watch(*args),
        Command::Ci {
            command: vigil::cli::CiCommand::Github { hook },
        } => vigil::ci::github::hook(hook),
        Command::EmitPromotion {
            bundle,
            out,
            require_promotable,
            sign_key,
        } => export::emit_promotion(&bundle, &out, require_promotable, sign_key.as_deref()),
        Command::VerifyPromotion {
            packet,
            key,
            bundle,
        } => export::verify_promotion(&packet, key.as_deref(), bundle.as_deref()),
        Command::Keygen { out } => export::keygen(&out),
        Command::Export {
            bundle,
            format,
            out,
            otlp_endpoint,
        } => export::export(&bundle, format, out.as_deref(), otlp_endpoint.as_deref()),
        Command::SummarizeOps { input, out } => export::summarize_ops(&input, out.as_deref()),
        Command::Plan {
            command: PlanCommand::Lint { file },
        } => match plan_file::load(&file) {
            Ok(plan) => {
                println!("{}: ok ({} steps)", file.display(), plan.steps.len());
                0
            }
            Err(e) => {
                eprintln!("vigil: {}", e.to_string().trim_start_matches("--plan "));
                ExitCode::USAGE
            }
        },
        Command::Status { daemon, out } => {
            print!("{}", vigil::status::render(&daemon, &out));
            0
        }
        Command::CgroupGuard { cgroup } => match guard::run_guard(&cgroup) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vigil guard: {e}");
                ExitCode::VIGIL_FAILED
            }
        },
    }
}

fn report_problems(bundle: &std::path::Path, problems: &[reader::BundleProblem]) -> i32 {
    for p in problems {
        eprintln!("vigil: {}: {p}", bundle.display());
    }
    ExitCode::INVALID_BUNDLE
}

fn daemon(args: vigil::cli::DaemonArgs) -> i32 {
    // Each run brings its own threads (supervisor, tee, writers); with glibc's default of up to
    // 8 arenas per core each keeps its own free memory. Two arenas hold the daemon's RSS down
    // (26 vs 31 MiB at peak under 8 concurrent runs here) at no measurable cost.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // journald-friendly: plain lines on stderr, no colour, no timestamps of our own.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max_runs = args.max_runs.unwrap_or(cpus);
    let config = vigil::daemon::Config {
        socket: args.socket,
        socket_group: args.socket_group,
        max_runs,
        queue: args.queue,
        per_uid: args.max_runs_per_uid.unwrap_or(usize::MAX),
        metrics: args.metrics,
        cgroup_parent: args.cgroup_parent,
    };
    match vigil::daemon::server::run(config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vigil daemon: {e}");
            ExitCode::HOST_UNSUPPORTED
        }
    }
}

/// `vigil watch`: through a daemon (as `run` chooses one), else standalone.
fn watch(args: vigil::cli::WatchArgs) -> i32 {
    if let Some(socket) = vigil::daemon::client::route(&args.run) {
        return vigil::daemon::client::watch(&socket, args);
    }
    let spec = match vigil::run::watch::spec(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vigil: {e}");
            return e.exit_code();
        }
    };
    let Some(rt) = vigil::cli::runtime() else {
        return ExitCode::VIGIL_FAILED;
    };
    match rt.block_on(supervisor::run(spec)) {
        Ok(result) => result.exit_code(),
        Err(e) => {
            eprintln!("vigil: {e}");
            e.exit_code()
        }
    }
}

fn run(args: vigil::cli::RunArgs) -> i32 {
    if let Some(socket) = vigil::daemon::client::route(&args) {
        return vigil::daemon::client::run(&socket, args);
    }
    // A plan is read and checked before anything starts, like every flag.
    let plan = match &args.plan {
        None => None,
        Some(file) => match plan_file::load(file) {
            Ok(p) => Some((file.clone(), p)),
            Err(e) => {
                eprintln!("vigil: {e}");
                return ExitCode::USAGE;
            }
        },
    };
    let triage = args.triage;
    let spec = match RunSpec::from_args(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vigil: {e}");
            return ExitCode::USAGE;
        }
    };
    let Some(rt) = vigil::cli::runtime() else {
        return ExitCode::VIGIL_FAILED;
    };
    if let Some((file, plan)) = plan {
        let spec = plan::PlanSpec {
            file,
            plan,
            base: spec,
            triage,
        };
        return match rt.block_on(plan::run(spec)) {
            Ok(result) => result.exit_code,
            Err(e) => {
                eprintln!("vigil: {e}");
                e.exit_code()
            }
        };
    }
    match rt.block_on(supervisor::run(spec)) {
        Ok(result) => result.exit_code(),
        Err(e) => {
            eprintln!("vigil: {e}");
            e.exit_code()
        }
    }
}
