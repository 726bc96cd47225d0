//! `vigil export --format perfetto`: the timeline as a Perfetto protobuf trace (`.pftrace`) of
//! TrackEvent packets, written one packet at a time (a concatenation of `Trace` messages is a
//! `Trace`). The message subset below carries the field numbers of Perfetto's
//! `perfetto_trace.proto` (checked against the official `perfetto_trace_pb2` in the tests).
//!
//! Tracks: the run (root), its spans (a plan's steps on tracks of their own), one track per process nested as the process tree (a
//! slice per exec image with argv, and exit code or signal at its end), failed execs, OOM kills
//! and stalls as instants, signals as flows from sender to target, and a counter of kernel
//! events per second.

use std::collections::BTreeMap;
use std::io::Write;

use prost::Message;

use super::timeline::Timeline;

#[derive(Clone, PartialEq, Message)]
pub struct DebugAnnotation {
    #[prost(bool, optional, tag = "2")]
    pub bool_value: Option<bool>,
    #[prost(int64, optional, tag = "4")]
    pub int_value: Option<i64>,
    #[prost(string, optional, tag = "6")]
    pub string_value: Option<String>,
    #[prost(string, optional, tag = "10")]
    pub name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackEvent {
    #[prost(message, repeated, tag = "4")]
    pub debug_annotations: Vec<DebugAnnotation>,
    /// 1 slice begin, 2 slice end, 3 instant, 4 counter.
    #[prost(int32, optional, tag = "9")]
    pub r#type: Option<i32>,
    #[prost(uint64, optional, tag = "11")]
    pub track_uuid: Option<u64>,
    #[prost(string, repeated, tag = "22")]
    pub categories: Vec<String>,
    #[prost(string, optional, tag = "23")]
    pub name: Option<String>,
    #[prost(int64, optional, tag = "30")]
    pub counter_value: Option<i64>,
    #[prost(fixed64, repeated, packed = "false", tag = "47")]
    pub flow_ids: Vec<u64>,
    #[prost(fixed64, repeated, packed = "false", tag = "48")]
    pub terminating_flow_ids: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CounterDescriptor {
    #[prost(string, optional, tag = "6")]
    pub unused: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackDescriptor {
    #[prost(uint64, optional, tag = "1")]
    pub uuid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "5")]
    pub parent_uuid: Option<u64>,
    #[prost(message, optional, tag = "8")]
    pub counter: Option<CounterDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    pub trusted_packet_sequence_id: Option<u32>,
    #[prost(message, optional, tag = "11")]
    pub track_event: Option<TrackEvent>,
    #[prost(uint32, optional, tag = "13")]
    pub sequence_flags: Option<u32>,
    #[prost(message, optional, tag = "60")]
    pub track_descriptor: Option<TrackDescriptor>,
}

const SEQ: u32 = 1;
const RUN: u64 = 1;
const SPANS: u64 = 2;
const COUNTER: u64 = 3;
/// A plan's step tracks: STEPS + step index.
const STEPS: u64 = 16;
/// Process tracks: PROC + pid.
const PROC: u64 = 1 << 32;

fn s(name: &str, v: impl Into<String>) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.into()),
        string_value: Some(v.into()),
        ..DebugAnnotation::default()
    }
}

fn i(name: &str, v: i64) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.into()),
        int_value: Some(v),
        ..DebugAnnotation::default()
    }
}

struct Out<W: Write> {
    w: W,
    first: bool,
}

impl<W: Write> Out<W> {
    fn packet(&mut self, mut p: TracePacket) -> std::io::Result<()> {
        p.trusted_packet_sequence_id = Some(SEQ);
        if std::mem::take(&mut self.first) {
            p.sequence_flags = Some(1); // SEQ_INCREMENTAL_STATE_CLEARED
        }
        // Field 1 of Trace (`packet`), length-delimited.
        let body = p.encode_to_vec();
        let mut head = Vec::with_capacity(11);
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut head);
        prost::encoding::encode_varint(body.len() as u64, &mut head);
        self.w.write_all(&head)?;
        self.w.write_all(&body)
    }

    fn track(&mut self, uuid: u64, parent: Option<u64>, name: String) -> std::io::Result<()> {
        self.packet(TracePacket {
            track_descriptor: Some(TrackDescriptor {
                uuid: Some(uuid),
                name: Some(name),
                parent_uuid: parent,
                counter: None,
            }),
            ..TracePacket::default()
        })
    }

    fn event(&mut self, ts: u64, ev: TrackEvent) -> std::io::Result<()> {
        self.packet(TracePacket {
            timestamp: Some(ts),
            track_event: Some(ev),
            ..TracePacket::default()
        })
    }
}

fn ev(kind: i32, track: u64, name: Option<String>, ann: Vec<DebugAnnotation>) -> TrackEvent {
    TrackEvent {
        r#type: Some(kind),
        track_uuid: Some(track),
        name,
        debug_annotations: ann,
        ..TrackEvent::default()
    }
}

