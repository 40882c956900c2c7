//! What the runtime needs from a source and gives to sinks.
//!
//! # The source contract
//!
//! - A source is created once per timely worker (`factory(worker, peers)`)
//!   and reads only its share of the input — some *partitions* (a byte range
//!   of each file, Kafka topic-partitions, a generator shard). The runtime
//!   never assumes one process: a worker learns nothing about its peers'
//!   partitions from its source.
//! - Each message carries its [`Position`] `(source, offset)`: within a
//!   partition, offsets increase in the order messages are emitted. Positions
//!   break ties (DOMAIN §2) and are what a checkpoint records.
//! - [`Source::positions`] says, per partition the worker reads, the offset
//!   of the next message it will emit (everything before has been emitted)
//!   and whether the partition is finished. It may be asked between any two
//!   polls.
//! - [`Source::seek`], called before the first poll with the positions every
//!   worker of an earlier run reported, makes each partition continue at its
//!   recorded `next`: the source then emits exactly the messages it would have
//!   emitted after those positions. Entries for partitions the worker does
//!   not read are ignored (so every worker can be given the whole list);
//!   partitions without an entry start as configured. Files and the generator
//!   are partitioned by worker count, so their positions resume a run with
//!   the same number of workers; Kafka partitions resume under any count.
//! - Partition lifecycle: a partition appears when the source learns of it
//!   (a file opened, a Kafka partition in the topic metadata), is read, and
//!   for a bounded input becomes `finished`; a source whose partitions are
//!   all finished polls [`Poll::Done`].

pub use crate::alerts::{Alert, AlertKind};
use crate::event::{Event, EventKind, Position};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Whose fault an error is: it decides what we tell the user and whether to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The user's input or configuration (a missing file, a bad URL): fix it, retrying does not help.
    User,
    /// Something outside us (a broker, a store, the network, the disk): retrying may help.
    Environment,
    /// Ours: a bug.
    Internal,
}

/// Errors of sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input cannot be opened or read (a missing file, an unreadable path).
    #[error("cannot read {input}: {message}")]
    Unreadable {
        /// The input (a path, a broker list).
        input: String,
        /// What went wrong.
        message: String,
        /// Whose fault.
        fault: Fault,
    },
    /// The client for a remote input cannot be created (bad client properties).
    #[error("cannot create the client for {input}: {message}")]
    Client {
        /// The input.
        input: String,
        /// What went wrong.
        message: String,
    },
    /// A recorded position cannot be resumed (the input changed, or a Kafka offset is no longer retained).
    #[error("cannot resume {partition} at offset {next}: {message}")]
    Resume {
        /// The partition, as a source reference.
        partition: String,
        /// The recorded next offset.
        next: u64,
        /// Why.
        message: String,
    },
    /// The source cannot resume from positions at all.
    #[error("this source cannot resume from recorded positions")]
    SeekUnsupported,
}

impl SourceError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            SourceError::Unreadable { fault, .. } => *fault,
            SourceError::Client { .. } | SourceError::Resume { .. } => Fault::User,
            SourceError::SeekUnsupported => Fault::Internal,
        }
    }

    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        self.fault() == Fault::Environment
    }
}

/// Where a worker's source stands in one partition it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionPosition {
    /// The partition's source id ([`Position::source`]: file index, Kafka topic-partition, generator shard).
    pub source: u32,
    /// Where the partition begins inside that source: the first line of a
    /// file's worker range; 0 when the partition is the whole source.
    pub start: u64,
    /// The offset of the next message to emit: everything before it was emitted.
    pub next: u64,
    /// The partition is read to its end (bounded input).
    pub finished: bool,
    /// A checksum of what the partition has emitted so far, for sources that can
    /// check on resume that their input did not change (files: CRC-32 of the range's
    /// bytes before `next`); 0 where unused.
    pub digest: u32,
}

