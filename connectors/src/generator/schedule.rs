//! Events scheduled for later event time: assessment revisions and
//! withdrawals, and re-registrations of removed trees, in a queue ordered by
//! due time.

use std::cmp::{Ordering, Reverse};

use super::agents::AssessmentRec;
use super::{Emitted, Generator};

/// Bound on scheduled revisions/withdrawals/re-registrations (memory bound).
const MAX_PENDING: usize = 100_000;

/// What to emit when a [`Pending`] entry is due.
#[derive(Debug)]
pub(super) enum PendingWhat {
    /// A new revision of this assessment.
    Revise(AssessmentRec),
    /// The withdrawal of this assessment.
    Withdraw(AssessmentRec),
    /// The registration again of the removed tree with this local index.
    Reregister(u32),
}

/// Something to emit later, ordered by due event time then creation.
#[derive(Debug)]
pub(super) struct Pending {
    due_ms: i64,
    seq: u64,
    what: PendingWhat,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ms, self.seq) == (other.due_ms, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due_ms, self.seq).cmp(&(other.due_ms, other.seq))
    }
}

impl Generator {
    /// Schedules `what` at event time `due_ms` (dropped if the queue is full).
    pub(super) fn schedule(&mut self, due_ms: i64, what: PendingWhat) {
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        self.pending_seq += 1;
        self.pending.push(Reverse(Pending { due_ms, seq: self.pending_seq, what }));
    }

    /// The earliest scheduled entry, if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: i64) -> Option<PendingWhat> {
        if self.pending.peek().is_some_and(|p| p.0.due_ms <= now) {
            self.pending.pop().map(|Reverse(p)| p.what)
        } else {
            None
        }
    }

    /// Emits a due entry.
    pub(super) fn run_pending(&mut self, what: PendingWhat, now: i64) -> Emitted {
        match what {
            PendingWhat::Revise(rec) => self.revise(rec, now),
            PendingWhat::Withdraw(rec) => self.withdraw(rec),
            PendingWhat::Reregister(j) => self.reregister(j as usize, now),
        }
    }
}
