//! `--agent-shim`: Python code vigil puts on the child's `PYTHONPATH` so that an agent SDK's
//! tool calls are reported on the SDK socket without changing the agent's code.
//!
//! The directory (beside the run's socket) holds `sitecustomize.py`, which Python imports at
//! start-up, and `vigil_sdk.py`, the same client as `examples/python/`. The hook is installed
//! lazily: it wraps the SDK package's loader, so a run that never imports the SDK pays nothing.
//! `openai-agents`: a tracing processor turns function-tool spans into tool calls;
//! `gemini-google-genai`: the function google-genai's automatic function calling invokes tools
//! through is wrapped.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const SITECUSTOMIZE: &str = include_str!("shim/sitecustomize.py");
const CLIENT: &str = include_str!("../../../examples/python/vigil_sdk.py");

/// Write the shim under `dir` (readable by a child running as another user); the directory to
/// put first on `PYTHONPATH`.
pub fn write(dir: &Path) -> std::io::Result<PathBuf> {
    let py = dir.join("python");
    std::fs::create_dir(&py)?;
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755))?;
    for (name, text) in [
        ("sitecustomize.py", SITECUSTOMIZE),
        ("vigil_sdk.py", CLIENT),
    ] {
        let path = py.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(py)
}

/// `PYTHONPATH` with `first` in front of what the child would otherwise get.
pub fn python_path(first: &Path, existing: Option<&OsString>) -> OsString {
    let mut p = first.as_os_str().to_os_string();
    if let Some(rest) = existing.filter(|r| !r.is_empty()) {
        p.push(":");
        p.push(rest);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_directory_holds_both_files_and_leads_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let py = write(dir.path()).expect("write");
        assert!(py.join("sitecustomize.py").is_file());
        assert!(
            std::fs::read_to_string(py.join("vigil_sdk.py"))
                .expect("client")
                .contains("class Vigil")
        );
        assert_eq!(
            python_path(&py, Some(&OsString::from("/opt/lib"))),
            OsString::from(format!("{}:/opt/lib", py.display()))
        );
        assert_eq!(python_path(&py, None), py.as_os_str());
    }
}
