//! The field agents: how many are active and how busy they are in a season,
//! AFISS assessments with TRAQ ratings, defects and notes rated from the tree's
//! condition and the weather, and their later revisions and withdrawals.

use rand::Rng;
use treeai_dataflows::event::EventKind;

use super::json::write_assessment;
use super::schedule::PendingWhat;
use super::{Emitted, Generator, GeneratorConfig};

/// Agents of the normal capacity the shares below are relative to.
const NORMAL_AGENTS: f64 = 30.0;
/// Share of assessments in the stream at normal activity (moderate, 30 agents).
pub(super) const BASE_ASSESSMENT_SHARE: f64 = 0.005;
const MAX_ASSESSMENT_SHARE: f64 = 0.05;
/// Share of assessments revised later / withdrawn later.
const REVISE_SHARE: f64 = 0.05;
const WITHDRAW_SHARE: f64 = 0.008;

pub(super) const LOF: [&str; 4] = ["improbable", "possible", "probable", "imminent"];
pub(super) const LOI: [&str; 4] = ["very_low", "low", "medium", "high"];
pub(super) const CONSEQUENCES: [&str; 4] = ["negligible", "minor", "significant", "severe"];
pub(super) const DEFECT_KINDS: [&str; 9] =
    ["decay", "crack", "lean", "deadwood", "root_damage", "cavity", "canker", "included_bark", "hanger"];

pub(super) const NOTES: [&str; 16] = [
    "Deadwood over footpath, prune within 30 days.",
    "Fungal fruiting bodies at base (possible Ganoderma); recommend resistograph test.",
    "Crack in codominant union, consider cabling.",
    "Root plate heave visible on the windward side.",
    "Hanger lodged in upper crown over the road.",
    "Minor deadwood only, routine inspection.",
    "Cavity at 2 m with sound shell wall.",
    "Lean increased since last visit; check the tilt sensor trend.",
    "Canker on the south side of the trunk.",
    "Included bark at the main fork.",
    "Soil compaction from construction nearby.",
    "Tree in good condition.",
    "Storm damage: broken limbs, area cordoned off.",
    "Photos attached in the app.",
    "Girdling root at the root collar.",
    "Crown thinning, possible drought stress.",
];
/// `AssessmentRec::notes` when the assessment has no notes.
pub(super) const NO_NOTES: u8 = u8::MAX;

/// The contents of one assessment (one revision).
#[derive(Clone, Copy, Debug)]
pub(super) struct AssessmentRec {
    /// Local index of the tree.
    pub(super) tree: u32,
    pub(super) agent: u32,
    /// The agent's assessment number (`A-agent-NN-<n>`).
    pub(super) n: u64,
    pub(super) revision: u32,
    /// Whether `revision` is written even when it is 1.
    pub(super) explicit_revision: bool,
    pub(super) observed_at: i64,
    /// Whether `observed_at` is written as integer epoch ms.
    pub(super) ts_int: bool,
    /// Indices into `LOF`, `LOI` and `CONSEQUENCES`.
    pub(super) lof: u8,
    pub(super) loi: u8,
    pub(super) cons: u8,
    /// The first `ndef` of `defects` are recorded: (index into `DEFECT_KINDS`, severity).
    pub(super) ndef: u8,
    pub(super) defects: [(u8, u8); 4],
    /// Crown dieback in %, negative when omitted.
    pub(super) dieback: f32,
    /// Index into `NOTES`, or `NO_NOTES`.
    pub(super) notes: u8,
    pub(super) withdrawn: bool,
}

/// The number of active agents and the share of assessments in the stream for
/// `config`: both scale with the season and the configured number of agents.
pub(super) fn activity(config: &GeneratorConfig) -> (u32, f64) {
    let mult = config.season.activity_multiplier();
    let active_agents = if config.agents == 0 { 0 } else { ((config.agents as f64 * mult).round() as u32).max(1) };
    let p_assess = if active_agents == 0 {
        0.0
    } else {
        (BASE_ASSESSMENT_SHARE * mult * config.agents as f64 / NORMAL_AGENTS).min(MAX_ASSESSMENT_SHARE)
    };
    (active_agents, p_assess)
}

impl Generator {
    fn pick_assessment_tree(&mut self) -> usize {
        let n = self.trees.len();
        for attempt in 0..4 {
            let j = self.rng.random_range(0..n);
            let t = &self.trees[j];
            let mut accept = 0.35 + 0.65 * t.weakness as f64;
            if self.env[t.region as usize].recent > 0.3 {
                accept += 0.5; // post-storm inspections
            }
            if attempt == 3 || self.unit() < accept {
                return j;
            }
        }
        unreachable!()
    }

    fn pick_agent(&mut self, region: u8) -> u32 {
        let a = self.active_agents;
        let r = region as u32;
        let in_region = if a > r { (a - r).div_ceil(3) } else { 0 };
        if in_region == 0 {
            self.rng.random_range(1..=a)
        } else {
            r + 3 * self.rng.random_range(0..in_region) + 1
        }
    }

