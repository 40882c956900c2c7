//! What the runtime needs from a source and gives to sinks.
//!
//! A source is created once per timely worker (`factory(worker, peers)`) and
//! reads only its share of the input: the runtime never assumes one process.
//! Each message carries its [`Position`] (for tie-breaks and, later,
//! checkpoints) and the watermark partition it belongs to.

use crate::event::{Event, EventKind, Position, Region};
use std::sync::Arc;

/// One raw message from a source.
#[derive(Clone, Copy, Debug)]
pub struct RawMessage<'a> {
    /// The bytes of one JSON object (a line, a Kafka payload).
    pub bytes: &'a [u8],
    /// The kind implied by the channel (a Kafka topic), `None` when the `type` field says it.
    pub kind: Option<EventKind>,
    /// Source position.
    pub pos: Position,
    /// The watermark partition this message belongs to (DOMAIN §3); unique per worker.
    pub partition: u32,
    /// The message key (a Kafka key), kept for dead letters; `None` for files and the generator.
    pub key: Option<&'a [u8]>,
}

/// What a poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Messages were emitted; poll again soon.
    Ready,
    /// Nothing available right now.
    Idle,
    /// This worker's share of a bounded input is exhausted.
    Done,
}

/// A source of raw messages, one instance per worker.
pub trait Source {
    /// Emits up to `max` messages through `emit`.
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll;
    /// A human name for a position's source (a file path, `topic/partition`), for dead letters.
    fn describe(&self, pos: Position) -> String;
}

/// Builds the source of worker `index` of `peers`.
pub type SourceFactory = Arc<dyn Fn(usize, usize) -> Result<Box<dyn Source>, String> + Send + Sync>;

/// A rejected message (DOMAIN §2.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The raw bytes, cut to 64 KiB.
    pub raw: Vec<u8>,
    /// The original message key, if the source has keys (Kafka).
    pub key: Option<Vec<u8>>,
    /// The source (file path, `topic/partition`).
    pub source: String,
    /// Its position.
    pub pos: Position,
    /// Wall-clock arrival, epoch ms.
    pub arrival_ms: i64,
    /// Why: names the field and the rule.
    pub reason: String,
    /// The `field:rule` label (metrics).
    pub label: String,
}

/// Which way a band changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertKind {
    /// The tree's band became `critical`.
    Critical,
    /// The tree's band left `critical`.
    Resolved,
}

impl AlertKind {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Critical => "critical",
            AlertKind::Resolved => "resolved",
        }
    }
}

/// An alert (DOMAIN §5).
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// critical or resolved.
    pub kind: AlertKind,
    /// The tree.
    pub tree_id: String,
    /// Its region (the last known one if it was unregistered).
    pub region: Option<Region>,
    /// The new score; `None` when the tree was unregistered.
    pub score: Option<f64>,
    /// The new band; `unregistered` when the tree was removed from the registry.
    pub band: String,
    /// The previous band, `None` on first scoring.
    pub previous_band: Option<String>,
    /// The watermark of the change, epoch ms.
    pub watermark: Option<i64>,
    /// Name of the largest penalty of the new score (of the old one if unregistered).
    pub top_penalty: String,
}

/// Where a worker sends what is not a view: dead letters, alerts and (for the lake) valid events.
pub trait Sink {
    /// A rejected message.
    fn dead_letter(&mut self, letter: DeadLetter);
    /// An alert.
    fn alert(&mut self, alert: Alert);
    /// A valid event as it was applied (for the lake); the default ignores it.
    fn event(&mut self, _event: &Event, _pos: Position, _arrival_ms: i64) {}
    /// A change of `tree_scores` at a completed dataflow time (for the lake); the default ignores it.
    fn score_change(&mut self, _change: &ScoreChange) {}
    /// Called at the end of every round.
    fn flush(&mut self) {}
    /// Called once when the worker stops: write out everything buffered.
    fn close(&mut self) {}
}

/// One change of a `tree_scores` row: `diff` is -1 for the old row, +1 for the new one.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreChange {
    /// The tree.
    pub tree_id: crate::event::Id,
    /// The row retracted or inserted.
    pub row: crate::views::ScoreRow,
    /// -1 or +1.
    pub diff: isize,
    /// The dataflow time of the change.
    pub time: u64,
    /// Its watermark, epoch ms.
    pub watermark: Option<i64>,
}

/// Builds the sink of worker `index`.
pub type SinkFactory = Arc<dyn Fn(usize) -> Box<dyn Sink> + Send + Sync>;

/// A sink that drops everything (counts live in [`crate::runtime::Stats`]).
pub struct NullSink;
impl Sink for NullSink {
    fn dead_letter(&mut self, _letter: DeadLetter) {}
    fn alert(&mut self, _alert: Alert) {}
}