/// The message's origin as sinks render it (dead letters: the lake's
/// `source` column, Kafka's `treeai.source*` headers).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceRef {
    /// Line `line` (1-based) of the file `path`.
    File {
        /// The path as given.
        path: Arc<str>,
        /// Line number.
        line: u64,
    },
    /// A Kafka record.
    Kafka {
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: u64,
    },
    /// The generator's shard and sequence number.
    Generator {
        /// Shard (worker).
        shard: u32,
        /// Sequence number in the shard, from 1.
        seq: u64,
    },
    /// Any other source: a name and the message's position.
    Other {
        /// The source's name.
        name: Arc<str>,
        /// Its position.
        pos: Position,
    },
}

impl fmt::Display for SourceRef {
    /// `path:line`, `topic/partition`, `generator/shard-N:seq`, `name:source:offset`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceRef::File { path, line } => write!(f, "{path}:{line}"),
            SourceRef::Kafka { topic, partition, .. } => write!(f, "{topic}/{partition}"),
            SourceRef::Generator { shard, seq } => write!(f, "generator/shard-{shard}:{seq}"),
            SourceRef::Other { name, pos } => write!(f, "{name}:{}:{}", pos.source, pos.offset),
        }
    }
}

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

/// A source of raw messages, one instance per worker (see the module documentation for the contract).
pub trait Source {
    /// Emits up to `max` messages through `emit`.
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll;
    /// Where a position's message came from, for dead letters.
    fn source_ref(&self, pos: Position) -> SourceRef;
    /// Where this worker stands in each partition it reads.
    fn positions(&self) -> Vec<PartitionPosition>;
    /// Continues every partition this worker reads at its entry in `positions`.
    fn seek(&mut self, positions: &[PartitionPosition]) -> Result<(), SourceError>;
    /// Whether this worker reads partition `source` under any number of workers (Kafka
    /// partitions are owned by a function of the worker count); `false` for sources split
    /// by worker count. A restore under another worker count gives the partition's
    /// watermark tracker to its owner.
    fn owns(&self, _source: u32) -> bool {
        false
    }
    /// After a [`Source::seek`]: whether this worker has read up to where its partitions
    /// ended when it resumed (what a crashed run can have read). A restored worker counts as
    /// caught up (`/readyz`) only once this holds and a round read less than a full batch.
    /// Sources that know nothing better answer `true`.
    fn caught_up(&self) -> bool {
        true
    }
}

/// Builds the source of worker `index` of `peers`.
pub type SourceFactory = Arc<dyn Fn(usize, usize) -> Result<Box<dyn Source>, SourceError> + Send + Sync>;

/// A rejected message (DOMAIN §2.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The raw bytes, cut to 64 KiB.
    pub raw: Vec<u8>,
    /// The original message key, if the source has keys (Kafka).
    pub key: Option<Vec<u8>>,
    /// Where it came from (rendered by each sink).
    pub source: SourceRef,
    /// Its position.
    pub pos: Position,
    /// Wall-clock arrival, epoch ms.
    pub arrival_ms: i64,
    /// Why: names the field and the rule.
    pub reason: String,
    /// The `field:rule` label (metrics).
    pub label: String,
}

/// Where the pipeline sends what is not a view. A sink has two roles
/// ([`SinkRole`]): each worker's instance receives valid events (for the lake)
/// and dead letters, in parallel; the process's one egress instance receives
/// every `tree_scores` change and every alert, in dataflow-time order.
pub trait Sink: Send {
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
    /// Everything received so far belongs to checkpoint `number` (and nothing
    /// received later does): make it ready to commit with that checkpoint
    /// (roll the open files, deliver what is queued). Returns the sink's
    /// progress to record with it (an output topic-partition and its end offset),
    /// from which a restored run finds what it already wrote.
    fn checkpoint(&mut self, _number: u64) -> Vec<(String, i64)> {
        Vec::new()
    }
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

/// Which instance of a sink this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkRole {
    /// The sink of worker `i`: valid events and dead letters.
    Worker(usize),
    /// The one sink of the process's egress: score changes and alerts.
    Egress,
}

/// Builds the sink of one role.
pub type SinkFactory = Arc<dyn Fn(SinkRole) -> Box<dyn Sink> + Send + Sync>;

/// A sink that drops everything (counts live in [`crate::runtime::Stats`]).
pub struct NullSink;
impl Sink for NullSink {
    fn dead_letter(&mut self, _letter: DeadLetter) {}
    fn alert(&mut self, _alert: Alert) {}
}