pub fn write(t: &Timeline, w: impl Write) -> std::io::Result<()> {
    let mut out = Out { w, first: true };
    let run_id = t.trace["run_id"].as_str().unwrap_or("");
    out.track(RUN, None, format!("vigil run {run_id}"))?;
    out.track(SPANS, Some(RUN), "spans".into())?;
    out.packet(TracePacket {
        track_descriptor: Some(TrackDescriptor {
            uuid: Some(COUNTER),
            name: Some("kernel events/s".into()),
            parent_uuid: Some(RUN),
            counter: Some(CounterDescriptor::default()),
        }),
        ..TracePacket::default()
    })?;
    // A plan's steps (its `case.run` spans: `attrs.step`, or the step bundle they name,
    // `steps/NN-<name>`) get tracks of their own.
    let step_of = |sp: &serde_json::Value| -> Option<String> {
        if let Some(s) = sp["attrs"]["step"].as_str() {
            return Some(s.to_string());
        }
        let b = sp["attrs"]["bundle"].as_str()?.strip_prefix("steps/")?;
        Some(b.split_once('-').map_or(b, |(_, name)| name).to_string())
    };
    let mut step_tracks: BTreeMap<String, u64> = BTreeMap::new();
    for sp in t.trace["spans"].as_array().into_iter().flatten() {
        if let Some(step) = step_of(sp)
            && !step_tracks.contains_key(&step)
        {
            let uuid = STEPS + step_tracks.len() as u64;
            out.track(uuid, Some(RUN), format!("step {step}"))?;
            step_tracks.insert(step, uuid);
        }
    }
    // Spans as nested slices, begins and ends in time order.
    let mut marks: BTreeMap<(u64, u8, u64), TrackEvent> = BTreeMap::new();
    for (n, sp) in t.trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let track = step_of(sp)
            .and_then(|s| step_tracks.get(&s).copied())
            .unwrap_or(SPANS);
        let (b, e) = (
            sp["start_ns"].as_u64().unwrap_or(0),
            sp["end_ns"].as_u64().unwrap_or(0),
        );
        let name = sp["name"].as_str().unwrap_or("span").to_string();
        // Ends sort before begins at the same instant (key .1), children after parents (n).
        marks.insert(
            (b, 1, n as u64),
            ev(
                1,
                track,
                Some(name),
                vec![s("status", sp["status"].as_str().unwrap_or(""))],
            ),
        );
        marks.insert((e, 0, u64::MAX - n as u64), ev(2, track, None, Vec::new()));
    }
    for ((ts, ..), e) in marks {
        out.event(ts, e)?;
    }
    // Process tracks, parents first (pids of a parent are seen before its children's forks).
    let known = |pid: u32| t.procs.contains_key(&pid);
    for p in t.procs.values() {
        let parent = if known(p.ppid) {
            PROC + u64::from(p.ppid)
        } else {
            RUN
        };
        let label = p
            .images
            .first()
            .map_or(p.comm.clone(), |i| i.filename.clone());
        out.track(
            PROC + u64::from(p.pid),
            Some(parent),
            format!("{label} ({})", p.pid),
        )?;
    }
    for p in t.procs.values() {
        let track = PROC + u64::from(p.pid);
        let end = t.end_of(p);
        for (n, img) in p.images.iter().enumerate() {
            let until = p.images.get(n + 1).map_or(end, |x| x.start_ns);
            let mut ann = vec![i("pid", i64::from(p.pid)), i("ppid", i64::from(p.ppid))];
            ann.extend(
                img.argv
                    .iter()
                    .enumerate()
                    .map(|(k, a)| s(&format!("argv[{k}]"), a.as_str())),
            );
            out.event(img.start_ns, ev(1, track, Some(img.filename.clone()), ann))?;
            let mut end_ann = Vec::new();
            if n + 1 == p.images.len() {
                if let Some(c) = p.exit_code {
                    end_ann.push(i("exit_code", c));
                }
                if let Some(sig) = p.signal {
                    end_ann.push(i("signal", sig));
                }
            }
            out.event(until.max(img.start_ns), ev(2, track, None, end_ann))?;
        }
    }
    for m in &t.instants {
        let track = m
            .pid
            .filter(|p| known(*p))
            .map_or(RUN, |p| PROC + u64::from(p));
        out.event(
            m.ts_ns,
            ev(
                3,
                track,
                Some(m.name.clone()),
                vec![s("detail", m.detail.as_str())],
            ),
        )?;
    }
    let mut outside: BTreeMap<u32, ()> = BTreeMap::new();
    for (n, f) in t.flows.iter().enumerate() {
        let id = n as u64 + 1;
        let from = if known(f.from) {
            PROC + u64::from(f.from)
        } else {
            // A sender outside the run (vigil's own kill, say): a track of its own.
            let uuid = (PROC << 1) + u64::from(f.from);
            if outside.insert(f.from, ()).is_none() {
                out.track(uuid, Some(RUN), format!("pid {} (outside the run)", f.from))?;
            }
            uuid
        };
        let to = if known(f.to) {
            PROC + u64::from(f.to)
        } else {
            RUN
        };
        let name = Some(format!("signal {}", f.signal));
        let mut send = ev(
            3,
            from,
            name.clone(),
            vec![i("signal", f.signal), i("to", i64::from(f.to))],
        );
        send.flow_ids.push(id);
        out.event(f.ts_ns, send)?;
        let mut recv = ev(
            3,
            to,
            name,
            vec![i("signal", f.signal), i("from", i64::from(f.from))],
        );
        recv.terminating_flow_ids.push(id);
        out.event(f.ts_ns, recv)?;
    }
    for (sec, n) in &t.per_second {
        let mut c = ev(4, COUNTER, None, Vec::new());
        c.counter_value = Some(i64::try_from(*n).unwrap_or(i64::MAX));
        out.event(sec * 1_000_000_000, c)?;
    }
    out.w.flush()
}
