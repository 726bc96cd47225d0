//! Fixture workloads for vigil's end-to-end tests: real processes that exit, die, hang, flood,
//! ignore SIGTERM, daemonize and hold pipes open.
//!
//! Usage: vigil-fixture MODE [ARGS…]
//!   exit N                 exit with code N
//!   signal N               kill itself with signal N
//!   hang                   print "ready", then sleep silently forever
//!   flood MS               print a line every millisecond-ish for MS ms, then exit 0
//!   ignore-term PIDFILE    ignore SIGTERM, write pid, print "ready", sleep forever
//!   daemon PIDFILE         double fork + setsid; the grandchild (stdio on /dev/null) writes its
//!                          pid and sleeps forever; the parent exits 0 once the pid is written
//!   hold-pipes PIDFILE     fork a child that keeps stdout open and sleeps; the parent exits 0
//!   echo-env VAR           print VAR's value on stdout and stderr
//!   write-silently PATH MS write 4 KiB to PATH every 20 ms for MS ms; print nothing, spawn
//!                          nothing (busy, but silent to everything but the kernel)
//!   connect ADDR           TCP connect to ADDR and send "hello"; exit 0 when connected, 1
//!                          (printing the error) when not
//!   udp-send ADDR          send one 5-byte datagram to ADDR; exit 0 when sent
//!   open-storm N PATH      open (and close, if it opened) PATH N times as fast as it can
//!   open-paced N RATE PATH the same N opens at RATE per second (on average)
//!   open-distinct N RATE   N opens of distinct missing paths at RATE per second
//!   connect-storm N ADDR   N TCP connects to ADDR as fast as it can (refusals are fine)
//!   getppid-loop N         N getppid() calls: nothing but syscall entry and exit
//!   io-uring-open PATH     open PATH through io_uring (IORING_OP_OPENAT), then a NOP; print
//!                          the open's result, exit 0 when it opened
//!   int80-open PATH        open PATH with a 32-bit syscall (int 0x80); print the result
//!   mono                   print CLOCK_MONOTONIC in ns (when it started running), exit 0
//!   alloc MB               allocate and touch MB MiB, 1 MiB at a time; exit 3 if that worked
//!                          (under a memory limit the OOM killer ends it first)
//!   unix-server PATH       listen on a unix socket at PATH, print "listening", then stop
//!                          itself (SIGSTOP) before accepting anything
//!   unix-client PATH       connect to PATH, send "ping" and wait for the answer
//!   read-own-pipe          make a pipe, keep its write end, and read from it (forever)

