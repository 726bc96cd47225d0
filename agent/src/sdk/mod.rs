//! The SDK layer: what the child reports about itself over a per-run unix socket
//! (`VIGIL_SDK_SOCKET`) — tool calls, checkpoints, its own verdict. Self-reported evidence: it
//! is validated, bounded, masked and timestamped by vigil, counted as progress, and correlated
//! with the kernel's view of the same time and processes; health marks it `self_reported`.

pub mod event;
pub mod layer;
pub mod shim;
pub mod socket;

pub use layer::{SdkLayer, SdkSummary};
pub use socket::{Received, SdkSocket, SdkStats};
