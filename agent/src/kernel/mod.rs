//! The kernel layer: CO-RE eBPF programs (../ebpf/) loaded with aya, filtered in the kernel by
//! cgroup id, and the decoder of what they report.
//!
//! Status: the process-lifecycle sensor (fork, exec, exit, nested cgroups) is built and tested
//! against the real kernel; it is not yet wired into `vigil run` (health still says
//! `kernel_layer: absent`).

pub mod event;
pub mod sensor;

pub use event::{KernelEvent, decode};
pub use sensor::{ProbeStatus, ProcessSensor, SensorError};
