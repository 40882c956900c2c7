//! Ingest: one round of a worker's source into the dataflow's inputs.
//!
//! Every message is parsed and validated (DOMAIN §2); a valid event goes to
//! the worker's sink (the lake's event tables) and into its input collection
//! at the current time; a reading waits for the watermark in the window
//! driver; a rejected message becomes a dead letter.

use super::watermark::PartitionTracker;
use super::window::{Offer, Timed, WindowDriver, WindowInput};
use super::Stats;
use crate::event::{AssessmentEvent, Event, Id, TreeEvent};
use crate::parse::{parse_event, MAX_MESSAGE_BYTES};
use crate::source::{DeadLetter, Poll, RawMessage, Sink, Source};
use differential_dataflow::input::InputSession;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The dataflow's three inputs on one worker.
///
/// Registry versions and assessment revisions are upserts: the worker keeps
/// the newest one it has read per tree (per assessment id), and a newer one
/// retracts it from the input, so the input holds one row per key and worker
/// however long the history. (The views still take the newest over all
/// workers' rows, so a key read by several workers is right too.) An older
/// version than the one kept changes nothing and is not inserted.
pub(super) struct Inputs {
    /// The newest tree version per tree read by this worker.
    pub(super) trees: InputSession<u64, (Id, TreeEvent), isize>,
    /// The newest assessment revision per assessment id read by this worker.
    pub(super) assessments: InputSession<u64, (Id, AssessmentEvent), isize>,
    /// The readings in the window.
    pub(super) readings: WindowInput,
    /// What `trees` holds, by tree (persistent: a checkpoint takes it in O(1)). Rows behind
    /// an `Arc`: a persistent map's nodes are fixed arrays of entries, mostly empty near the
    /// leaves, so inline rows cost ~880 bytes per tree (heaptrack, 100,000 trees).
    pub(super) tree_versions: imbl::HashMap<Id, Arc<TreeEvent>>,
    /// What `assessments` holds, by assessment id.
    pub(super) revisions: imbl::HashMap<Id, Arc<AssessmentEvent>>,
}

impl Inputs {
    pub(super) fn new() -> Self {
        Inputs {
            trees: InputSession::new(),
            assessments: InputSession::new(),
            readings: InputSession::new(),
            tree_versions: imbl::HashMap::new(),
            revisions: imbl::HashMap::new(),
        }
    }

    /// Applies a tree version; returns whether the input changed.
    pub(super) fn upsert_tree(&mut self, t: TreeEvent) -> bool {
        let key = t.tree_id.clone();
        upsert(&mut self.trees, &mut self.tree_versions, key, t)
    }

    /// Applies an assessment revision; returns whether the input changed.
    pub(super) fn upsert_assessment(&mut self, a: AssessmentEvent) -> bool {
        let key = a.assessment_id.clone();
        upsert(&mut self.assessments, &mut self.revisions, key, a)
    }

    /// Moves every input to `time` (a no-op if already there).
    pub(super) fn advance_to(&mut self, time: u64) {
        self.trees.advance_to(time);
        self.assessments.advance_to(time);
        self.readings.advance_to(time);
    }

    pub(super) fn flush(&mut self) {
        self.trees.flush();
        self.assessments.flush();
        self.readings.flush();
    }
}

/// Makes `event` the row of `key` in `input` if it orders after the one kept in `kept`
/// (retracting that one); returns whether the input changed.
fn upsert<E: Ord + Clone + 'static>(
    input: &mut InputSession<u64, (Id, E), isize>,
    kept: &mut imbl::HashMap<Id, Arc<E>>,
    key: Id,
    event: E,
) -> bool
where
    (Id, E): differential_dataflow::Data,
{
    match kept.get(&key) {
        Some(old) if **old >= event => return false,
        Some(old) => input.update((key.clone(), E::clone(old)), -1),
        None => {}
    }
    input.update((key.clone(), event.clone()), 1);
    kept.insert(key, Arc::new(event));
    true
}

/// What one round read.
#[derive(Default)]
pub(super) struct Round {
    /// Something was inserted at the current time (it needs a new `seq`).
    pub(super) dirty: bool,
    /// Messages read.
    pub(super) read: u64,
    /// The source's bounded input is exhausted.
    pub(super) done: bool,
    /// Events applied at the current time (all but readings waiting or expired).
    pub(super) applied: u64,
    /// When this round's messages arrived, epoch ms.
    pub(super) arrival_ms: i64,
}

/// Reads up to `max` messages from `source` into `inputs` at the current time.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_round(
    source: &mut dyn Source,
    max: usize,
    sink: &mut dyn Sink,
    inputs: &mut Inputs,
    tracker: &mut PartitionTracker,
    driver: &mut WindowDriver,
    watermark: Option<i64>,
    stats: &Stats,
) -> Round {
    let now = Instant::now();
    let arrival_ms = super::now_ms();
    let mut round = Round { arrival_ms, ..Round::default() };
    let (mut valid, mut rejected, mut expired, mut late) = ([0u64; 3], 0u64, 0u64, 0u64);
    let mut rejections = Vec::new();
    let status = source.poll(max, &mut |msg: RawMessage<'_>| {
        round.read += 1;
        match parse_event(msg.bytes, msg.kind, msg.pos) {
            Ok(event) => {
                sink.event(&event, msg.pos, arrival_ms);
                match event {
                    Event::Tree(t) => {
                        valid[0] += 1;
                        round.applied += 1;
                        round.dirty |= inputs.upsert_tree(t);
                    }
                    Event::Assessment(a, _notes) => {
                        valid[1] += 1;
                        round.applied += 1;
                        round.dirty |= inputs.upsert_assessment(a);
                    }
                    Event::Reading(r) => {
                        valid[2] += 1;
                        tracker.observe(msg.partition, r.ts, now);
                        let t = Timed { at: r.ts, tree: r.tree_id, metric: r.metric, value: r.value, arrival_ms };
                        match driver.offer(t, watermark) {
                            Offer::Pending => {}
                            Offer::Applied { late: is_late } => {
                                late += u64::from(is_late);
                                round.applied += 1;
                                round.dirty = true;
                            }
                            Offer::Expired => expired += 1,
                        }
                    }
                }
            }
            Err(rejection) => {
                rejected += 1;
                rejections.push((
                    msg.bytes[..msg.bytes.len().min(MAX_MESSAGE_BYTES)].to_vec(),
                    msg.key.map(<[u8]>::to_vec),
                    msg.pos,
                    rejection,
                ));
            }
        }
    });
    for (raw, key, pos, rejection) in rejections {
        let label = rejection.label();
        *stats.rejected_by_label.lock().unwrap_or_else(|p| p.into_inner()).entry(label.clone()).or_default() += 1;
        sink.dead_letter(DeadLetter {
            raw,
            key,
            source: source.source_ref(pos),
            pos,
            arrival_ms,
            reason: rejection.to_string(),
            label,
        });
    }
    // Readings applied at once (late ones) reach the dataflow now, one row per changed tree.
    round.dirty |= driver.flush(&mut inputs.readings);
    round.done = status == Poll::Done;
    stats.events_read.fetch_add(round.read, Ordering::Relaxed);
    for (counter, n) in stats.events_valid.iter().zip(valid) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    stats.events_rejected.fetch_add(rejected, Ordering::Relaxed);
    stats.readings_expired.fetch_add(expired, Ordering::Relaxed);
    stats.readings_late.fetch_add(late, Ordering::Relaxed);
    round
}
