//! execvp's search, prepared before the clone: the child shares vigil's memory until it
//! execs (`run/clone.rs`), so it cannot install its environment in `environ` for execvp to
//! read. The parent lists the candidates from the child's own PATH; the child tries them with
//! execve in order, with execvp's rules (POSIX; glibc's `__execvpe`): a name with a slash is
//! itself; an unset PATH is `/bin:/usr/bin`; an empty PATH entry is the working directory;
//! EACCES is remembered and the search goes on, ENOENT-like errors go on, any other error
//! ends it; a file the kernel cannot execute (ENOEXEC) is run by `/bin/sh`.

use std::ffi::{CString, OsStr, OsString, c_char};
use std::os::unix::ffi::OsStrExt;

/// glibc's `_CS_PATH`, used when the child's environment has no PATH.
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";
const SHELL: &std::ffi::CStr = c"/bin/sh";

/// The candidates and the argument vector for the shell fallback, built before the clone.
pub struct ExecSearch {
    candidates: Vec<CString>,
    /// `/bin/sh`, (candidate), the command's own arguments, null: slot 1 is filled by the
    /// child with the candidate that needed the shell.
    sh_argv: Vec<*const c_char>,
}

/// Errors after which execvp tries the next PATH entry.
fn keeps_searching(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT
    )
}

impl ExecSearch {
    /// Where `program` is looked for, for a child whose environment is `env`.
    /// `argv` is the command's argument vector (argv[0] first); it must outlive the search.
    pub fn new(
        program: &OsStr,
        env: &[(OsString, OsString)],
        argv: &[CString],
    ) -> Result<Self, std::ffi::NulError> {
        let name = program.as_bytes();
        let candidates = if name.contains(&b'/') || name.is_empty() {
            vec![CString::new(name)?]
        } else {
            let path = env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map_or(DEFAULT_PATH, |(_, v)| v.as_bytes());
            path.split(|&b| b == b':')
                .map(|dir| {
                    let mut full = Vec::with_capacity(dir.len() + name.len() + 1);
                    if !dir.is_empty() {
                        full.extend_from_slice(dir);
                        full.push(b'/');
                    }
                    full.extend_from_slice(name);
                    CString::new(full)
                })
                .collect::<Result<_, _>>()?
        };
        let sh_argv = [SHELL.as_ptr(), std::ptr::null()]
            .into_iter()
            .chain(argv.iter().skip(1).map(|a| a.as_ptr()))
            .chain([std::ptr::null()])
            .collect();
        Ok(ExecSearch {
            candidates,
            sh_argv,
        })
    }

    /// In the child: exec the first candidate that can be, as execvp would. Returns only on
    /// failure, with the errno execvp would have left.
    ///
    /// # Safety
    /// `argv` and `envp` are null-terminated vectors of valid C strings; called in the child
    /// of `clone_vfork`, where this memory is the parent's and nothing else runs on it.
    pub unsafe fn exec(&mut self, argv: *const *const c_char, envp: *const *const c_char) -> i32 {
        let mut eacces = false;
        let mut errno = libc::ENOENT;
        for cand in &self.candidates {
            // SAFETY: valid C strings and vectors, prepared before the clone.
            unsafe {
                libc::execve(cand.as_ptr(), argv, envp);
                errno = *libc::__errno_location();
                if errno == libc::ENOEXEC {
                    self.sh_argv[1] = cand.as_ptr();
                    libc::execve(SHELL.as_ptr(), self.sh_argv.as_ptr(), envp);
                    errno = *libc::__errno_location();
                }
            }
            match errno {
                libc::EACCES => eacces = true,
                e if keeps_searching(e) => {}
                _ => return errno,
            }
        }
        if eacces { libc::EACCES } else { errno }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(program: &str, path: Option<&str>) -> Vec<String> {
        let env: Vec<(OsString, OsString)> = path
            .map(|p| vec![("PATH".into(), p.into())])
            .unwrap_or_default();
        ExecSearch::new(OsStr::new(program), &env, &[])
            .expect("no NUL")
            .candidates
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_name_is_looked_for_in_each_path_entry_in_order() {
        assert_eq!(
            cands("make", Some("/opt/bin:/usr/bin")),
            ["/opt/bin/make", "/usr/bin/make"]
        );
        // An empty entry is the working directory.
        assert_eq!(cands("t", Some(":/bin")), ["t", "/bin/t"]);
        assert_eq!(cands("t", Some("/bin:")), ["/bin/t", "t"]);
    }

    #[test]
    fn a_path_is_itself_and_no_path_is_the_default() {
        assert_eq!(cands("./run.sh", Some("/opt")), ["./run.sh"]);
        assert_eq!(cands("/bin/true", None), ["/bin/true"]);
        assert_eq!(cands("true", None), ["/bin/true", "/usr/bin/true"]);
    }

    #[test]
    fn the_last_path_in_the_environment_wins() {
        let env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/first".into()),
            ("PATH".into(), "/second".into()),
        ];
        let s = ExecSearch::new(OsStr::new("x"), &env, &[]).expect("ok");
        assert_eq!(s.candidates[0].to_bytes(), b"/second/x");
    }

    #[test]
    fn the_shell_fallback_keeps_the_commands_arguments() {
        let argv = [c"script".to_owned(), c"a".to_owned(), c"b".to_owned()];
        let s = ExecSearch::new(OsStr::new("./script"), &[], &argv).expect("ok");
        assert_eq!(s.sh_argv.len(), 5);
        assert!(s.sh_argv[1].is_null());
        assert!(s.sh_argv[4].is_null());
        // SAFETY: the pointers point into `argv`, alive here.
        let third = unsafe { std::ffi::CStr::from_ptr(s.sh_argv[2]) };
        assert_eq!(third.to_bytes(), b"a");
    }

    #[test]
    fn only_missing_file_errors_keep_the_search_going() {
        assert!(keeps_searching(libc::ENOENT));
        assert!(keeps_searching(libc::ENOTDIR));
        assert!(!keeps_searching(libc::E2BIG));
        assert!(!keeps_searching(libc::ETXTBSY));
    }
}