use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    match args.first().map(String::as_str) {
        Some("exit") => std::process::exit(arg(1).parse().unwrap_or_else(|_| usage())),
        Some("signal") => {
            let sig: i32 = arg(1).parse().unwrap_or_else(|_| usage());
            // SAFETY: raising a signal at ourselves.
            unsafe { libc::raise(sig) };
            std::process::exit(100);
        }
        Some("mono") => {
            // SAFETY: clock_gettime fills the timespec it is given.
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            println!("{}", ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128);
        }
        Some("hang") => {
            println!("ready");
            sleep_forever()
        }
        Some("flood") => {
            let ms: u64 = arg(1).parse().unwrap_or_else(|_| usage());
            let end = Instant::now() + Duration::from_millis(ms);
            let mut out = std::io::stdout().lock();
            let mut n = 0u64;
            while Instant::now() < end {
                let _ = writeln!(out, "line {n}");
                let _ = out.flush();
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Some("ignore-term") => {
            // SAFETY: SIG_IGN installs no handler code.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            write_pid(&arg(1), std::process::id());
            println!("ready");
            sleep_forever()
        }
        Some("daemon") => daemon(&arg(1)),
        Some("hold-pipes") => {
            let pidfile = arg(1);
            // SAFETY: fork in a single-threaded program.
            match unsafe { libc::fork() } {
                0 => {
                    write_pid(&pidfile, std::process::id());
                    sleep_forever()
                }
                -1 => std::process::exit(99),
                _ => wait_for_file(&pidfile),
            }
        }
        Some("write-silently") => {
            use std::io::Write as _;
            let ms: u64 = arg(2).parse().unwrap_or_else(|_| usage());
            let mut f = std::fs::File::create(arg(1)).expect("create");
            let end = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < end {
                f.write_all(&[b'x'; 4096]).expect("write");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some("connect") => match std::net::TcpStream::connect(arg(1)) {
            Ok(mut s) => {
                // A send on the connected socket (no address: the kernel uses the peer).
                use std::io::Write as _;
                s.write_all(b"hello").expect("send");
            }
            Err(e) => {
                println!("connect: {e}");
                std::process::exit(1)
            }
        },
        Some("udp-send") => {
            let to: std::net::SocketAddr = arg(1).parse().unwrap_or_else(|_| usage());
            let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let sock = std::net::UdpSocket::bind(any).expect("bind");
            sock.send_to(b"vigil", to).expect("send_to");
        }
        Some("open-storm") => {
            let n: u64 = arg(1).parse().unwrap_or_else(|_| usage());
            let path = arg(2);
            for _ in 0..n {
                drop(std::fs::File::open(&path));
            }
        }
        Some("open-paced") => {
            let n: u64 = arg(1).parse().unwrap_or_else(|_| usage());
            let rate: f64 = arg(2).parse().unwrap_or_else(|_| usage());
            let path = arg(3);
            let start = Instant::now();
            for i in 0..n {
                // The i-th open is due at i/rate seconds; sleep only when ahead of that.
                let due = Duration::from_secs_f64(i as f64 / rate);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
                drop(std::fs::File::open(&path));
            }
        }
        Some("open-distinct") => {
            let n: u64 = arg(1).parse().unwrap_or_else(|_| usage());
            let rate: f64 = arg(2).parse().unwrap_or_else(|_| usage());
            let start = Instant::now();
            for i in 0..n {
                let due = Duration::from_secs_f64(i as f64 / rate);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
                drop(std::fs::File::open(format!(
                    "/nonexistent/vigil-distinct-{i}"
                )));
            }
        }
        Some("io-uring-open") => {
            // An IORING_OP_OPENAT of PATH, then an IORING_OP_NOP: no open syscall at all.
            use io_uring::{IoUring, opcode, types};
            let path = std::ffi::CString::new(arg(1)).unwrap_or_else(|_| usage());
            let mut ring = IoUring::new(4).expect("io_uring_setup");
            let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
                .flags(libc::O_RDONLY | libc::O_CLOEXEC)
                .build()
                .user_data(1);
            let nop = opcode::Nop::new().build().user_data(2);
            // SAFETY: `path` outlives the submission (we wait for both completions below).
            unsafe {
                let mut sq = ring.submission();
                sq.push(&open).expect("queue the open");
                sq.push(&nop).expect("queue the nop");
            }
            ring.submit_and_wait(2).expect("io_uring_enter");
            let mut opened = None;
            for cqe in ring.completion() {
                if cqe.user_data() == 1 {
                    opened = Some(cqe.result());
                }
            }
            let fd = opened.expect("the open's completion");
            println!("{fd}");
            std::process::exit(if fd >= 0 { 0 } else { 1 });
        }
        Some("int80-open") => {
            // open(PATH, O_RDONLY) as a 32-bit syscall (int 0x80, i386 number 5) from this
            // 64-bit process. Its arguments are 32-bit: the path must sit below 4 GiB.
            let path = arg(1);
            // SAFETY: a fresh private anonymous mapping, checked below.
            let low = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                    -1,
                    0,
                )
            };
            assert!(
                low != libc::MAP_FAILED && path.len() < 4095,
                "mmap MAP_32BIT"
            );
            // SAFETY: `low` is 4096 writable bytes; the path and its NUL fit.
            unsafe {
                std::ptr::copy_nonoverlapping(path.as_ptr(), low.cast::<u8>(), path.len());
                *low.cast::<u8>().add(path.len()) = 0;
            }
            let ret: i32;
            // SAFETY: int 0x80 with eax=5 (open), ebx=path, ecx=flags, edx=mode; rbx is
            // LLVM's, so it is saved around the call; the compat entry may clear r8–r11.
            unsafe {
                std::arch::asm!(
                    "push rbx",
                    "mov ebx, {p:e}",
                    "int 0x80",
                    "pop rbx",
                    p = in(reg) low as usize,
                    inlateout("eax") 5i32 => ret,
                    in("ecx") 0i32,
                    in("edx") 0i32,
                    lateout("r8") _,
                    lateout("r9") _,
                    lateout("r10") _,
                    lateout("r11") _,
                );
            }
            println!("{ret}");
            std::process::exit(if ret >= 0 { 0 } else { 1 });
        }
        Some("getppid-loop") => {
            let n: u64 = arg(1).parse().unwrap_or_else(|_| usage());
            for _ in 0..n {
                // SAFETY: getppid has no preconditions; the cheapest syscall there is, so the
                // loop is all syscall entry and exit.
                std::hint::black_box(unsafe { libc::getppid() });
            }
        }
        Some("connect-storm") => {
            let n: u64 = arg(1).parse().unwrap_or_else(|_| usage());
            let to: std::net::SocketAddr = arg(2).parse().unwrap_or_else(|_| usage());
            for _ in 0..n {
                drop(std::net::TcpStream::connect(to));
            }
        }
        Some("unix-server") => {
            let _listener = std::os::unix::net::UnixListener::bind(arg(1)).expect("bind");
            println!("listening");
            std::io::stdout().flush().expect("flush");
            // SAFETY: stopping this process; it holds no lock another thread needs.
            unsafe { libc::raise(libc::SIGSTOP) };
            sleep_forever()
        }
        Some("unix-client") => {
            use std::io::Read;
            let mut s = std::os::unix::net::UnixStream::connect(arg(1)).expect("connect");
            s.write_all(b"ping").expect("send");
            let mut answer = [0u8; 4];
            let _ = s.read(&mut answer);
        }
        Some("read-own-pipe") => {
            use std::io::Read;
            let (r, w) = nix::unistd::pipe().expect("pipe");
            let mut r = std::fs::File::from(r);
            let _ = r.read(&mut [0u8; 1]);
            drop(w);
        }
        Some("alloc") => {
            let mb: usize = arg(1).parse().unwrap_or_else(|_| usage());
            let mut held = Vec::with_capacity(mb);
            for _ in 0..mb {
                // Touch every page so the memory is really charged.
                held.push(vec![1u8; 1 << 20]);
            }
            std::process::exit(3);
        }
        Some("echo-env") => {
            let v = std::env::var(arg(1)).unwrap_or_default();
            println!("value={v}");
            eprintln!("value={v}");
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: vigil-fixture exit N|signal N|hang|flood MS|ignore-term PIDFILE|daemon PIDFILE|hold-pipes PIDFILE|echo-env VAR|write-silently PATH MS|connect ADDR|udp-send ADDR|open-storm N PATH|open-paced N RATE PATH|connect-storm N ADDR|getppid-loop N|io-uring-open PATH|int80-open PATH|alloc MB|unix-server PATH|unix-client PATH|read-own-pipe"
    );
    std::process::exit(2)
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn write_pid(path: &str, pid: u32) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, pid.to_string()).expect("write pid");
    std::fs::rename(&tmp, path).expect("rename pid");
}

/// The parent waits until the pid file exists so tests can rely on it after the run.
fn wait_for_file(path: &str) {
    while !std::path::Path::new(path).exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn daemon(pidfile: &str) {
    // SAFETY: classic double fork in a single-threaded program.
    unsafe {
        match libc::fork() {
            -1 => std::process::exit(99),
            0 => {
                libc::setsid();
                match libc::fork() {
                    -1 => libc::_exit(99),
                    0 => {
                        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                        for fd in 0..3 {
                            libc::dup2(null, fd);
                        }
                        write_pid(pidfile, std::process::id());
                        sleep_forever()
                    }
                    _ => libc::_exit(0),
                }
            }
            _ => wait_for_file(pidfile),
        }
    }
}
