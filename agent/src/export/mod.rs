//! Evidence out: readers of committed (untrusted) bundles that turn them into what downstream
//! consumers take — signed promotion packets (`promotion`, `dsse`) and per-operation summaries
//! (`ops`), and timelines for other tools (`timeline`, `formats`: chrome-trace, otlp-json, junit; `perfetto`).

pub mod cli;
pub mod dsse;
pub mod formats;
pub mod github_summary;
pub mod html;
pub mod ops;
pub mod otlp_http;
pub mod perfetto;
pub mod promotion;
pub mod timeline;

use std::path::Path;

use crate::evidence::beneath::BundleDir;

/// Write `bytes` to `path` without following a link there: a fresh temporary beside it
/// (O_EXCL|O_NOFOLLOW), renamed over it.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    BundleDir::open(parent)
        .and_then(|d| d.write_atomic(name, bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}
