//! The daemon protocol (`specs/schema/daemon_protocol.v1.json`): frames over a local stream
//! socket, each a 4-byte big-endian length and that many bytes of one JSON object with a `type`.
//! A `run` request carries five fds (SCM_RIGHTS, with its first bytes): the client's stdin,
//! stdout, stderr, working directory and `--out` directory, in that order.
//!
//! Pure framing and message types here; the daemon's socket side is `server`, the client's
//! `client`.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cli::RunArgs;
use crate::run::spec::RunInputs;

/// The protocol version a client speaks (`run.version`).
pub const VERSION: u32 = 1;

/// The largest frame either side accepts: a command line and environment fit many times over.
pub const MAX_FRAME: usize = 1 << 20;

/// The largest frame a daemon sends (a `finished` message carries the profile copies).
pub const MAX_REPLY_FRAME: usize = 64 << 20;

/// Fds of a `run` request.
pub const RUN_FDS: usize = 5;

/// What a client sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Run a command (with RUN_FDS fds).
    Run(Box<RunRequest>),
    /// Forward a signal the client received (SIGINT, SIGTERM) to its run.
    Signal { signal: i32 },
    /// Whether the daemon answers, and what it is doing.
    Status,
    /// Watch an existing cgroup (with WATCH_FDS fds), for as long as the client stays.
    Watch(Box<WatchRequest>),
    /// A CI runner's job starts (with JOB_FDS fds): put its worker in a job cgroup and watch it.
    JobStart(Box<JobStart>),
    /// The job is over: end its watch, commit its bundle, answer `finished`.
    JobEnd { key: String },
}

/// Fds of a `watch` request: the client's stderr and its `--out` directory.
pub const WATCH_FDS: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRequest {
    pub version: u32,
    /// `vigil watch`'s flags, resolved by the client.
    pub args: crate::cli::WatchArgs,
    pub inputs: RunInputs,
    pub out: PathBuf,
}

/// Fds of a `job_start` request: the `--out` directory.
pub const JOB_FDS: usize = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStart {
    pub version: u32,
    /// The job's key (`gh-<run_id>-<attempt>-<job>`): the watch's run id and job cgroup name.
    pub key: String,
    /// The runner's worker process (an ancestor of the client): moved into the job cgroup so
    /// every step inherits it; its direct children are the steps.
    pub worker_pid: i32,
    /// The watch's run flags, resolved by the client.
    pub args: RunArgs,
    pub inputs: RunInputs,
    pub out: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub version: u32,
    /// `vigil run`'s flags and command, resolved by the client (its environment equivalents
    /// included).
    pub args: RunArgs,
    /// What the flags point at, read by the client as itself.
    pub inputs: RunInputs,
    /// The client's environment: the child starts from it.
    pub env: Vec<(String, String)>,
    /// The client's working directory and `--out`, as the client names them (for display:
    /// the daemon uses the fds).
    pub cwd: PathBuf,
    pub out: PathBuf,
}

