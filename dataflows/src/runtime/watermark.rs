//! The watermark protocol (DOMAIN §3).
//!
//! Each worker tracks, per watermark partition it reads, the greatest reading
//! `ts` and when a reading last arrived ([`PartitionTracker`]). Every round it
//! broadcasts a [`Report`] to all workers (through a small timely dataflow, so
//! this works across processes too); every worker derives the same global
//! watermark from the latest reports ([`global_watermark`]): the least maximum
//! over active partitions minus the allowed lateness; the greatest `ts` seen
//! once every partition is idle or finished (the quiet-stream rule), or at
//! the end of a bounded input. The watermark never goes back.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a worker tells its peers each round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Report {
    pub(super) worker: usize,
    pub(super) round: u64,
    /// Least "greatest ts" over this worker's active partitions.
    pub(super) active_min: Option<i64>,
    /// Greatest ts this worker has seen.
    pub(super) max_ts: Option<i64>,
    /// This worker's bounded input is exhausted.
    pub(super) done: bool,
    /// This worker's input time.
    pub(super) time: u64,
    /// The newest checkpoint number this worker knows was asked for.
    pub(super) asked: u64,
    /// The newest checkpoint this worker has captured.
    pub(super) captured: u64,
    /// This worker's input is done and the final watermark applied.
    pub(super) finished: bool,
    /// This worker's process was asked to stop.
    pub(super) stopping: bool,
    /// The worker's last two captures: `(checkpoint, input time)` (a cluster's cut time is
    /// the greatest over every worker; a peer may be one capture ahead).
    pub(super) cuts: [(u64, u64); 2],
    /// The final checkpoint this worker will stop after (0: none yet).
    pub(super) final_cut: u64,
}

/// The global watermark from every worker's latest report (`None` until all reported).
pub(super) fn global_watermark(reports: &[Option<Report>], lateness_ms: i64) -> Option<Option<i64>> {
    let mut all_done = true;
    let mut max_ts: Option<i64> = None;
    let mut active_min: Option<i64> = None;
    for r in reports {
        let r = r.as_ref()?;
        all_done &= r.done;
        max_ts = max_ts.max(r.max_ts);
        if let Some(a) = r.active_min {
            active_min = Some(active_min.map_or(a, |m: i64| m.min(a)));
        }
    }
    Some(match active_min {
        // End of a bounded input: no lateness (DOMAIN §3).
        _ if all_done => max_ts,
        Some(a) => Some(a - lateness_ms),
        // Every partition idle or finished: the quiet-stream rule.
        None => max_ts,
    })
}

/// Per-partition reading times of one worker.
pub(super) struct PartitionTracker {
    pub(super) partitions: HashMap<u32, (i64, Instant)>,
    pub(super) max_ts: Option<i64>,
}

impl PartitionTracker {
    pub(super) fn observe(&mut self, partition: u32, ts: i64, now: Instant) {
        let e = self.partitions.entry(partition).or_insert((ts, now));
        e.0 = e.0.max(ts);
        e.1 = now;
        self.max_ts = self.max_ts.max(Some(ts));
    }
    pub(super) fn active_min(&self, now: Instant, idle: Duration) -> Option<i64> {
        self.partitions.values().filter(|(_, seen)| now.duration_since(*seen) < idle).map(|(ts, _)| *ts).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(worker: usize, active_min: Option<i64>, max_ts: Option<i64>, done: bool) -> Option<Report> {
        Some(Report { worker, round: 1, active_min, max_ts, done, ..Default::default() })
    }

    #[test]
    fn watermark_rules() {
        // Not everyone has reported: no watermark decision yet.
        assert_eq!(global_watermark(&[report(0, Some(10_000), Some(10_000), false), None], 5_000), None);
        // Least maximum over active partitions, minus lateness.
        let r = [report(0, Some(20_000), Some(30_000), false), report(1, Some(12_000), Some(12_000), false)];
        assert_eq!(global_watermark(&r, 5_000), Some(Some(7_000)));
        // A finished or idle worker does not hold the watermark back.
        let r = [report(0, Some(20_000), Some(30_000), false), report(1, None, Some(12_000), true)];
        assert_eq!(global_watermark(&r, 5_000), Some(Some(15_000)));
        // Quiet stream: every partition idle -> the greatest ts seen.
        let r = [report(0, None, Some(30_000), false), report(1, None, Some(12_000), false)];
        assert_eq!(global_watermark(&r, 5_000), Some(Some(30_000)));
        // End of a bounded input: the greatest ts, no lateness.
        let r = [report(0, None, Some(30_000), true), report(1, None, Some(31_000), true)];
        assert_eq!(global_watermark(&r, 5_000), Some(Some(31_000)));
        // No readings at all: no watermark.
        let r = [report(0, None, None, true)];
        assert_eq!(global_watermark(&r, 5_000), Some(None));
    }
}