    /// Fills the ratings of `rec` from the tree's condition and the weather.
    fn rate(&mut self, rec: &mut AssessmentRec) {
        let t = &self.trees[rec.tree as usize];
        let (w, occ, dbh) = (t.weakness as f64, t.occupancy as i32, t.dbh);
        let recent = self.env[t.region as usize].recent;
        let f = w + 0.25 * (self.unit() - 0.5) + 0.2 * recent;
        rec.lof = if f < 0.3 {
            0
        } else if f < 0.55 {
            1
        } else if f < 0.8 {
            2
        } else {
            3
        };
        let shift = match self.unit() {
            u if u < 0.25 => -1,
            u if u < 0.75 => 0,
            _ => 1,
        };
        rec.loi = (occ + shift).clamp(0, 3) as u8;
        let c = 0.5 * w + 0.25 * (dbh / 150.0).min(1.0) + 0.35 * self.unit();
        rec.cons = if c < 0.35 {
            0
        } else if c < 0.6 {
            1
        } else if c < 0.82 {
            2
        } else {
            3
        };
        let ndef = ((w * 4.0 + self.unit() * 1.2) as usize).min(4);
        rec.ndef = 0;
        while (rec.ndef as usize) < ndef {
            let kind = self.rng.random_range(0..DEFECT_KINDS.len()) as u8;
            if rec.defects[..rec.ndef as usize].iter().any(|d| d.0 == kind) {
                continue;
            }
            let sev = (1.0 + 3.0 * w + (self.unit() - 0.5) * 2.0).round().clamp(1.0, 5.0) as u8;
            rec.defects[rec.ndef as usize] = (kind, sev);
            rec.ndef += 1;
        }
        rec.dieback = if self.unit() < 0.15 { -1.0 } else { (w * 50.0 + self.unit() * 10.0).min(100.0) as f32 };
        rec.notes = if self.unit() < 0.35 { self.rng.random_range(0..NOTES.len()) as u8 } else { NO_NOTES };
    }

    /// A first revision by `agent` (its assessment number `n`) of tree `j`, rated.
    pub(super) fn new_assessment_rec(&mut self, j: usize, now: i64, agent: u32, n: u64) -> AssessmentRec {
        let mut rec = AssessmentRec {
            tree: j as u32,
            agent,
            n,
            revision: 1,
            explicit_revision: self.unit() < 0.5,
            observed_at: now,
            ts_int: self.ts_as_int(),
            lof: 0,
            loi: 0,
            cons: 0,
            ndef: 0,
            defects: [(0, 0); 4],
            dieback: -1.0,
            notes: NO_NOTES,
            withdrawn: false,
        };
        self.rate(&mut rec);
        rec
    }

    pub(super) fn assessment(&mut self, now: i64) -> Emitted {
        let j = self.pick_assessment_tree();
        let agent = self.pick_agent(self.trees[j].region);
        let counter = &mut self.agent_counters[agent as usize - 1];
        let n = *counter * self.shards as u64 + self.shard as u64 + 1;
        *counter += 1;
        let rec = self.new_assessment_rec(j, now, agent, n);
        let u = self.unit();
        if u < REVISE_SHARE {
            let delay = self.rng.random_range(300_000..=7_200_000);
            self.schedule(now + delay, PendingWhat::Revise(rec));
        } else if u < REVISE_SHARE + WITHDRAW_SHARE {
            let delay = self.rng.random_range(600_000..=10_800_000);
            self.schedule(now + delay, PendingWhat::Withdraw(rec));
        }
        let idx = self.tree_index(j);
        write_assessment(&mut self.buf, idx, &rec);
        (EventKind::Assessment, idx, rec.observed_at)
    }

    pub(super) fn revise(&mut self, mut rec: AssessmentRec, now: i64) -> Emitted {
        let old = rec.lof;
        rec.revision += 1;
        rec.explicit_revision = true;
        rec.ts_int = self.ts_as_int();
        self.rate(&mut rec);
        if rec.lof == old {
            // A correction always changes the rating.
            rec.lof = if old == 3 || (old > 0 && self.unit() < 0.5) { old - 1 } else { old + 1 };
        }
        if self.unit() < 0.04 {
            let delay = self.rng.random_range(600_000..=10_800_000);
            self.schedule(now + delay, PendingWhat::Withdraw(rec));
        }
        let idx = self.tree_index(rec.tree as usize);
        write_assessment(&mut self.buf, idx, &rec);
        (EventKind::Assessment, idx, rec.observed_at)
    }

    pub(super) fn withdraw(&mut self, mut rec: AssessmentRec) -> Emitted {
        rec.revision += 1;
        rec.explicit_revision = true;
        rec.withdrawn = true;
        rec.ts_int = self.ts_as_int();
        let idx = self.tree_index(rec.tree as usize);
        write_assessment(&mut self.buf, idx, &rec);
        (EventKind::Assessment, idx, rec.observed_at)
    }
}