/// What a daemon sends.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Every run slot is busy: the request waits at `position` (1 = next).
    Deferred { position: usize },
    /// The run starts; its bundle will be `bundle`.
    Accepted { run_id: String, bundle: PathBuf },
    /// The main child runs.
    Started { pid: i32 },
    /// The run is over.
    Finished(Box<Finished>),
    /// Not run, with a reason token (nothing started, no bundle).
    Rejected { reason: String, message: String },
    /// Bad input on the socket: the connection is closed after this.
    Error { reason: String, message: String },
    /// The answer to `status`.
    Status(DaemonStatus),
    /// A job's watch is active: its bundle, cgroup and SDK socket (for the steps' environment).
    Watching {
        run_id: String,
        bundle: PathBuf,
        cgroup: PathBuf,
        sdk_socket: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Finished {
    /// What `vigil run` exits with (CONTRACT.md §4).
    pub exit_code: i32,
    pub status: String,
    pub bundle: PathBuf,
    /// Set when the bundle could not be committed.
    pub error: Option<String>,
    /// Profile copies (`--profile-out`, `--profile-summary-out`) for the client to write.
    pub copies: Vec<Copy>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Copy {
    pub path: PathBuf,
    pub content: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub runs_active: usize,
    pub runs_queued: usize,
    pub max_runs: usize,
    pub queue: usize,
    pub kernel_sensor: String,
}

/// Reason tokens of `rejected` and `error` (README "Daemon protocol").
pub mod reason {
    pub const QUEUE_FULL: &str = "queue_full";
    pub const UID_LIMIT: &str = "uid_limit";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    pub const NOT_PERMITTED: &str = "not_permitted";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const MALFORMED_FRAME: &str = "malformed_frame";
    pub const OVERSIZED_FRAME: &str = "oversized_frame";
    pub const UNKNOWN_MESSAGE: &str = "unknown_message";
    pub const BAD_FDS: &str = "bad_fds";
    pub const TIMEOUT: &str = "timeout";
    /// A deferred request whose client sent a signal (its Ctrl-C) before it started.
    pub const CANCELLED: &str = "cancelled";
    /// Every token, for metrics labels.
    pub const ALL: [&str; 12] = [
        QUEUE_FULL,
        UID_LIMIT,
        SHUTTING_DOWN,
        NOT_PERMITTED,
        BAD_REQUEST,
        UNSUPPORTED_VERSION,
        MALFORMED_FRAME,
        OVERSIZED_FRAME,
        UNKNOWN_MESSAGE,
        BAD_FDS,
        TIMEOUT,
        CANCELLED,
    ];
}

/// Why a frame could not be read: each maps to a reason token.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {max}-byte limit", max = MAX_FRAME)]
    Oversized(usize),
    #[error("frame is not a JSON message: {0}")]
    Malformed(String),
    #[error("unknown message: {0}; accepted types: run, signal, status, watch, job_start, job_end")]
    Unknown(String),
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
}

impl FrameError {
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Oversized(_) => reason::OVERSIZED_FRAME,
            FrameError::Malformed(_) | FrameError::Truncated => reason::MALFORMED_FRAME,
            FrameError::Unknown(_) => reason::UNKNOWN_MESSAGE,
        }
    }
}

