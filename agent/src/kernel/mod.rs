//! The kernel layer: CO-RE eBPF programs (../ebpf/) loaded with aya, filtered in the kernel by
//! cgroup id, and the decoder of what they report.
//!
//! One sensor (`ebpf/vigil.bpf.c`) reports process lifecycle, signals, OOM kills, file-write
//! progress, file opens, network calls and failed execs into `layers/kernel.ndjson`; the
//! process tree, liveness, the policy oracle and contract counters all consume that stream.

pub mod event;
pub mod layer;
pub mod probe;
pub mod reader;
pub mod sensor;
pub mod tree;

pub use event::{KernelEvent, decode};
pub use layer::{KernelLayer, KernelReport};
pub use sensor::{KernelSensor, ProbeStatus, SensorError};
