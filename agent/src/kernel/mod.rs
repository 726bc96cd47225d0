//! The kernel layer: CO-RE eBPF programs (../ebpf/) loaded with aya, filtered in the kernel by
//! cgroup id, and the decoder of what they report.
//!
//! One sensor (`ebpf/vigil.bpf.c`) reports process lifecycle, signals, OOM kills, file-write
//! progress, file opens, network calls and failed execs into `layers/kernel.ndjson`; the
//! process tree, liveness, the policy oracle and contract counters all consume that stream:
//! each drain is decoded, redacted and stamped once ([`event::Observed`]) and fanned out through
//! one observer trait ([`bus`]).

pub mod abi;
pub mod bus;
pub mod coalesce;
pub mod event;
pub mod hub;
mod identity;
mod json_line;
pub mod lanes;
pub mod layer;
pub mod layer_writer;
mod net_hooks;
pub mod probe;
pub mod reader;
mod record;
pub mod sensor;
pub mod sockaddr;
mod syscall_path;
pub mod tree;
mod uring;

pub use event::{KernelEvent, decode};
pub use layer::{KernelLayer, KernelReport};
pub use sensor::{KernelSensor, ProbeStatus, SensorError};