/// One encoded frame.
pub fn encode(msg: &impl Serialize) -> Vec<u8> {
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Incremental frame decoding over a byte buffer: `Ok(None)` until a whole frame is there.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Fds received so far (a `run` takes the first RUN_FDS).
    pub fds: Vec<OwnedFd>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes of a frame started but not complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame's body, checked against `max`.
    pub fn next_body(&mut self, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > max {
            return Err(FrameError::Oversized(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }

    /// The next whole request.
    pub fn next_request(&mut self) -> Result<Option<Request>, FrameError> {
        match self.next_body(MAX_FRAME)? {
            None => Ok(None),
            Some(body) => parse_request(&body).map(Some),
        }
    }
}

/// A request's body: not JSON → malformed; JSON with an unknown `type` → unknown message.
pub fn parse_request(body: &[u8]) -> Result<Request, FrameError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_string);
    match kind.as_deref() {
        Some("run" | "signal" | "status" | "watch" | "job_start" | "job_end") => {
            serde_json::from_value(value).map_err(|e| FrameError::Malformed(e.to_string()))
        }
        Some(other) => Err(FrameError::Unknown(format!("{other:?}"))),
        None => Err(FrameError::Unknown("no \"type\"".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let bytes = encode(&Request::Signal { signal: 2 });
        for cut in 0..bytes.len() {
            let mut d = Decoder::default();
            d.push(&bytes[..cut]);
            assert!(d.next_request().expect("partial is fine").is_none());
            d.push(&bytes[cut..]);
            assert!(matches!(
                d.next_request(),
                Ok(Some(Request::Signal { signal: 2 }))
            ));
            assert_eq!(d.pending(), 0);
        }
    }

    /// Every message the code sends has the keys its definition in
    /// specs/schema/daemon_protocol.v1.json requires, and no other.
    #[test]
    fn messages_match_the_protocol_schema() {
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../../specs/schema/daemon_protocol.v1.json"
        ))
        .expect("schema");
        let replies = [
            Reply::Deferred { position: 1 },
            Reply::Accepted {
                run_id: "r".into(),
                bundle: "/o/r".into(),
            },
            Reply::Started { pid: 7 },
            Reply::Finished(Box::new(Finished {
                exit_code: 0,
                status: "passed".into(),
                bundle: "/o/r".into(),
                error: None,
                copies: vec![Copy {
                    path: "/p".into(),
                    content: "{}".into(),
                }],
            })),
            Reply::Rejected {
                reason: reason::QUEUE_FULL.into(),
                message: "m".into(),
            },
            Reply::Error {
                reason: reason::MALFORMED_FRAME.into(),
                message: "m".into(),
            },
            Reply::Status(DaemonStatus::default()),
            Reply::Watching {
                run_id: "gh-1-1-build".into(),
                bundle: "/o/gh-1-1-build".into(),
                cgroup: "/sys/fs/cgroup/vigil/jobs/gh-1-1-build".into(),
                sdk_socket: Some("/tmp/vigil-sdk-1/sdk.sock".into()),
            },
        ];
        let mut values: Vec<serde_json::Value> = replies
            .iter()
            .map(|r| serde_json::to_value(r).expect("json"))
            .collect();
        values.push(serde_json::to_value(Request::Signal { signal: 2 }).expect("json"));
        values.push(serde_json::to_value(Request::Status).expect("json"));
        values.push(
            serde_json::to_value(Request::JobEnd {
                key: "gh-1-1-build".into(),
            })
            .expect("json"),
        );
        let job = Request::JobStart(Box::new(JobStart {
            version: VERSION,
            key: "gh-1-1-build".into(),
            worker_pid: 10,
            args: <crate::cli::WatchArgs as clap::FromArgMatches>::from_arg_matches(
                &<crate::cli::WatchArgs as clap::Args>::augment_args(clap::Command::new("w"))
                    .get_matches_from(["w", "--cgroup", "x"]),
            )
            .expect("args")
            .run,
            inputs: RunInputs {
                policy: None,
                contracts: vec![],
                vars: crate::policy::oracle::Vars::of_this_process(),
            },
            out: "/o".into(),
        }));
        values.push(serde_json::to_value(job).expect("json"));
        let watch_args = <crate::cli::WatchArgs as clap::FromArgMatches>::from_arg_matches(
            &<crate::cli::WatchArgs as clap::Args>::augment_args(clap::Command::new("w"))
                .get_matches_from(["w", "--cgroup", "x", "--duration", "5s"]),
        )
        .expect("args");
        let watch = Request::Watch(Box::new(WatchRequest {
            version: VERSION,
            args: watch_args,
            inputs: RunInputs {
                policy: None,
                contracts: vec![],
                vars: crate::policy::oracle::Vars::of_this_process(),
            },
            out: "/o".into(),
        }));
        values.push(serde_json::to_value(watch).expect("json"));
        for v in values {
            let ty = v["type"].as_str().expect("type");
            let def = &schema["$defs"][if ty == "status" && v.get("pid").is_none() {
                "status_request"
            } else {
                ty
            }];
            let props = def["properties"].as_object().expect("properties");
            let obj = v.as_object().expect("object");
            for k in obj.keys() {
                assert!(props.contains_key(k), "{ty}: {k} not in the schema");
            }
            for k in def["required"].as_array().expect("required") {
                assert!(
                    obj.contains_key(k.as_str().expect("str")),
                    "{ty}: {k} missing"
                );
            }
        }
        // Every reason token is one the schema lists for rejected or error.
        let listed = |d: &str| schema["$defs"][d]["properties"]["reason"]["enum"].to_string();
        for token in reason::ALL {
            assert!(
                listed("rejected").contains(token) || listed("error").contains(token),
                "{token} not in the schema"
            );
        }
    }

    #[test]
    fn bad_frames_name_what_is_wrong() {
        let mut d = Decoder::default();
        d.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        let e = d.next_request().expect_err("oversized");
        assert_eq!(e.reason(), reason::OVERSIZED_FRAME);
        assert!(e.to_string().contains("1048577 bytes"), "{e}");

        let frame = |body: &[u8]| {
            let mut v = (body.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(body);
            v
        };
        for (body, token) in [
            (&b"{not json"[..], reason::MALFORMED_FRAME),
            (br#"{"type":"reboot"}"#, reason::UNKNOWN_MESSAGE),
            (br#"{"no_type":1}"#, reason::UNKNOWN_MESSAGE),
            (br#"{"type":"signal"}"#, reason::MALFORMED_FRAME),
            (
                br#"{"type":"signal","signal":2,"extra":1}"#,
                reason::MALFORMED_FRAME,
            ),
        ] {
            let mut d = Decoder::default();
            d.push(&frame(body));
            let e = d.next_request().expect_err("refused");
            assert_eq!(e.reason(), token, "{}", String::from_utf8_lossy(body));
        }
    }
}
