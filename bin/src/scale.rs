//! `treeai scale`: the seasonal scaling policy (OPERATIONS.md, "Seasonal scaling").
//!
//! `treeai scale plan --region R [--at TIME] [--policy FILE] [--metrics URL] [--json]`
//! prints how many processes region R's cluster should run at TIME, and why.
//! `treeai scale apply` makes it so on Kubernetes; with `--dry-run` it prints the
//! API calls it would make, one per line, and makes none.
//!
//! # How the size is chosen
//!
//! 1. **Season.** The region's calendar maps each UTC calendar month to a
//!    season: `peak`, `moderate` or `low`. The seed's calendars: northern
//!    (us-east, eu-west) peak Mar–Aug, moderate Sep–Nov, low Dec–Feb; southern
//!    (ap-southeast) peak Sep–Feb, moderate Mar–May, low Jun–Aug. A DR twin
//!    (us-west, eu-central, ap-northeast) has its primary's calendar (us-east,
//!    eu-west, ap-southeast): after a failover it carries its primary's load.
//!    Months change at 00:00:00 UTC on the 1st: 23:59:59 on the last day of
//!    February is still February.
//! 2. **Pre-warm.** When a season with a *larger* multiplier starts within
//!    `cooldown.prewarm_minutes` (default 120 minutes) after TIME, the plan
//!    already uses that season's multiplier, so the cluster has resized and
//!    restored before the load arrives. A smaller season is never anticipated:
//!    the cluster shrinks when that season has started (and the scale-in
//!    cooldown allows it).
//! 3. **Emergency.** The emergency multiplier applies while a trigger holds:
//!    - the total source lag (`sum(treeai_source_lag)`, messages) stayed above
//!      `emergency.source_lag_messages` for `emergency.sustained_minutes`;
//!    - the freshness p99 (from the `treeai_freshness_seconds` histogram) stayed
//!      above `emergency.freshness_p99_seconds` for `sustained_minutes`;
//!    - the tree alerts (`treeai_alerts_total`, per minute) stayed above
//!      `emergency.critical_alerts_per_minute` for `sustained_minutes`;
//!    - the storm flag is set (`--storm`, or the annotation `treeai.io/storm=true`
//!      on the StatefulSet: `kubectl annotate statefulset treeai treeai.io/storm=true`).
//!
//!    A threshold of 0 turns its trigger off. The metrics come from Prometheus
//!    (`--metrics`); with no Prometheus, or no data, no metric trigger fires.
//!    The emergency lasts until no metric trigger has held for
//!    `emergency.exit_after_minutes` (default 30): a lag that drops below its
//!    threshold for ten minutes and comes back does not resize the cluster
//!    twice. Prometheus answers when a trigger last held, so the scaler keeps no
//!    state of its own. The storm flag is an operator's decision: it holds the
//!    emergency exactly as long as it is set. The emergency never makes the
//!    cluster smaller than the season would.
//! 4. **Size.** `processes = ceil(base × multiplier)`, rounded *up* (base 4 ×
//!    low 0.3 = 1.2 → 2 processes), then kept within `[min, max]`.
//! 5. **Cooldowns.** Every resize restarts the whole cluster (checkpoint, stop,
//!    start, restore), so the size does not flap. Knowing the current size and
//!    when it last changed (`apply` reads both from the StatefulSet: its
//!    `replicas` and the `treeai.io/scaled-at` annotation each resize writes;
//!    `plan` takes `--current` and `--last-change`):
//!    - a scale-in (fewer processes) waits until `cooldown.after_scale_in_minutes`
//!      (default 60) have passed since the last change; until then the size
//!      stays;
//!    - a scale-out (more processes) waits `cooldown.after_scale_out_minutes`
//!      (default 5) since the last change, **except in an emergency**, which
//!      starts at once (the seed: emergency size within 5 minutes);
//!    - a cooldown never holds a size outside `[min, max]` (e.g. 0 processes after
//!      an interrupted resize): that is corrected at once.
//!
//!    Without a current size or a last change there is no cooldown.
//!
//! The seed's numbers (`Policy::default()`, and `deploy/base/scale-policy.toml`):
//! base 4, min 1, max 20; multipliers peak 2.0, moderate 1.0, low 0.3, emergency
//! 5.0 — so 8, 4, 2 and 20 processes.
//!
//! # The policy file (`--policy FILE`, TOML)
//!
//! Every key is optional (a missing key keeps the seed's value); an unknown key
//! is an error that names it. `[regions]` replaces the built-in calendars as a
//! whole: a region's overlay lists only its own region.
//!
//! ```toml
//! base = 4                # processes at normal capacity (moderate, 100 %)
//! min = 1                 # never fewer (at least 1)
//! max = 20                # never more
//!
//! [multipliers]           # capacity relative to base; sizes round up
//! peak = 2.0
//! moderate = 1.0
//! low = 0.3
//! emergency = 5.0
//!
//! [emergency]             # 0 turns a threshold off
//! sustained_minutes = 3               # a trigger must hold this long
//! source_lag_messages = 1000000       # sum(treeai_source_lag)
//! freshness_p99_seconds = 60          # p99 of treeai_freshness_seconds
//! critical_alerts_per_minute = 50     # rate of treeai_alerts_total
//! exit_after_minutes = 30             # leave once no trigger held this long
//!
//! [cooldown]
//! after_scale_out_minutes = 5         # grow only this long after the last change (not in an emergency)
//! after_scale_in_minutes = 60         # shrink only this long after the last change
//! prewarm_minutes = 120               # grow this long before a larger season starts
//!
//! [regions.us-east]                   # UTC calendar months; each month exactly once
//! hemisphere = "northern"             # informational
//! peak = [3, 4, 5, 6, 7, 8]
//! moderate = [9, 10, 11]
//! low = [12, 1, 2]
//! ```
//!
//! # Apply
//!
//! A timely cluster cannot change size in place, and the StatefulSet's
//! `updateStrategy: OnDelete` restarts no pod on a template change. So, when the
//! size changes, `apply` (see [`apply_steps`]):
//! 1. `POST <admin>/v1/admin/checkpoint` — a checkpoint, answered once durable;
//! 2. `PATCH` the StatefulSet to `replicas: 0` — every process stops (SIGTERM:
//!    drain, final checkpoint, exit 0);
//! 3. `GET` the pipeline's pods until none is left;
//! 4. `PATCH` the StatefulSet: `replicas`, and the container's `TREEAI_PROCESSES`
//!    (the two must agree) and `TREEAI_PEERS` (the pattern `treeai-{i}.treeai-peers:2101`,
//!    which every size shares; an explicit list of the pods is accepted too), plus the annotations
//!    `treeai.io/scaled-at`, `treeai.io/scaled-to` and `treeai.io/scale-reason`;
//!    all pods start together at the new size and restore the checkpoint,
//!    re-sharded;
//! 5. `GET` the StatefulSet until `status.readyReplicas` is the new size (ready =
//!    restored and caught up), then `GET <admin>/readyz`.
//!
//! With 0 processes running (a standby, or an interrupted resize) steps 1–3 are
//! skipped. With no change there is no step.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeDelta, Utc};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{GetParams, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The content type of `apply`'s PATCHes (kube-rs' `Patch::Strategic`).
pub const STRATEGIC_MERGE: &str = "application/strategic-merge-patch+json";

/// kube-rs' request builder for a namespaced resource (what its `Api::namespaced` uses).
fn kube_request<K: kube::Resource<DynamicType = ()>>(namespace: &str) -> kube::core::Request {
    kube::core::Request::new(K::url_path(&(), Some(namespace)))
}

/// Disaster-recovery twins and their primaries: a twin uses its primary's calendar.
pub const DR_TWINS: [(&str, &str); 3] =
    [("us-west", "us-east"), ("eu-central", "eu-west"), ("ap-northeast", "ap-southeast")];

/// StatefulSet annotation: when the scaler last changed the size (RFC 3339).
pub const ANNOTATION_SCALED_AT: &str = "treeai.io/scaled-at";
/// StatefulSet annotation: the size the scaler last set.
pub const ANNOTATION_SCALED_TO: &str = "treeai.io/scaled-to";
/// StatefulSet annotation: the reason of the last change.
pub const ANNOTATION_SCALE_REASON: &str = "treeai.io/scale-reason";
/// StatefulSet annotation: a resize in progress (set while the cluster is stopped for it).
pub const ANNOTATION_SCALING_TO: &str = "treeai.io/scaling-to";
/// StatefulSet annotation an operator sets to `"true"` to declare a storm (emergency size).
pub const ANNOTATION_STORM: &str = "treeai.io/storm";
/// StatefulSet annotation of a DR twin (deploy/overlays/*/standby.yaml): its primary's region.
pub const ANNOTATION_DR_TWIN_OF: &str = "treeai.io/dr-twin-of";

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// What can go wrong in `treeai scale`.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The policy (a file, or one built in code) is not valid; `origin` names the file.
    #[error("{origin}: {message}")]
    Policy {
        /// The policy file, or "policy".
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The region has no calendar in the policy.
    #[error("unknown region `{region}`; the policy knows: {}", known.join(", "))]
    UnknownRegion {
        /// The region asked for.
        region: String,
        /// The regions the policy has calendars for.
        known: Vec<String>,
    },
    /// A Prometheus answer could not be used.
    #[error("prometheus answer for {signal}: {message}")]
    Prometheus {
        /// The signal the query was for.
        signal: &'static str,
        /// What is wrong with the answer.
        message: String,
    },
    /// A Kubernetes object could not be read.
    #[error("statefulset: {0}")]
    StatefulSet(String),
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

/// A season of the calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Season {
    /// Spring and summer in the north (200 % by default).
    Peak,
    /// Autumn in the north (100 %).
    Moderate,
    /// Winter in the north (30 %).
    Low,
}

impl Season {
    /// All seasons.
    pub const ALL: [Season; 3] = [Season::Peak, Season::Moderate, Season::Low];

    /// `peak`, `moderate` or `low`.
    pub fn name(self) -> &'static str {
        match self {
            Season::Peak => "peak",
            Season::Moderate => "moderate",
            Season::Low => "low",
        }
    }
}

impl fmt::Display for Season {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which half of the globe a calendar is for. Informational: the months decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hemisphere {
    /// Peak in March–August.
    Northern,
    /// Peak in September–February.
    Southern,
}

/// The scaling policy: how many processes a region runs, and when.
///
/// Read from a TOML file (`--policy`, see the module docs for an example) or
/// [`Policy::default`], the seed's numbers. Every field may be left out of the
/// file (it keeps its default); unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Processes at normal capacity, the moderate season's 100 % (the seed's
    /// 30 agents). Default 4. At least 1.
    pub base: u32,
    /// Never fewer processes than this, whatever the season. Default 1. At least 1.
    pub min: u32,
    /// Never more processes than this, not even in an emergency. Default 20.
    pub max: u32,
    /// Capacity of each season and of an emergency, relative to `base`.
    pub multipliers: Multipliers,
    /// When the emergency size applies, and when it ends.
    pub emergency: EmergencyPolicy,
    /// How long a change holds before the next, and how early a season is prepared for.
    pub cooldown: CooldownPolicy,
    /// Season calendar per region name (`[regions.us-east]`, ...). A file's
    /// `[regions]` replaces the built-in calendars as a whole.
    pub regions: BTreeMap<String, Calendar>,
}

/// Capacity relative to `base`: `processes = ceil(base × multiplier)`. Each > 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Multipliers {
    /// The peak season (spring and summer in the north). Default 2.0 (200 %).
    pub peak: f64,
    /// The moderate season (autumn in the north). Default 1.0 (100 %).
    pub moderate: f64,
    /// The low season (winter in the north). Default 0.3 (30 %).
    pub low: f64,
    /// An emergency: storms, sustained backlog. Default 5.0 (500 %).
    pub emergency: f64,
}

impl Multipliers {
    /// The multiplier of `season`.
    pub fn of(&self, season: Season) -> f64 {
        match season {
            Season::Peak => self.peak,
            Season::Moderate => self.moderate,
            Season::Low => self.low,
        }
    }
}

/// The emergency triggers. A threshold of 0 turns its trigger off; the storm
/// flag needs no setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmergencyPolicy {
    /// A metric trigger fires when its value stayed above the threshold for
    /// this many minutes (the lowest value over the window is above it).
    /// Default 3. At least 1.
    pub sustained_minutes: u32,
    /// Total source lag, messages behind the partitions' ends, summed over all
    /// topics and partitions (`sum(treeai_source_lag)`). Default 1 000 000.
    pub source_lag_messages: f64,
    /// Freshness p99 in seconds (event arrival → visible in SQL; the
    /// `treeai_freshness_seconds` histogram over 1-minute rates). Default 60.
    pub freshness_p99_seconds: f64,
    /// Tree alerts per minute (`treeai_alerts_total`, whose alerts are a tree
    /// turning critical or leaving critical; in a storm, nearly all critical).
    /// Default 50.
    pub critical_alerts_per_minute: f64,
    /// The emergency ends once no metric trigger has held for this many
    /// minutes. Default 30. 0: it ends as soon as none holds.
    pub exit_after_minutes: u32,
}

/// Cooldowns between resizes, and the pre-warm lead time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CooldownPolicy {
    /// A scale-out (more processes) happens only this many minutes after the
    /// last change. Not applied in an emergency. Default 5.
    pub after_scale_out_minutes: u32,
    /// A scale-in (fewer processes) happens only this many minutes after the
    /// last change. Default 60.
    pub after_scale_in_minutes: u32,
    /// Pre-warm lead time in minutes: when a season with a larger multiplier
    /// starts within this long, its size applies already. Default 120 (a
    /// resize takes minutes; two hours leave room for retries). 0: no pre-warm.
    pub prewarm_minutes: u32,
}

/// A region's season calendar, by UTC calendar month (1 = January). Every
/// month 1–12 must be in exactly one of `peak`, `moderate` and `low`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calendar {
    /// `northern` or `southern`; informational (the months decide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hemisphere: Option<Hemisphere>,
    /// Months of the peak season.
    #[serde(default)]
    pub peak: Vec<u32>,
    /// Months of the moderate season.
    #[serde(default)]
    pub moderate: Vec<u32>,
    /// Months of the low season.
    #[serde(default)]
    pub low: Vec<u32>,
}

impl Calendar {
    /// The northern calendar: peak Mar–Aug, moderate Sep–Nov, low Dec–Feb.
    pub fn northern() -> Calendar {
        Calendar {
            hemisphere: Some(Hemisphere::Northern),
            peak: vec![3, 4, 5, 6, 7, 8],
            moderate: vec![9, 10, 11],
            low: vec![12, 1, 2],
        }
    }

    /// The southern calendar: peak Sep–Feb, moderate Mar–May, low Jun–Aug.
    pub fn southern() -> Calendar {
        Calendar {
            hemisphere: Some(Hemisphere::Southern),
            peak: vec![9, 10, 11, 12, 1, 2],
            moderate: vec![3, 4, 5],
            low: vec![6, 7, 8],
        }
    }

    /// The season of `month` (1–12), if the calendar has it.
    pub fn season(&self, month: u32) -> Option<Season> {
        Season::ALL.into_iter().find(|&s| self.months(s).contains(&month))
    }

    fn months(&self, season: Season) -> &[u32] {
        match season {
            Season::Peak => &self.peak,
            Season::Moderate => &self.moderate,
            Season::Low => &self.low,
        }
    }

    fn validate(&self, region: &str) -> Result<(), String> {
        let mut seen: [Option<Season>; 12] = [None; 12];
        for season in Season::ALL {
            for &m in self.months(season) {
                if !(1..=12).contains(&m) {
                    return Err(format!("regions.{region}.{season}: month {m} is not 1–12"));
                }
                if let Some(other) = seen[m as usize - 1] {
                    return Err(format!("regions.{region}: month {m} is in both `{other}` and `{season}`"));
                }
                seen[m as usize - 1] = Some(season);
            }
        }
        let missing: Vec<String> =
            (1..=12u32).filter(|m| seen[*m as usize - 1].is_none()).map(|m| m.to_string()).collect();
        if !missing.is_empty() {
            return Err(format!("regions.{region}: month(s) {} in no season", missing.join(", ")));
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Policy {
        let mut regions = BTreeMap::new();
        regions.insert("us-east".to_string(), Calendar::northern());
        regions.insert("eu-west".to_string(), Calendar::northern());
        regions.insert("ap-southeast".to_string(), Calendar::southern());
        for (twin, primary) in DR_TWINS {
            let calendar = regions[primary].clone();
            regions.insert(twin.to_string(), calendar);
        }
        Policy {
            base: 4,
            min: 1,
            max: 20,
            multipliers: Multipliers::default(),
            emergency: EmergencyPolicy::default(),
            cooldown: CooldownPolicy::default(),
            regions,
        }
    }
}

impl Default for Multipliers {
    fn default() -> Multipliers {
        Multipliers { peak: 2.0, moderate: 1.0, low: 0.3, emergency: 5.0 }
    }
}

impl Default for EmergencyPolicy {
    fn default() -> EmergencyPolicy {
        EmergencyPolicy {
            sustained_minutes: 3,
            source_lag_messages: 1_000_000.0,
            freshness_p99_seconds: 60.0,
            critical_alerts_per_minute: 50.0,
            exit_after_minutes: 30,
        }
    }
}

impl Default for CooldownPolicy {
    fn default() -> CooldownPolicy {
        CooldownPolicy { after_scale_out_minutes: 5, after_scale_in_minutes: 60, prewarm_minutes: 120 }
    }
}

/// A TOML error on one line, quoting the line that has it:
/// ``line 3 (`lag = 1`): unknown field `lag`, expected one of ...``.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} (`{source}`): {message}")
        }
        None => message,
    }
}

impl Policy {
    /// Parses and validates a policy in TOML. Errors name the bad field.
    pub fn from_toml_str(text: &str) -> Result<Policy, ScaleError> {
        let bad = |message: String| ScaleError::Policy { origin: "policy".to_string(), message };
        let policy: Policy = toml::from_str(text).map_err(|e| bad(toml_error(text, &e)))?;
        policy.validate().map_err(bad)?;
        Ok(policy)
    }

    /// Reads, parses and validates a policy file. Errors name the file and the bad field.
    pub fn load(path: &Path) -> Result<Policy, ScaleError> {
        let origin = format!("policy file {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScaleError::Policy { origin: origin.clone(), message: e.to_string() })?;
        Policy::from_toml_str(&text).map_err(|e| match e {
            ScaleError::Policy { message, .. } => ScaleError::Policy { origin, message },
            other => other,
        })
    }

    /// Checks the values serde cannot: limits, multipliers, thresholds, calendars.
    pub fn validate(&self) -> Result<(), String> {
        if self.base < 1 {
            return Err("`base` must be at least 1".into());
        }
        if self.min < 1 {
            return Err("`min` must be at least 1 (a cluster needs a process)".into());
        }
        if self.max < self.min {
            return Err(format!("`max` ({}) is below `min` ({})", self.max, self.min));
        }
        let m = &self.multipliers;
        for (name, v) in [("peak", m.peak), ("moderate", m.moderate), ("low", m.low), ("emergency", m.emergency)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("`multipliers.{name}` must be a number above 0, not {v}"));
            }
        }
        let e = &self.emergency;
        if e.sustained_minutes < 1 {
            return Err("`emergency.sustained_minutes` must be at least 1".into());
        }
        for (name, v) in [
            ("source_lag_messages", e.source_lag_messages),
            ("freshness_p99_seconds", e.freshness_p99_seconds),
            ("critical_alerts_per_minute", e.critical_alerts_per_minute),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("`emergency.{name}` must be 0 (off) or above, not {v}"));
            }
        }
        if self.regions.is_empty() {
            return Err("`regions` is empty: no region has a calendar".into());
        }
        for (region, calendar) in &self.regions {
            calendar.validate(region)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Signals and the plan
// ---------------------------------------------------------------------------

/// What the plan reads besides the time. Every field is optional: absent
/// means unknown, and an unknown value fires no trigger and holds no cooldown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Processes running now (the StatefulSet's `spec.replicas`; `--current`).
    pub current: Option<u32>,
    /// When the size last changed (the `treeai.io/scaled-at` annotation; `--last-change`).
    pub last_change: Option<DateTime<Utc>>,
    /// Total source lag in messages, sustained: its lowest value over the last
    /// `emergency.sustained_minutes`.
    pub source_lag: Option<f64>,
    /// Freshness p99 in seconds, sustained (lowest over the window).
    pub freshness_p99: Option<f64>,
    /// Tree alerts per minute, sustained (lowest over the window).
    pub critical_alerts_per_minute: Option<f64>,
    /// A storm is declared (`--storm`, or the StatefulSet annotation `treeai.io/storm=true`).
    pub storm: bool,
    /// The last time any metric trigger held (sustained) within the exit
    /// window; the emergency lasts until `exit_after_minutes` after it.
    pub trigger_last_held: Option<DateTime<Utc>>,
}

impl Signals {
    /// `self` with every value `other` knows taken from `other` (the storm flag: either).
    pub fn merge(self, other: Signals) -> Signals {
        Signals {
            current: other.current.or(self.current),
            last_change: other.last_change.or(self.last_change),
            source_lag: other.source_lag.or(self.source_lag),
            freshness_p99: other.freshness_p99.or(self.freshness_p99),
            critical_alerts_per_minute: other.critical_alerts_per_minute.or(self.critical_alerts_per_minute),
            storm: self.storm || other.storm,
            trigger_last_held: other.trigger_last_held.or(self.trigger_last_held),
        }
    }
}

/// The rule that set the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The season in effect.
    Season,
    /// A larger season starting within the pre-warm lead time.
    Prewarm,
    /// An emergency trigger holds now.
    Emergency,
    /// No trigger holds now, but one did within the exit delay.
    EmergencyHold,
}

/// A limit of the policy that changed the computed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    /// Raised to `min`.
    Min,
    /// Lowered to `max`.
    Max,
}

/// What `treeai scale plan` decided. `--json` prints it as one object:
/// `{"processes": N, "season": "...", "emergency": bool, "reason": "...", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The number of processes to run.
    pub processes: u32,
    /// The calendar's season at the time planned for (`peak`, `moderate`, `low`).
    pub season: Season,
    /// Whether the emergency size applies (a trigger holds, or held within the exit delay).
    pub emergency: bool,
    /// Why, in one sentence: season, pre-warm, trigger, limits, cooldown.
    pub reason: String,
    /// The region planned for.
    pub region: String,
    /// The time planned for, RFC 3339 UTC.
    pub at: String,
    /// The rule that set the size before limits and cooldown.
    pub rule: Rule,
    /// What the size is for: a season's name, or `emergency`.
    pub sized_for: String,
    /// The multiplier used.
    pub multiplier: f64,
    /// `ceil(base × multiplier)`, before the limits.
    pub computed: u32,
    /// The limit that changed `computed`, if any.
    pub clamped: Option<Limit>,
    /// The size the policy wants now (after the limits, before the cooldown).
    pub desired: u32,
    /// Whether a cooldown kept the current size instead of `desired`.
    pub cooldown_held: bool,
    /// The current size the plan knew, if any.
    pub current: Option<u32>,
    /// The triggers holding now: `source_lag`, `freshness_p99`, `critical_alerts`, `storm`.
    pub triggers: Vec<String>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} processes: {}", self.processes, self.reason)
    }
}

/// The desired process count for `region` at `at`, and why. Pure: reads only
/// its arguments. See the module docs for the rules.
pub fn plan(policy: &Policy, at: DateTime<Utc>, region: &str, signals: &Signals) -> Result<Decision, ScaleError> {
    let bad = |message: String| ScaleError::Policy { origin: "policy".into(), message };
    policy.validate().map_err(bad)?;
    let calendar = policy.regions.get(region).ok_or_else(|| ScaleError::UnknownRegion {
        region: region.to_string(),
        known: policy.regions.keys().cloned().collect(),
    })?;
    let month = at.month();
    let season =
        calendar.season(month).ok_or_else(|| bad(format!("regions.{region}: month {month} is in no season")))?;
    let m = &policy.multipliers;
    let mut parts = vec![format!(
        "{region} is in its {season} season ({} UTC, ×{})",
        MONTHS[month as usize - 1],
        num(m.of(season))
    )];

    // Season and pre-warm.
    let mut rule = Rule::Season;
    let mut sized_for = season.name().to_string();
    let mut multiplier = m.of(season);
    if let Some((next, starts)) = prewarm(calendar, m, at, minutes(policy.cooldown.prewarm_minutes), season) {
        rule = Rule::Prewarm;
        sized_for = next.name().to_string();
        multiplier = m.of(next);
        parts.push(format!(
            "pre-warming for the {next} season (×{}), which starts {} in {} (lead time {} min)",
            num(multiplier),
            hhmm(starts),
            span(starts - at),
            policy.cooldown.prewarm_minutes
        ));
    }

    // Emergency.
    let e = &policy.emergency;
    let mut triggers: Vec<(&str, String)> = Vec::new();
    let held = e.sustained_minutes;
    let metric = [
        ("source_lag", signals.source_lag, e.source_lag_messages, "source lag", " messages"),
        ("freshness_p99", signals.freshness_p99, e.freshness_p99_seconds, "freshness p99", " s"),
        ("critical_alerts", signals.critical_alerts_per_minute, e.critical_alerts_per_minute, "tree alerts", "/min"),
    ];
    for (name, value, threshold, label, unit) in metric {
        if let Some(v) = value {
            if threshold > 0.0 && v > threshold {
                triggers
                    .push((name, format!("{label} {}{unit} above {}{unit} for {held} min", num(v), num(threshold))));
            }
        }
    }
    if signals.storm {
        triggers.push(("storm", "the storm flag is set".to_string()));
    }
    let exit_after = minutes(e.exit_after_minutes);
    let hold_since =
        if triggers.is_empty() { signals.trigger_last_held.filter(|t| at - *t < exit_after) } else { None };
    let emergency = !triggers.is_empty() || hold_since.is_some();
    if emergency {
        let why = match hold_since {
            None => triggers.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>().join(" and "),
            Some(t) => format!(
                "no trigger holds now, but one held at {} ({} ago) and the emergency ends {} min after",
                hhmm(t),
                span(at - t),
                e.exit_after_minutes
            ),
        };
        if m.emergency > multiplier {
            rule = if hold_since.is_some() { Rule::EmergencyHold } else { Rule::Emergency };
            sized_for = "emergency".to_string();
            multiplier = m.emergency;
            parts.push(format!("emergency (×{}): {why}", num(m.emergency)));
        } else {
            parts.push(format!("emergency: {why}, but ×{} is not above the {sized_for} size", num(m.emergency)));
        }
    }

    // Size and limits.
    let computed = ceil_processes(policy.base, multiplier);
    let mut desired = computed;
    let mut clamped = None;
    let mut size = format!("ceil({} × {}) = {computed}", policy.base, num(multiplier));
    if computed > policy.max {
        desired = policy.max;
        clamped = Some(Limit::Max);
        size.push_str(&format!(", lowered to the policy's max of {}", policy.max));
    } else if computed < policy.min {
        desired = policy.min;
        clamped = Some(Limit::Min);
        size.push_str(&format!(", raised to the policy's min of {}", policy.min));
    }
    parts.push(size);

    // Cooldown.
    let mut processes = desired;
    let mut cooldown_held = false;
    if let Some(current) = signals.current {
        if current == desired {
            parts.push(format!("already running {current}"));
        } else {
            let (direction, wait) = if desired < current {
                ("scale-in", policy.cooldown.after_scale_in_minutes)
            } else {
                ("scale-out", policy.cooldown.after_scale_out_minutes)
            };
            let within_limits = (policy.min..=policy.max).contains(&current);
            match signals.last_change {
                _ if desired > current && emergency => {
                    parts.push(format!("scale-out from {current} at once (no cooldown in an emergency)"))
                }
                Some(last) if within_limits && at - last < minutes(wait) => {
                    processes = current;
                    cooldown_held = true;
                    parts.push(format!(
                        "the {direction} cooldown holds {current} processes until {} (last change {} ago; \
                         {direction} waits {wait} min after a change)",
                        hhmm(last + minutes(wait)),
                        span(at - last)
                    ));
                }
                Some(last) => parts.push(format!("{direction} from {current} (last change {} ago)", span(at - last))),
                None => parts.push(format!("{direction} from {current}")),
            }
        }
    }

    let mut reason = parts.join("; ");
    reason.push('.');
    Ok(Decision {
        processes,
        season,
        emergency,
        reason,
        region: region.to_string(),
        at: rfc3339(at),
        rule,
        sized_for,
        multiplier,
        computed,
        clamped,
        desired,
        cooldown_held,
        current: signals.current,
        triggers: triggers.into_iter().map(|(n, _)| n.to_string()).collect(),
    })
}

/// `ceil(base × multiplier)`, ignoring floating-point noise below 1e-6
/// (10 × 0.3 is 3, not 4).
fn ceil_processes(base: u32, multiplier: f64) -> u32 {
    let x = f64::from(base) * multiplier;
    let x = (x * 1e6).round() / 1e6;
    let c = x.ceil();
    if c >= f64::from(u32::MAX) {
        u32::MAX
    } else if c <= 0.0 {
        0
    } else {
        c as u32
    }
}

/// The season with the largest multiplier (above `now`'s) starting in `(at, at + lead]`.
fn prewarm(
    calendar: &Calendar,
    m: &Multipliers,
    at: DateTime<Utc>,
    lead: TimeDelta,
    now: Season,
) -> Option<(Season, DateTime<Utc>)> {
    let horizon = at + lead;
    let mut best: Option<(Season, DateTime<Utc>)> = None;
    let mut best_mult = m.of(now);
    let mut start = next_month_start(at)?;
    // Twelve boundaries see every season; a longer lead adds nothing.
    for _ in 0..12 {
        if start > horizon {
            break;
        }
        if let Some(s) = calendar.season(start.month()) {
            if m.of(s) > best_mult {
                best_mult = m.of(s);
                best = Some((s, start));
            }
        }
        start = next_month_start(start)?;
    }
    best
}

fn next_month_start(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
    Some(NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?.and_utc())
}

fn minutes(m: u32) -> TimeDelta {
    TimeDelta::minutes(i64::from(m))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn hhmm(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A duration for people: `2 h 5 min`, `45 min`, `3 d 4 h`, `under a minute`.
fn span(d: TimeDelta) -> String {
    let m = d.num_minutes().max(0);
    match m {
        0 => "under a minute".to_string(),
        1..=59 => format!("{m} min"),
        60..=1439 if m % 60 == 0 => format!("{} h", m / 60),
        60..=1439 => format!("{} h {} min", m / 60, m % 60),
        _ if m % 1440 / 60 == 0 => format!("{} d", m / 1440),
        _ => format!("{} d {} h", m / 1440, m % 1440 / 60),
    }
}

/// A number for people: `1000000`, `0.3`, `75.5`, `+Inf`.
fn num(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

/// A value the plan reads from Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Total source lag, lowest over the sustained window.
    SourceLag,
    /// Freshness p99, lowest over the sustained window.
    FreshnessP99,
    /// Tree alerts per minute, lowest over the sustained window.
    CriticalAlerts,
    /// The last time the source lag trigger held, within the exit window (a Unix time).
    SourceLagLastHeld,
    /// The last time the freshness trigger held, within the exit window.
    FreshnessLastHeld,
    /// The last time the alerts trigger held, within the exit window.
    CriticalAlertsLastHeld,
}

impl Signal {
    /// The signal's name in messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Signal::SourceLag => "source_lag",
            Signal::FreshnessP99 => "freshness_p99",
            Signal::CriticalAlerts => "critical_alerts",
            Signal::SourceLagLastHeld => "source_lag_last_held",
            Signal::FreshnessLastHeld => "freshness_last_held",
            Signal::CriticalAlertsLastHeld => "critical_alerts_last_held",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The instant queries (PromQL) to send to `<URL>/api/v1/query` for the
/// emergency triggers the policy has on; `namespace` (the region's, e.g.
/// `treeai-us-east`) keeps another cluster's series — a DR drill's, say — out.
///
/// Each trigger has two: its value held over the sustained window
/// (`min_over_time` of a subquery at 15 s, Prometheus' scrape interval), and
/// the last time that held value was above the threshold within the exit
/// window (a Unix time; no data when it never was). No queries for a trigger
/// whose threshold is 0; no "last held" query when `exit_after_minutes` is 0.
pub fn prometheus_queries(policy: &Policy, namespace: Option<&str>) -> Vec<(Signal, String)> {
    let sel = match namespace {
        Some(ns) => format!("{{namespace=\"{}\"}}", ns.replace('\\', "\\\\").replace('"', "\\\"")),
        None => String::new(),
    };
    let e = &policy.emergency;
    let metrics = [
        (Signal::SourceLag, Signal::SourceLagLastHeld, e.source_lag_messages, format!("sum(treeai_source_lag{sel})")),
        (
            Signal::FreshnessP99,
            Signal::FreshnessLastHeld,
            e.freshness_p99_seconds,
            format!("histogram_quantile(0.99, sum by (le) (rate(treeai_freshness_seconds_bucket{sel}[1m])))"),
        ),
        (
            Signal::CriticalAlerts,
            Signal::CriticalAlertsLastHeld,
            e.critical_alerts_per_minute,
            format!("sum(rate(treeai_alerts_total{sel}[1m])) * 60"),
        ),
    ];
    let mut out = Vec::new();
    for (value, last_held, threshold, expr) in metrics {
        if threshold <= 0.0 {
            continue;
        }
        let sustained = format!("min_over_time(({expr})[{}m:15s])", e.sustained_minutes);
        if e.exit_after_minutes > 0 {
            out.push((
                last_held,
                format!("max_over_time(timestamp({sustained} > {})[{}m:1m])", num(threshold), e.exit_after_minutes),
            ));
        }
        out.push((value, sustained));
    }
    out.sort_by_key(|(s, _)| *s);
    out
}

/// The URL of an instant query: `<base>/api/v1/query?query=<encoded>[&time=<unix>]`.
/// Pass the plan's time so a plan for the past reads the metrics of then.
pub fn prometheus_query_url(base: &str, query: &str, at: Option<DateTime<Utc>>) -> String {
    let mut url = format!("{}/api/v1/query?query={}", base.trim_end_matches('/'), percent_encode(query));
    if let Some(t) = at {
        url.push_str(&format!("&time={}", t.timestamp()));
    }
    url
}

/// Reads the answers of Prometheus' HTTP API (`/api/v1/query`) to
/// [`prometheus_queries`]. An empty result (or NaN) is no data: no trigger.
/// Several series: the largest value counts. `current`, `last_change` and
/// `storm` stay unset; merge them in with [`Signals::merge`].
pub fn signals_from_prometheus(answers: &[(Signal, Value)]) -> Result<Signals, ScaleError> {
    let mut s = Signals::default();
    for (signal, answer) in answers {
        let value =
            instant_value(answer).map_err(|message| ScaleError::Prometheus { signal: signal.name(), message })?;
        match signal {
            Signal::SourceLag => s.source_lag = value,
            Signal::FreshnessP99 => s.freshness_p99 = value,
            Signal::CriticalAlerts => s.critical_alerts_per_minute = value,
            Signal::SourceLagLastHeld | Signal::FreshnessLastHeld | Signal::CriticalAlertsLastHeld => {
                let Some(secs) = value.filter(|v| v.is_finite()) else { continue };
                let t = DateTime::from_timestamp(secs.floor() as i64, 0).ok_or_else(|| ScaleError::Prometheus {
                    signal: signal.name(),
                    message: format!("{secs} is not a time"),
                })?;
                s.trigger_last_held = Some(s.trigger_last_held.map_or(t, |old| old.max(t)));
            }
        }
    }
    Ok(s)
}

/// The value of an instant query's answer: `None` for no data.
fn instant_value(answer: &Value) -> Result<Option<f64>, String> {
    match answer.get("status").and_then(Value::as_str) {
        Some("success") => {}
        Some(status) => {
            let kind = answer.get("errorType").and_then(Value::as_str).unwrap_or("error");
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("no message");
            return Err(format!("status {status}: {kind}: {error}"));
        }
        None => return Err("not a Prometheus API answer (no `status`)".into()),
    }
    let data = answer.get("data").ok_or("no `data`")?;
    let sample = |v: &Value| -> Result<f64, String> {
        let text = v.get(1).and_then(Value::as_str).ok_or_else(|| format!("a sample is not [time, \"value\"]: {v}"))?;
        text.parse::<f64>().map_err(|_| format!("`{text}` is not a number"))
    };
    let values: Vec<f64> = match data.get("resultType").and_then(Value::as_str) {
        Some("vector") => {
            let result = data.get("result").and_then(Value::as_array).ok_or("no `data.result` list")?;
            result.iter().map(|series| sample(series.get("value").unwrap_or(&Value::Null))).collect::<Result<_, _>>()?
        }
        Some("scalar") => vec![sample(data.get("result").unwrap_or(&Value::Null))?],
        Some(other) => return Err(format!("expected an instant vector, got a {other}")),
        None => return Err("no `data.resultType`".into()),
    };
    Ok(values.into_iter().filter(|v| !v.is_nan()).reduce(f64::max))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Apply
// ---------------------------------------------------------------------------

/// Where `apply` acts: the region's namespace, its StatefulSet and the pipeline's HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyTarget {
    /// The region's namespace (`treeai-us-east`, ...).
    pub namespace: String,
    /// The pipeline's StatefulSet (`treeai`).
    pub statefulset: String,
    /// The pipeline's HTTP base URL for the admin calls (`http://treeai:8080`, the `treeai` Service).
    pub admin_url: String,
    /// The Kubernetes API server (`https://kubernetes.default.svc` in a pod).
    pub kube_api: String,
    /// The pipeline's container in the pod template (`treeai`).
    pub container: String,
    /// The headless Service giving the processes their DNS names (`treeai-peers`).
    pub peers_service: String,
    /// Timely's port between processes (2101).
    pub peer_port: u16,
    /// Label selector of the pipeline's pods (the StatefulSet's selector).
    pub pod_selector: String,
}

impl ApplyTarget {
    /// A target with deploy/'s names for the rest: container `treeai`, peers
    /// Service `treeai-peers`, port 2101, the pipeline's pod labels.
    pub fn new(namespace: &str, statefulset: &str, admin_url: &str, kube_api: &str) -> ApplyTarget {
        ApplyTarget {
            namespace: namespace.to_string(),
            statefulset: statefulset.to_string(),
            admin_url: admin_url.trim_end_matches('/').to_string(),
            kube_api: kube_api.trim_end_matches('/').to_string(),
            container: "treeai".to_string(),
            peers_service: "treeai-peers".to_string(),
            peer_port: 2101,
            pod_selector: "app.kubernetes.io/name=treeai,app.kubernetes.io/component=pipeline".to_string(),
        }
    }

    /// The StatefulSet's URL on the API server, as kube-rs builds a GET of it.
    pub fn statefulset_url(&self) -> String {
        self.kube_url(kube_request::<StatefulSet>(&self.namespace).get(&self.statefulset, &GetParams::default()))
    }

    /// The URL of a strategic-merge PATCH of the StatefulSet, as kube-rs builds it.
    pub fn statefulset_patch_url(&self, body: &Value) -> String {
        self.kube_url(kube_request::<StatefulSet>(&self.namespace).patch(
            &self.statefulset,
            &PatchParams::default(),
            &Patch::Strategic(body),
        ))
    }

    /// The URL of the list of the pipeline's pods (by [`ApplyTarget::pod_selector`]), as kube-rs
    /// builds it.
    pub fn pods_url(&self) -> String {
        self.kube_url(kube_request::<Pod>(&self.namespace).list(&ListParams::default().labels(&self.pod_selector)))
    }

    /// `kube_api` + the path and query of a request built by kube-rs (the very builder its `Api`
    /// calls use, so `--dry-run` prints what `apply` sends), its empty parts dropped: kube
    /// sends `statefulsets/treeai?` and `pods?&labelSelector=…`, the same requests as
    /// `statefulsets/treeai` and `pods?labelSelector=…`.
    fn kube_url(&self, request: Result<http::Request<Vec<u8>>, kube::core::request::Error>) -> String {
        match request {
            Ok(r) => {
                let uri = r.uri().to_string();
                format!("{}{}", self.kube_api, uri.trim_end_matches('?').replacen("?&", "?", 1))
            }
            Err(e) => format!("{}/<not a valid request: {e}>", self.kube_api),
        }
    }

    /// `TREEAI_PEERS` as one pattern for any number of processes (`treeai run` expands `{i}`):
    /// `treeai-{i}.treeai-peers:2101`. What `apply` sets, so only the size changes.
    pub fn peers_pattern(&self) -> String {
        format!("{}-{{i}}.{}:{}", self.statefulset, self.peers_service, self.peer_port)
    }

    /// `TREEAI_PEERS` listed for `n` processes: `treeai-0.treeai-peers:2101,...`.
    pub fn peers(&self, n: u32) -> String {
        (0..n)
            .map(|i| format!("{}-{i}.{}:{}", self.statefulset, self.peers_service, self.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Which API a step calls, and so which credentials it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// The Kubernetes API server: the pod's service account token and CA.
    Kubernetes,
    /// The pipeline's HTTP endpoint: `Authorization: Bearer <admin token>`.
    Pipeline,
}

/// What a step is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// `POST /v1/admin/checkpoint`: a checkpoint, answered once durable.
    Checkpoint,
    /// Scale the StatefulSet to 0: every process drains and exits.
    Stop,
    /// Wait until no pipeline pod is left.
    WaitStopped,
    /// Set the new size everywhere: all pods start together and restore.
    Start,
    /// Wait until the StatefulSet reports every process ready.
    WaitReady,
    /// `GET /readyz` through the Service.
    CheckReady,
}

/// For a wait: the GET is repeated until this holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// The pod list (`items`) is empty.
    NoPods,
    /// `spec.replicas` and `status.readyReplicas` are both this (and the status is current).
    ReadyReplicas(u32),
    /// The answer is 200.
    Http200,
}

/// One API call of `apply`. `Display` is the `--dry-run` line: method, URL, JSON body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// What the step is for.
    pub kind: StepKind,
    /// Which API (and credentials).
    pub api: Api,
    /// `GET`, `POST` or `PATCH`.
    pub method: &'static str,
    /// The full URL.
    pub url: String,
    /// The body's content type, if it has a body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<&'static str>,
    /// The JSON body, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// For a wait: repeat the GET (every few seconds, within the job's deadline) until this holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Until>,
}

impl Step {
    /// Whether the answer (`status`, and the body as JSON or `Null`) completes
    /// this step: a 2xx for a call; the condition for a wait. A call that
    /// fails should stop `apply` (the next run starts over from the state it finds).
    pub fn done(&self, status: u16, body: &Value) -> bool {
        match self.until {
            None => (200..300).contains(&status),
            Some(Until::Http200) => status == 200,
            Some(Until::NoPods) => {
                status == 200 && body.get("items").and_then(Value::as_array).is_some_and(|items| items.is_empty())
            }
            Some(Until::ReadyReplicas(n)) => {
                let get = |path: &[&str]| path.iter().try_fold(body, |v, k| v.get(*k)).and_then(Value::as_u64);
                let current = match (get(&["status", "observedGeneration"]), get(&["metadata", "generation"])) {
                    (Some(seen), Some(generation)) => seen >= generation,
                    _ => true,
                };
                status == 200
                    && current
                    && get(&["spec", "replicas"]) == Some(u64::from(n))
                    && get(&["status", "readyReplicas"]).unwrap_or(0) == u64::from(n)
            }
        }
    }

    fn comment(&self) -> String {
        match (self.kind, self.until) {
            (StepKind::Checkpoint, _) => "checkpoint; answers once durable".into(),
            (StepKind::Stop, _) => "stop every process (final checkpoint, exit 0)".into(),
            (StepKind::WaitStopped, _) => "repeat until no pipeline pod is left".into(),
            (StepKind::Start, _) => "start all processes at the new size; they restore and re-shard".into(),
            (StepKind::WaitReady, Some(Until::ReadyReplicas(n))) => {
                format!("repeat until spec.replicas and status.readyReplicas are {n}")
            }
            (StepKind::WaitReady, _) => "repeat until ready".into(),
            (StepKind::CheckReady, _) => "repeat until 200: restored and caught up".into(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)?;
        if let Some(body) = &self.body {
            write!(f, " {body}")?;
        }
        write!(f, "  # {}", self.comment())
    }
}

/// The API calls that take the cluster from `current` processes to
/// `decision.processes` (see the module docs, "Apply"). Empty when the size
/// does not change. From 0 processes there is nothing to checkpoint or stop.
pub fn apply_steps(decision: &Decision, current: u32, cluster: &ApplyTarget) -> Vec<Step> {
    let n = decision.processes;
    if n == current {
        return Vec::new();
    }
    let mut steps = Vec::new();
    if current > 0 {
        steps.push(Step {
            kind: StepKind::Checkpoint,
            api: Api::Pipeline,
            method: "POST",
            url: format!("{}/v1/admin/checkpoint", cluster.admin_url),
            content_type: None,
            body: None,
            until: None,
        });
        let body = json!({
            "metadata": {"annotations": {ANNOTATION_SCALING_TO: n.to_string()}},
            "spec": {"replicas": 0},
        });
        steps.push(Step {
            kind: StepKind::Stop,
            api: Api::Kubernetes,
            method: "PATCH",
            url: cluster.statefulset_patch_url(&body),
            content_type: Some(STRATEGIC_MERGE),
            body: Some(body),
            until: None,
        });
        steps.push(Step {
            kind: StepKind::WaitStopped,
            api: Api::Kubernetes,
            method: "GET",
            url: cluster.pods_url(),
            content_type: None,
            body: None,
            until: Some(Until::NoPods),
        });
    }
    let mut spec = json!({"replicas": n});
    if n > 0 {
        spec["template"] = json!({"spec": {"containers": [{
            "name": cluster.container,
            "env": [
                {"name": "TREEAI_PROCESSES", "value": n.to_string()},
                {"name": "TREEAI_PEERS", "value": cluster.peers_pattern()},
            ],
        }]}});
    }
    let body = json!({
        "metadata": {"annotations": {
            ANNOTATION_SCALED_AT: decision.at,
            ANNOTATION_SCALED_TO: n.to_string(),
            ANNOTATION_SCALE_REASON: decision.reason,
            ANNOTATION_SCALING_TO: null,
        }},
        "spec": spec,
    });
    steps.push(Step {
        kind: StepKind::Start,
        api: Api::Kubernetes,
        method: "PATCH",
        url: cluster.statefulset_patch_url(&body),
        content_type: Some(STRATEGIC_MERGE),
        body: Some(body),
        until: None,
    });
    if n > 0 {
        steps.push(Step {
            kind: StepKind::WaitReady,
            api: Api::Kubernetes,
            method: "GET",
            url: cluster.statefulset_url(),
            content_type: None,
            body: None,
            until: Some(Until::ReadyReplicas(n)),
        });
        steps.push(Step {
            kind: StepKind::CheckReady,
            api: Api::Pipeline,
            method: "GET",
            url: format!("{}/readyz", cluster.admin_url),
            content_type: None,
            body: None,
            until: Some(Until::Http200),
        });
    }
    steps
}

/// What `treeai scale apply --dry-run` prints: the decision, then one line per
/// API call, or that nothing changes.
pub fn dry_run_text(decision: &Decision, current: u32, steps: &[Step]) -> String {
    if steps.is_empty() {
        return format!("no change: {} runs {current} processes, as planned ({})\n", decision.region, decision.reason);
    }
    let mut out = format!("{} → {} processes: {}\n", current, decision.processes, decision.reason);
    for (i, step) in steps.iter().enumerate() {
        out.push_str(&format!("{}. {step}\n", i + 1));
    }
    out
}

/// What `apply` reads from the StatefulSet (`GET` of [`ApplyTarget::statefulset_url`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StatefulSetState {
    /// `spec.replicas` (Kubernetes' default 1 when absent).
    pub replicas: u32,
    /// The container's `TREEAI_PROCESSES`, if set as a number.
    pub processes_env: Option<u32>,
    /// The container's `TREEAI_PEERS`, if set.
    pub peers_env: Option<String>,
    /// `status.readyReplicas` (0 when absent).
    pub ready_replicas: u32,
    /// The `treeai.io/scaled-at` annotation: the last change.
    pub last_change: Option<DateTime<Utc>>,
    /// The `treeai.io/storm` annotation is `"true"`.
    pub storm: bool,
    /// The `treeai.io/dr-twin-of` annotation: this is the DR twin of that region.
    pub dr_twin_of: Option<String>,
    /// The `treeai.io/scaling-to` annotation: a resize to this size was started and not finished.
    pub scaling_to: Option<u32>,
}

impl StatefulSetState {
    /// Reads the StatefulSet's JSON (as the API server returns it).
    pub fn from_json(sts: &Value, target: &ApplyTarget) -> Result<StatefulSetState, ScaleError> {
        let bad = |m: String| ScaleError::StatefulSet(m);
        if sts.get("kind").and_then(Value::as_str).is_some_and(|k| k != "StatefulSet") {
            return Err(bad(format!("not a StatefulSet: kind {}", sts["kind"])));
        }
        let count = |v: Option<&Value>, name: &str, default: u32| -> Result<u32, ScaleError> {
            match v {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(format!("{name} is {v}"))),
            }
        };
        let replicas = count(sts.pointer("/spec/replicas"), "spec.replicas", 1)?;
        let ready_replicas = count(sts.pointer("/status/readyReplicas"), "status.readyReplicas", 0)?;
        let container = sts
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(&target.container)))
            .ok_or_else(|| bad(format!("no container `{}` in the pod template", target.container)))?;
        let env = |name: &str| -> Option<String> {
            container
                .get("env")?
                .as_array()?
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
                .get("value")?
                .as_str()
                .map(str::to_string)
        };
        let annotation =
            |key: &str| sts.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str);
        let last_change = match annotation(ANNOTATION_SCALED_AT) {
            None => None,
            Some(text) => Some(
                DateTime::parse_from_rfc3339(text)
                    .map_err(|e| bad(format!("annotation {ANNOTATION_SCALED_AT} `{text}`: {e}")))?
                    .with_timezone(&Utc),
            ),
        };
        Ok(StatefulSetState {
            replicas,
            processes_env: env("TREEAI_PROCESSES").and_then(|v| v.trim().parse().ok()),
            peers_env: env("TREEAI_PEERS"),
            ready_replicas,
            last_change,
            storm: annotation(ANNOTATION_STORM).is_some_and(|v| v.eq_ignore_ascii_case("true")),
            dr_twin_of: annotation(ANNOTATION_DR_TWIN_OF).map(str::to_string),
            scaling_to: annotation(ANNOTATION_SCALING_TO).and_then(|v| v.trim().parse().ok()),
        })
    }

    /// The StatefulSet's part of the signals: current size, last change, storm flag.
    pub fn signals(&self) -> Signals {
        Signals { current: Some(self.replicas), last_change: self.last_change, storm: self.storm, ..Signals::default() }
    }

    /// Why `apply` must not act on this StatefulSet, if so; it should stop
    /// with this message rather than guess:
    /// - a DR standby (0 replicas, `treeai.io/dr-twin-of`, no resize under
    ///   way): a failover starts it by hand (deploy/README.md, "Failover"), and
    ///   the scaler sizes it from then on;
    /// - `replicas`, `TREEAI_PROCESSES` and `TREEAI_PEERS` disagree (a hand
    ///   edit): the pods could not form one cluster. With 0 replicas the
    ///   environment keeps the size to start with, which is fine.
    ///
    /// 0 replicas after an interrupted resize (`treeai.io/scaling-to` set) is
    /// no problem: `apply` starts the cluster at the planned size.
    pub fn problem(&self, target: &ApplyTarget) -> Option<String> {
        if self.replicas == 0 {
            return match &self.dr_twin_of {
                Some(primary) if self.scaling_to.is_none() => Some(format!(
                    "a DR standby of {primary} with 0 processes: start it by hand for a failover, then the \
                     scaler sizes it"
                )),
                _ => None,
            };
        }
        if self.processes_env != Some(self.replicas) {
            return Some(format!(
                "spec.replicas is {} but TREEAI_PROCESSES is {}",
                self.replicas,
                self.processes_env.map_or("not a number".to_string(), |p| p.to_string())
            ));
        }
        let want = target.peers(self.replicas);
        match &self.peers_env {
            Some(p) if *p == want || *p == target.peers_pattern() => None,
            Some(p) => Some(format!("TREEAI_PEERS is `{p}`, not `{want}`")),
            None => Some("TREEAI_PEERS is not set".to_string()),
        }
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// `treeai scale plan`: the desired process count of a region at a time, and why.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The moment to plan for, RFC 3339 (e.g. 2025-03-01T00:00:00Z). Seasons change on the 1st
    /// of a month at 00:00 UTC. Default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,
    /// The region whose calendar applies: us-east, eu-west, ap-southeast, or a DR twin (us-west,
    /// eu-central, ap-northeast: its primary's calendar); with --policy, the regions it lists.
    #[arg(long, value_name = "R", env = "TREEAI_SCALE_REGION")]
    pub region: String,
    /// The policy file (TOML): base size, min, max, multipliers, emergency triggers, cooldowns,
    /// pre-warm, calendars (deploy/base/scale-policy.toml). Default: the built-in seed policy
    /// (base 4, min 1, max 20; peak ×2, moderate ×1, low ×0.3, emergency ×5).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Prometheus base URL (e.g. http://prometheus.monitoring.svc:9090) to read the emergency
    /// triggers from: source lag, freshness p99, tree alerts. Without it no metric trigger fires.
    #[arg(long, value_name = "URL", env = "TREEAI_SCALE_METRICS")]
    pub metrics: Option<String>,
    /// The region's Kubernetes namespace: the metrics are those of its pods, and apply resizes
    /// the StatefulSet in it. Default: treeai-<region>.
    #[arg(long, value_name = "NS", env = "TREEAI_SCALE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Print one JSON object {"processes": N, "season": "...", "emergency": bool, "reason": "...",
    /// ...} instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// The processes running now, for the cooldowns (apply reads the StatefulSet's replicas).
    #[arg(long, value_name = "N")]
    pub current: Option<u32>,
    /// When the size last changed, RFC 3339, for the cooldowns (apply reads the StatefulSet's
    /// treeai.io/scaled-at annotation).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub last_change: Option<DateTime<Utc>>,
    /// A storm is on: the emergency size, as long as the flag is given (apply also honours the
    /// StatefulSet annotation treeai.io/storm=true).
    #[arg(long)]
    pub storm: bool,
}

impl PlanArgs {
    /// `--at`, or now.
    pub fn at(&self) -> DateTime<Utc> {
        self.at.unwrap_or_else(|| DateTime::<Utc>::from(std::time::SystemTime::now()))
    }

    /// `--namespace`, or `treeai-<region>` (deploy/overlays' names).
    pub fn namespace(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| format!("treeai-{}", self.region))
    }

    /// The policy of `--policy`, or the seed's.
    pub fn load_policy(&self) -> Result<Policy, ScaleError> {
        match &self.policy {
            Some(path) => Policy::load(path),
            None => Ok(Policy::default()),
        }
    }

    /// The signals given as flags: `--current`, `--last-change`, `--storm`.
    pub fn signals(&self) -> Signals {
        Signals { current: self.current, last_change: self.last_change, storm: self.storm, ..Signals::default() }
    }
}

/// `treeai scale apply`: make the planned size so on Kubernetes.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Print the API calls (one line each: method, URL, JSON body) instead of making them.
    #[arg(long)]
    pub dry_run: bool,
    /// The pipeline's StatefulSet in the namespace.
    #[arg(long, value_name = "NAME", default_value = "treeai")]
    pub statefulset: String,
    /// The pipeline's HTTP endpoint for POST /v1/admin/checkpoint and GET /readyz (the `treeai`
    /// Service in the namespace).
    #[arg(long, value_name = "URL", env = "TREEAI_SCALE_ADMIN_URL", default_value = "http://treeai:8080")]
    pub admin_url: String,
    /// Bearer token of an `admin` user (treeai auth add-token --role admin) for the checkpoint
    /// call; the CronJob takes it from the treeai-scaler Secret.
    #[arg(long, value_name = "TOKEN", env = "TREEAI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An API server that needs no credentials of ours, such as `kubectl proxy`'s
    /// `http://127.0.0.1:8001`. Without it, kube-rs finds the cluster as kubectl does: the
    /// kubeconfig (`KUBECONFIG` or `~/.kube/config`: current context, auth plugins), else in a pod
    /// its service account (token and CA). `--dry-run` prints URLs on this server, or on
    /// `https://kubernetes.default.svc`.
    #[arg(long, value_name = "URL", env = "TREEAI_SCALE_KUBE_API")]
    pub kube_api: Option<String>,
}

/// The API server's address in a pod, which `--dry-run` prints when `--kube-api` is not given.
pub const IN_CLUSTER_API: &str = "https://kubernetes.default.svc";

impl ApplyArgs {
    /// Where to act, from the flags.
    pub fn target(&self) -> ApplyTarget {
        let api = self.kube_api.as_deref().unwrap_or(IN_CLUSTER_API);
        ApplyTarget::new(&self.plan.namespace(), &self.statefulset, &self.admin_url, api)
    }
}

/// Parses an RFC 3339 time (`2025-03-01T00:00:00Z`, `2025-03-01T01:00:00+01:00`) to UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time such as 2025-03-01T00:00:00Z: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn no_prewarm() -> Policy {
        let mut p = Policy::default();
        p.cooldown.prewarm_minutes = 0;
        p
    }

    fn plan_at(policy: &Policy, at: &str, region: &str, signals: &Signals) -> Decision {
        plan(policy, t(at), region, signals).unwrap()
    }

    #[test]
    fn every_month_in_both_hemispheres() {
        use Season::*;
        // month, us-east season, us-east processes, ap-southeast season, ap-southeast processes
        let table = [
            (1, Low, 2, Peak, 8),
            (2, Low, 2, Peak, 8),
            (3, Peak, 8, Moderate, 4),
            (4, Peak, 8, Moderate, 4),
            (5, Peak, 8, Moderate, 4),
            (6, Peak, 8, Low, 2),
            (7, Peak, 8, Low, 2),
            (8, Peak, 8, Low, 2),
            (9, Moderate, 4, Peak, 8),
            (10, Moderate, 4, Peak, 8),
            (11, Moderate, 4, Peak, 8),
            (12, Low, 2, Peak, 8),
        ];
        let p = Policy::default();
        for (month, north, north_n, south, south_n) in table {
            let at = format!("2025-{month:02}-15T12:00:00Z");
            let d = plan_at(&p, &at, "us-east", &Signals::default());
            assert_eq!((d.season, d.processes, d.emergency), (north, north_n, false), "us-east {at}");
            assert_eq!(d.sized_for, north.name());
            assert_eq!(d.rule, Rule::Season);
            let d = plan_at(&p, &at, "eu-west", &Signals::default());
            assert_eq!((d.season, d.processes), (north, north_n), "eu-west {at}");
            let d = plan_at(&p, &at, "ap-southeast", &Signals::default());
            assert_eq!((d.season, d.processes), (south, south_n), "ap-southeast {at}");
        }
    }

    #[test]
    fn dr_twins_inherit_their_primary_calendar() {
        let p = Policy::default();
        for (twin, primary) in DR_TWINS {
            assert_eq!(p.regions[twin], p.regions[primary], "{twin}");
            for month in 1..=12 {
                let at = format!("2025-{month:02}-10T00:00:00Z");
                let a = plan_at(&p, &at, twin, &Signals::default());
                let b = plan_at(&p, &at, primary, &Signals::default());
                assert_eq!((a.season, a.processes), (b.season, b.processes), "{twin} vs {primary} {at}");
            }
        }
        let d = plan_at(&p, "2025-07-01T00:00:00Z", "ap-northeast", &Signals::default());
        assert_eq!((d.season, d.processes), (Season::Low, 2));
        let d = plan_at(&p, "2025-07-01T00:00:00Z", "us-west", &Signals::default());
        assert_eq!((d.season, d.processes), (Season::Peak, 8));
    }

    #[test]
    fn month_boundaries_are_utc() {
        let p = no_prewarm();
        let table = [
            ("2025-02-28T23:59:59Z", "us-east", Season::Low, 2),
            ("2025-03-01T00:00:00Z", "us-east", Season::Peak, 8),
            ("2024-02-29T23:59:59Z", "us-east", Season::Low, 2),
            ("2024-03-01T00:00:00Z", "us-east", Season::Peak, 8),
            // 00:30 on 1 March in UTC+1 is still February in UTC.
            ("2025-03-01T00:30:00+01:00", "us-east", Season::Low, 2),
            ("2025-08-31T23:59:59Z", "ap-southeast", Season::Low, 2),
            ("2025-09-01T00:00:00Z", "ap-southeast", Season::Peak, 8),
            ("2025-08-31T23:59:59Z", "us-east", Season::Peak, 8),
            ("2025-09-01T00:00:00Z", "us-east", Season::Moderate, 4),
            ("2025-12-31T23:59:59Z", "ap-southeast", Season::Peak, 8),
            ("2026-01-01T00:00:00Z", "ap-southeast", Season::Peak, 8),
        ];
        for (at, region, season, n) in table {
            let d = plan_at(&p, at, region, &Signals::default());
            assert_eq!((d.season, d.processes), (season, n), "{region} {at}");
        }
    }

    #[test]
    fn prewarm_uses_the_coming_larger_season() {
        let p = Policy::default(); // 120 minutes
        let table = [
            // at, region, season in effect, processes, rule
            ("2025-02-28T21:59:59Z", "us-east", Season::Low, 2, Rule::Season),
            ("2025-02-28T22:00:00Z", "us-east", Season::Low, 8, Rule::Prewarm),
            ("2025-02-28T23:59:59Z", "us-east", Season::Low, 8, Rule::Prewarm),
            ("2025-11-30T23:00:00Z", "us-east", Season::Moderate, 4, Rule::Season), // low next: not anticipated
            ("2025-08-31T23:00:00Z", "us-east", Season::Peak, 8, Rule::Season),     // moderate next
            ("2025-08-31T23:00:00Z", "ap-southeast", Season::Low, 8, Rule::Prewarm),
            ("2025-02-28T23:00:00Z", "ap-southeast", Season::Peak, 8, Rule::Season), // moderate next
            ("2025-05-31T23:00:00Z", "ap-southeast", Season::Moderate, 4, Rule::Season), // low next
        ];
        for (at, region, season, n, rule) in table {
            let d = plan_at(&p, at, region, &Signals::default());
            assert_eq!((d.season, d.processes, d.rule), (season, n, rule), "{region} {at}: {}", d.reason);
        }
        let d = plan_at(&p, "2025-02-28T23:00:00Z", "us-east", &Signals::default());
        assert_eq!(d.sized_for, "peak");
        assert!(d.reason.contains("pre-warming for the peak season"), "{}", d.reason);
        assert!(d.reason.contains("2025-03-01 00:00 UTC in 1 h"), "{}", d.reason);

        // A lead time of 7 days.
        let mut week = Policy::default();
        week.cooldown.prewarm_minutes = 7 * 24 * 60;
        assert_eq!(plan_at(&week, "2025-02-21T23:59:59Z", "us-east", &Signals::default()).processes, 2);
        let d = plan_at(&week, "2025-02-22T00:00:00Z", "us-east", &Signals::default());
        assert_eq!((d.season, d.processes, d.rule), (Season::Low, 8, Rule::Prewarm));
        assert!(d.reason.contains("in 7 d"), "{}", d.reason);
        // Moderate → low → peak within a long lead: the largest coming season wins.
        let mut long = Policy::default();
        long.cooldown.prewarm_minutes = 100 * 24 * 60;
        let d = plan_at(&long, "2025-11-25T00:00:00Z", "us-east", &Signals::default());
        assert_eq!((d.season, d.sized_for.as_str(), d.processes), (Season::Moderate, "peak", 8));
    }

    #[test]
    fn emergency_entry() {
        let p = Policy::default();
        let at = "2025-10-15T12:00:00Z"; // us-east moderate: 4
        let table: [(Signals, &[&str]); 9] = [
            (Signals { source_lag: Some(1_500_000.0), ..Default::default() }, &["source_lag"]),
            (Signals { freshness_p99: Some(75.5), ..Default::default() }, &["freshness_p99"]),
            (Signals { critical_alerts_per_minute: Some(60.0), ..Default::default() }, &["critical_alerts"]),
            (Signals { storm: true, ..Default::default() }, &["storm"]),
            (
                Signals { freshness_p99: Some(f64::INFINITY), storm: true, ..Default::default() },
                &["freshness_p99", "storm"],
            ),
            // At or below the thresholds: nothing.
            (Signals { source_lag: Some(1_000_000.0), ..Default::default() }, &[]),
            (Signals { freshness_p99: Some(60.0), ..Default::default() }, &[]),
            (Signals { critical_alerts_per_minute: Some(50.0), ..Default::default() }, &[]),
            (Signals::default(), &[]),
        ];
        for (signals, fired) in table {
            let d = plan_at(&p, at, "us-east", &signals);
            assert_eq!(d.triggers, fired, "{signals:?}");
            if fired.is_empty() {
                assert_eq!((d.emergency, d.processes, d.rule), (false, 4, Rule::Season), "{signals:?}");
            } else {
                assert_eq!((d.emergency, d.processes, d.rule), (true, 20, Rule::Emergency), "{signals:?}");
                assert_eq!(d.sized_for, "emergency");
                assert_eq!(d.season, Season::Moderate);
            }
        }
        let d = plan_at(&p, at, "us-east", &Signals { source_lag: Some(1_500_000.0), ..Default::default() });
        assert!(d.reason.contains("source lag 1500000 messages above 1000000 messages for 3 min"), "{}", d.reason);
        assert!(d.reason.contains("ceil(4 × 5) = 20"), "{}", d.reason);

        // A threshold of 0 turns its trigger off.
        let mut off = Policy::default();
        off.emergency.source_lag_messages = 0.0;
        let d = plan_at(&off, at, "us-east", &Signals { source_lag: Some(1e12), ..Default::default() });
        assert_eq!((d.emergency, d.processes), (false, 4));
    }

    #[test]
    fn emergency_exit_waits_for_the_exit_delay() {
        let p = Policy::default(); // exit after 30 min
        let at = t("2025-10-15T12:00:00Z");
        let table = [
            (TimeDelta::zero(), true),
            (TimeDelta::minutes(10), true),
            (TimeDelta::minutes(29) + TimeDelta::seconds(59), true),
            (TimeDelta::minutes(30), false),
            (TimeDelta::hours(3), false),
        ];
        for (since, emergency) in table {
            let s = Signals { trigger_last_held: Some(at - since), source_lag: Some(10.0), ..Default::default() };
            let d = plan(&p, at, "us-east", &s).unwrap();
            assert_eq!(d.emergency, emergency, "{since}");
            assert_eq!(d.processes, if emergency { 20 } else { 4 }, "{since}");
            assert_eq!(d.rule, if emergency { Rule::EmergencyHold } else { Rule::Season });
            assert!(d.triggers.is_empty());
        }
        let s = Signals { trigger_last_held: Some(at - TimeDelta::minutes(10)), ..Default::default() };
        let d = plan(&p, at, "us-east", &s).unwrap();
        assert!(d.reason.contains("one held at 2025-10-15 11:50 UTC (10 min ago)"), "{}", d.reason);
        // Exit delay 0: out as soon as nothing holds.
        let mut quick = Policy::default();
        quick.emergency.exit_after_minutes = 0;
        let s = Signals { trigger_last_held: Some(at - TimeDelta::seconds(30)), ..Default::default() };
        assert!(!plan(&quick, at, "us-east", &s).unwrap().emergency);
    }

    #[test]
    fn cooldowns() {
        let p = Policy::default(); // out 5 min, in 60 min
        let at = t("2025-10-15T12:00:00Z"); // us-east moderate: 4
        let peak = t("2025-04-15T12:00:00Z"); // us-east peak: 8
        let ago = |m: i64| Some(at - TimeDelta::minutes(m));
        let peak_ago = |m: i64| Some(peak - TimeDelta::minutes(m));
        // when, current, last change, storm, processes, held
        let table = [
            // Scale-in 8 → 4: held for 60 minutes after the last change.
            (at, Some(8), ago(10), false, 8, true),
            (at, Some(8), ago(59), false, 8, true),
            (at, Some(8), ago(60), false, 4, false),
            (at, Some(8), ago(61), false, 4, false),
            // Unknown history: no cooldown.
            (at, Some(8), None, false, 4, false),
            (at, None, ago(1), false, 4, false),
            // Scale-out 4 → 8 (season): held 5 minutes.
            (peak, Some(4), peak_ago(1), false, 4, true),
            (peak, Some(4), peak_ago(5), false, 8, false),
            // Scale-out into an emergency: never held.
            (at, Some(4), ago(1), true, 20, false),
            (at, Some(8), ago(0), true, 20, false),
            // Out of the limits (0 after an interrupted resize; 50 by hand): corrected at once.
            (at, Some(0), ago(1), false, 4, false),
            (at, Some(50), ago(1), false, 4, false),
            // No change.
            (at, Some(4), ago(1), false, 4, false),
        ];
        for (when, current, last_change, storm, n, held) in table {
            let s = Signals { current, last_change, storm, ..Default::default() };
            let d = plan(&p, when, "us-east", &s).unwrap();
            assert_eq!((d.processes, d.cooldown_held), (n, held), "{current:?} {last_change:?}: {}", d.reason);
            assert_eq!(d.current, current);
        }
        let s = Signals { current: Some(8), last_change: ago(10), ..Default::default() };
        let d = plan(&p, at, "us-east", &s).unwrap();
        assert_eq!(d.desired, 4);
        assert!(
            d.reason
                .contains("the scale-in cooldown holds 8 processes until 2025-10-15 12:50 UTC (last change 10 min ago"),
            "{}",
            d.reason
        );
        // A scale-out cooldown of 0 never holds.
        let mut eager = Policy::default();
        eager.cooldown.after_scale_out_minutes = 0;
        let s = Signals { current: Some(4), last_change: Some(peak), ..Default::default() };
        assert_eq!(plan(&eager, peak, "us-east", &s).unwrap().processes, 8);
        // Leaving an emergency is a scale-in: held by its cooldown.
        let s = Signals { current: Some(20), last_change: ago(40), trigger_last_held: ago(35), ..Default::default() };
        let d = plan(&p, at, "us-east", &s).unwrap();
        assert_eq!((d.emergency, d.desired, d.processes, d.cooldown_held), (false, 4, 20, true));
    }

    #[test]
    fn limits_clamp() {
        let small = Policy { max: 6, ..Policy::default() };
        let peak_storm = Signals { storm: true, ..Default::default() };
        let d = plan_at(&small, "2025-04-15T12:00:00Z", "us-east", &peak_storm);
        assert_eq!((d.computed, d.processes, d.clamped, d.emergency), (20, 6, Some(Limit::Max), true));
        assert!(d.reason.contains("ceil(4 × 5) = 20, lowered to the policy's max of 6"), "{}", d.reason);
        let d = plan_at(&small, "2025-04-15T12:00:00Z", "us-east", &Signals::default());
        assert_eq!((d.computed, d.processes, d.clamped), (8, 6, Some(Limit::Max)));

        let floor = Policy { min: 3, ..Policy::default() };
        let d = plan_at(&floor, "2025-01-15T12:00:00Z", "us-east", &Signals::default());
        assert_eq!((d.computed, d.processes, d.clamped), (2, 3, Some(Limit::Min)));
        assert!(d.reason.contains("raised to the policy's min of 3"), "{}", d.reason);
        let d = plan_at(&floor, "2025-10-15T12:00:00Z", "us-east", &Signals::default());
        assert_eq!((d.processes, d.clamped), (4, None));
    }

    #[test]
    fn sizes_round_up() {
        let table = [
            (3, 0.3, 1),
            (4, 0.3, 2),
            (10, 0.3, 3),
            (7, 2.5, 18),
            (4, 2.0, 8),
            (4, 5.0, 20),
            (1, 0.01, 1),
            (3, 1.0 / 3.0, 1),
        ];
        for (base, mult, n) in table {
            assert_eq!(ceil_processes(base, mult), n, "{base} × {mult}");
        }
        let p = Policy { base: 3, ..Policy::default() };
        let d = plan_at(&p, "2025-01-15T12:00:00Z", "us-east", &Signals::default());
        assert_eq!((d.processes, d.multiplier), (1, 0.3));
        assert!(d.reason.contains("ceil(3 × 0.3) = 1"), "{}", d.reason);
    }

    #[test]
    fn unknown_region_lists_the_known_ones() {
        let e = plan(&Policy::default(), t("2025-01-01T00:00:00Z"), "mars-1", &Signals::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown region `mars-1`; the policy knows: ap-northeast, ap-southeast, eu-central, eu-west, us-east, us-west"
        );
        let one =
            Policy::from_toml_str("[regions.us-east]\npeak = [3,4,5,6,7,8]\nmoderate = [9,10,11]\nlow = [12,1,2]\n")
                .unwrap();
        let e = plan(&one, t("2025-01-01T00:00:00Z"), "eu-west", &Signals::default()).unwrap_err();
        assert_eq!(e.to_string(), "unknown region `eu-west`; the policy knows: us-east");
    }

    #[test]
    fn policy_errors_name_the_field() {
        let table = [
            ("bogus = 1\n", "unknown field `bogus`"),
            ("[emergency]\nlag = 5\n", "unknown field `lag`"),
            ("[cooldown]\nscale_in = 5\n", "unknown field `scale_in`"),
            ("[regions.us-east]\npeak = [1]\nwinter = [2]\n", "unknown field `winter`"),
            ("max = \"ten\"\n", "line 1 (`max = \"ten\"`): invalid type: string \"ten\", expected u32"),
            ("min = 5\nmax = 3\n", "`max` (3) is below `min` (5)"),
            ("min = 0\n", "`min` must be at least 1"),
            ("[multipliers]\nlow = 0\n", "`multipliers.low` must be a number above 0"),
            ("[emergency]\nfreshness_p99_seconds = -1\n", "`emergency.freshness_p99_seconds`"),
            ("[emergency]\nsustained_minutes = 0\n", "`emergency.sustained_minutes`"),
            (
                "[regions.x]\npeak = [1,2,3,4,5,6]\nmoderate = [6,7,8]\nlow = [9,10,11,12]\n",
                "regions.x: month 6 is in both `peak` and `moderate`",
            ),
            (
                "[regions.x]\npeak = [1,2,3,4,5,6]\nmoderate = [7,8]\nlow = [9,10,11]\n",
                "regions.x: month(s) 12 in no season",
            ),
            ("[regions.x]\npeak = [13]\n", "regions.x.peak: month 13 is not 1–12"),
            ("[regions]\n", "`regions` is empty"),
        ];
        for (text, needle) in table {
            let e = Policy::from_toml_str(text).unwrap_err().to_string();
            assert!(e.starts_with("policy: "), "{e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        // A file's error names the file.
        let dir = std::env::temp_dir().join(format!("treeai-scale-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "base = 4\n[multipliers]\nturbo = 9.0\n").unwrap();
        let e = Policy::load(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.starts_with(&format!("policy file {}: ", path.display())), "{e}");
        assert!(e.contains("unknown field `turbo`"), "{e}");
        assert!(e.contains(": line 3 (`turbo = 9.0`): unknown field `turbo`, expected one of `peak`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn partial_policy_keeps_defaults() {
        let p = Policy::from_toml_str("max = 6\n[cooldown]\nprewarm_minutes = 0\n").unwrap();
        assert_eq!((p.base, p.min, p.max), (4, 1, 6));
        assert_eq!(p.cooldown.after_scale_in_minutes, 60);
        assert_eq!(p.cooldown.prewarm_minutes, 0);
        assert_eq!(p.regions, Policy::default().regions);
        assert_eq!(Policy::from_toml_str("").unwrap(), Policy::default());
    }

    #[test]
    fn module_doc_example_is_the_seed_policy() {
        let doc: String = include_str!("scale.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(doc.contains("[regions.us-east]"), "{doc}");
        let p = Policy::from_toml_str(&doc).unwrap();
        assert_eq!(p.regions.keys().collect::<Vec<_>>(), ["us-east"]);
        assert_eq!(Policy { regions: Policy::default().regions, ..p }, Policy::default());
    }

    #[test]
    fn deploy_policy_files_parse() {
        let base = Policy::from_toml_str(include_str!("../../deploy/base/scale-policy.toml")).unwrap();
        assert_eq!(base, Policy::default(), "deploy/base/scale-policy.toml is the seed policy");
        let overlays = [
            ("us-east", include_str!("../../deploy/overlays/us-east/scale-policy.toml")),
            ("eu-west", include_str!("../../deploy/overlays/eu-west/scale-policy.toml")),
            ("ap-southeast", include_str!("../../deploy/overlays/ap-southeast/scale-policy.toml")),
            ("us-west", include_str!("../../deploy/overlays/us-west/scale-policy.toml")),
            ("eu-central", include_str!("../../deploy/overlays/eu-central/scale-policy.toml")),
            ("ap-northeast", include_str!("../../deploy/overlays/ap-northeast/scale-policy.toml")),
        ];
        let seed = Policy::default();
        for (region, text) in overlays {
            let p = Policy::from_toml_str(text).unwrap_or_else(|e| panic!("{region}: {e}"));
            assert_eq!(p.regions.keys().collect::<Vec<_>>(), [region], "{region}");
            assert_eq!(p.regions[region], seed.regions[region], "{region}");
            assert_eq!(Policy { regions: seed.regions.clone(), ..p }, seed, "{region}");
        }
    }

    #[test]
    fn queries_use_the_metric_names() {
        let q: BTreeMap<Signal, String> =
            prometheus_queries(&Policy::default(), Some("treeai-us-east")).into_iter().collect();
        assert_eq!(q.len(), 6);
        assert_eq!(
            q[&Signal::SourceLag],
            "min_over_time((sum(treeai_source_lag{namespace=\"treeai-us-east\"}))[3m:15s])"
        );
        assert_eq!(
            q[&Signal::SourceLagLastHeld],
            "max_over_time(timestamp(min_over_time((sum(treeai_source_lag{namespace=\"treeai-us-east\"}))[3m:15s]) \
             > 1000000)[30m:1m])"
        );
        assert_eq!(
            q[&Signal::FreshnessP99],
            "min_over_time((histogram_quantile(0.99, sum by (le) \
             (rate(treeai_freshness_seconds_bucket{namespace=\"treeai-us-east\"}[1m]))))[3m:15s])"
        );
        assert!(q[&Signal::FreshnessLastHeld].ends_with(" > 60)[30m:1m])"));
        assert_eq!(
            q[&Signal::CriticalAlerts],
            "min_over_time((sum(rate(treeai_alerts_total{namespace=\"treeai-us-east\"}[1m])) * 60)[3m:15s])"
        );
        assert!(q[&Signal::CriticalAlertsLastHeld].ends_with(" > 50)[30m:1m])"));
        // No namespace; a trigger off; no exit delay.
        let mut p = Policy::default();
        p.emergency.freshness_p99_seconds = 0.0;
        p.emergency.exit_after_minutes = 0;
        p.emergency.sustained_minutes = 10;
        let q = prometheus_queries(&p, None);
        let signals: Vec<Signal> = q.iter().map(|(s, _)| *s).collect();
        assert_eq!(signals, [Signal::SourceLag, Signal::CriticalAlerts]);
        assert_eq!(q[0].1, "min_over_time((sum(treeai_source_lag))[10m:15s])");
    }

    #[test]
    fn query_url_is_encoded() {
        let url =
            prometheus_query_url("http://prom:9090/", "sum(x{a=\"b\"})[3m:15s] > 1", Some(t("2025-01-01T00:00:00Z")));
        assert_eq!(
            url,
            "http://prom:9090/api/v1/query?query=sum%28x%7Ba%3D%22b%22%7D%29%5B3m%3A15s%5D%20%3E%201&time=1735689600"
        );
        assert_eq!(prometheus_query_url("http://p", "up", None), "http://p/api/v1/query?query=up");
    }

    fn vector(values: &[&str]) -> Value {
        let result: Vec<Value> = values.iter().map(|v| json!({"metric": {}, "value": [1735689600.123, v]})).collect();
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    #[test]
    fn signals_parse_prometheus_answers() {
        let empty = json!({"status":"success","data":{"resultType":"vector","result":[]}});
        let literal: Value = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1735689600.5,"1250000"]}]}}"#,
        )
        .unwrap();
        let answers = vec![
            (Signal::SourceLag, literal),
            (Signal::FreshnessP99, vector(&["12.5", "80.25"])), // several series: the largest
            (Signal::CriticalAlerts, empty.clone()),
            (Signal::SourceLagLastHeld, vector(&["1735689000"])),
            (Signal::FreshnessLastHeld, vector(&["1735689300.7"])),
            (Signal::CriticalAlertsLastHeld, empty),
        ];
        let s = signals_from_prometheus(&answers).unwrap();
        assert_eq!(s.source_lag, Some(1_250_000.0));
        assert_eq!(s.freshness_p99, Some(80.25));
        assert_eq!(s.critical_alerts_per_minute, None);
        assert_eq!(s.trigger_last_held, Some(t("2025-01-01T00:00:00Z") - TimeDelta::seconds(300)));
        assert_eq!((s.current, s.last_change, s.storm), (None, None, false));

        // NaN (no events for a quantile) is no data; +Inf is a value; scalars work.
        let s = signals_from_prometheus(&[
            (Signal::SourceLag, vector(&["NaN"])),
            (Signal::FreshnessP99, vector(&["+Inf"])),
            (Signal::CriticalAlerts, json!({"status":"success","data":{"resultType":"scalar","result":[1, "51"]}})),
        ])
        .unwrap();
        assert_eq!(
            (s.source_lag, s.freshness_p99, s.critical_alerts_per_minute),
            (None, Some(f64::INFINITY), Some(51.0))
        );

        // An empty answer list: nothing known, nothing fires.
        let s = signals_from_prometheus(&[]).unwrap();
        assert_eq!(s, Signals::default());
        let d = plan(&Policy::default(), t("2025-10-15T12:00:00Z"), "us-east", &s).unwrap();
        assert!(!d.emergency);

        let table = [
            (
                json!({"status":"error","errorType":"bad_data","error":"parse error at char 5"}),
                "status error: bad_data: parse error at char 5",
            ),
            (
                json!({"status":"success","data":{"resultType":"matrix","result":[]}}),
                "expected an instant vector, got a matrix",
            ),
            (vector(&["twelve"]), "`twelve` is not a number"),
            (json!({"data": {}}), "no `status`"),
        ];
        for (answer, needle) in table {
            let e = signals_from_prometheus(&[(Signal::FreshnessP99, answer)]).unwrap_err().to_string();
            assert!(e.starts_with("prometheus answer for freshness_p99: "), "{e}");
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn merged_signals_drive_the_plan() {
        let prom = signals_from_prometheus(&[(Signal::SourceLag, vector(&["2000000"]))]).unwrap();
        let flags = Signals { current: Some(4), last_change: Some(t("2025-10-15T11:59:00Z")), ..Default::default() };
        let s = flags.merge(prom);
        assert_eq!((s.current, s.source_lag), (Some(4), Some(2_000_000.0)));
        let d = plan(&Policy::default(), t("2025-10-15T12:00:00Z"), "us-east", &s).unwrap();
        assert_eq!((d.processes, d.emergency, d.cooldown_held), (20, true, false));
        assert!(d.reason.contains("scale-out from 4 at once"), "{}", d.reason);
    }

    fn target() -> ApplyTarget {
        ApplyTarget::new("treeai-us-east", "treeai", "http://treeai:8080", "https://kubernetes.default.svc")
    }

    #[test]
    fn apply_steps_for_a_change() {
        let d = plan_at(&Policy::default(), "2025-04-15T12:00:00Z", "us-east", &Signals::default());
        assert_eq!(d.processes, 8);
        let steps = apply_steps(&d, 4, &target());
        let kinds: Vec<StepKind> = steps.iter().map(|s| s.kind).collect();
        use StepKind::*;
        assert_eq!(kinds, [Checkpoint, Stop, WaitStopped, Start, WaitReady, CheckReady]);
        let sts = "https://kubernetes.default.svc/apis/apps/v1/namespaces/treeai-us-east/statefulsets/treeai";
        assert_eq!(
            (steps[0].method, steps[0].url.as_str(), steps[0].api),
            ("POST", "http://treeai:8080/v1/admin/checkpoint", Api::Pipeline)
        );
        assert_eq!((steps[1].method, steps[1].url.as_str()), ("PATCH", sts));
        assert_eq!(steps[1].body.as_ref().unwrap()["spec"], json!({"replicas": 0}));
        assert_eq!(
            steps[2].url,
            "https://kubernetes.default.svc/api/v1/namespaces/treeai-us-east/pods?labelSelector=\
             app.kubernetes.io%2Fname%3Dtreeai%2Capp.kubernetes.io%2Fcomponent%3Dpipeline"
        );
        let start = &steps[3];
        assert_eq!((start.method, start.url.as_str(), start.api), ("PATCH", sts, Api::Kubernetes));
        assert_eq!(start.content_type, Some("application/strategic-merge-patch+json"));
        let body = start.body.as_ref().unwrap();
        assert_eq!(body["spec"]["replicas"], 8);
        let container = &body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], "treeai");
        assert_eq!(container["env"][0], json!({"name": "TREEAI_PROCESSES", "value": "8"}));
        let peers = container["env"][1]["value"].as_str().unwrap();
        assert_eq!(container["env"][1]["name"], "TREEAI_PEERS");
        // One pattern for any size: every pod expands `{i}` to the 8 processes.
        assert_eq!(peers, "treeai-{i}.treeai-peers:2101");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations[ANNOTATION_SCALED_AT], "2025-04-15T12:00:00Z");
        assert_eq!(annotations[ANNOTATION_SCALED_TO], "8");
        assert_eq!(annotations[ANNOTATION_SCALING_TO], Value::Null);
        assert_eq!(annotations[ANNOTATION_SCALE_REASON], d.reason.as_str());
        assert_eq!(
            (steps[4].method, steps[4].url.as_str(), steps[4].until),
            ("GET", sts, Some(Until::ReadyReplicas(8)))
        );
        assert_eq!(steps[5].url, "http://treeai:8080/readyz");

        let text = dry_run_text(&d, 4, &steps);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(lines[0].starts_with("4 → 8 processes: us-east is in its peak season"), "{text}");
        assert!(lines[1].starts_with("1. POST http://treeai:8080/v1/admin/checkpoint  # checkpoint"), "{text}");
        assert!(lines[4].starts_with(&format!("4. PATCH {sts} {{")), "{text}");
        assert!(lines[4].contains(r#""replicas":8"#), "{text}");
        assert!(lines[4].contains(r#"{"name":"TREEAI_PROCESSES","value":"8"}"#), "{text}");
        assert!(!text.contains("Bearer"), "{text}");

        // From 0 (standby, interrupted resize): nothing to checkpoint or stop.
        let kinds: Vec<StepKind> = apply_steps(&d, 0, &target()).iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [Start, WaitReady, CheckReady]);
    }

    #[test]
    fn apply_steps_for_no_change() {
        let d = plan_at(&Policy::default(), "2025-04-15T12:00:00Z", "us-east", &Signals::default());
        let steps = apply_steps(&d, 8, &target());
        assert!(steps.is_empty());
        let text = dry_run_text(&d, 8, &steps);
        assert!(
            text.starts_with("no change: us-east runs 8 processes, as planned (us-east is in its peak season"),
            "{text}"
        );
        assert!(!text.contains("PATCH"));
    }

    #[test]
    fn steps_know_when_they_are_done() {
        let d = plan_at(&Policy::default(), "2025-04-15T12:00:00Z", "us-east", &Signals::default());
        let steps = apply_steps(&d, 4, &target());
        assert!(steps[0].done(200, &json!({"checkpoint": 12})));
        assert!(!steps[0].done(503, &Value::Null));
        assert!(steps[1].done(200, &json!({})));
        assert!(!steps[2].done(200, &json!({"items": [{"metadata": {"name": "treeai-0"}}]})));
        assert!(steps[2].done(200, &json!({"items": []})));
        assert!(!steps[2].done(403, &json!({"items": []})));
        let sts = |replicas: u64, ready: Option<u64>, observed: u64| {
            let mut v = json!({"metadata": {"generation": 7}, "spec": {"replicas": replicas}, "status": {"observedGeneration": observed}});
            if let Some(r) = ready {
                v["status"]["readyReplicas"] = json!(r);
            }
            v
        };
        let wait = &steps[4];
        assert!(wait.done(200, &sts(8, Some(8), 7)));
        assert!(!wait.done(200, &sts(8, Some(7), 7)));
        assert!(!wait.done(200, &sts(8, None, 7)));
        assert!(!wait.done(200, &sts(8, Some(8), 6))); // status not yet of the patched spec
        assert!(!wait.done(200, &sts(4, Some(4), 7)));
        assert!(steps[5].done(200, &Value::Null));
        assert!(!steps[5].done(503, &Value::Null));
    }

    fn statefulset(replicas: u32, processes: &str, peers: &str, annotations: Value) -> Value {
        json!({
            "kind": "StatefulSet",
            "metadata": {"name": "treeai", "annotations": annotations},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{
                "name": "treeai",
                "env": [
                    {"name": "TREEAI_PROCESSES", "value": processes},
                    {"name": "TREEAI_PEERS", "value": peers},
                    {"name": "TREEAI_LOG", "value": "warn"},
                ],
            }]}}},
            "status": {"readyReplicas": 4},
        })
    }

    #[test]
    fn statefulset_state() {
        let tg = target();
        let v = statefulset(
            4,
            "4",
            &tg.peers(4),
            json!({ANNOTATION_SCALED_AT: "2025-04-15T12:00:00Z", ANNOTATION_STORM: "true"}),
        );
        let s = StatefulSetState::from_json(&v, &tg).unwrap();
        assert_eq!(
            s,
            StatefulSetState {
                replicas: 4,
                processes_env: Some(4),
                peers_env: Some(tg.peers(4)),
                ready_replicas: 4,
                last_change: Some(t("2025-04-15T12:00:00Z")),
                storm: true,
                dr_twin_of: None,
                scaling_to: None,
            }
        );
        assert_eq!(s.problem(&tg), None);
        let sig = s.signals();
        assert_eq!((sig.current, sig.last_change, sig.storm), (Some(4), Some(t("2025-04-15T12:00:00Z")), true));

        // deploy/base/statefulset.yaml's numbers: 4 everywhere, no annotations.
        let base_peers = "treeai-0.treeai-peers:2101,treeai-1.treeai-peers:2101,treeai-2.treeai-peers:2101,treeai-3.treeai-peers:2101";
        assert_eq!(tg.peers(4), base_peers);
        let s = StatefulSetState::from_json(&statefulset(4, "4", base_peers, json!({})), &tg).unwrap();
        assert_eq!((s.last_change, s.storm, s.problem(&tg)), (None, false, None));
        // 0 replicas keeping the start size in the environment (stopped by hand).
        let s = StatefulSetState::from_json(&statefulset(0, "4", base_peers, json!({})), &tg).unwrap();
        assert_eq!((s.replicas, s.problem(&tg)), (0, None));
        // A DR standby (overlays/us-west/standby.yaml): apply must not start it.
        let standby = json!({ANNOTATION_DR_TWIN_OF: "us-east"});
        let s = StatefulSetState::from_json(&statefulset(0, "4", base_peers, standby), &tg).unwrap();
        assert_eq!(s.dr_twin_of.as_deref(), Some("us-east"));
        assert_eq!(
            s.problem(&tg).unwrap(),
            "a DR standby of us-east with 0 processes: start it by hand for a failover, then the scaler sizes it"
        );
        // ... but after a failover it is sized like any cluster,
        let s = StatefulSetState::from_json(
            &statefulset(4, "4", base_peers, json!({ANNOTATION_DR_TWIN_OF: "us-east"})),
            &tg,
        )
        .unwrap();
        assert_eq!(s.problem(&tg), None);
        // ... and a resize interrupted while it was stopped is finished.
        let stopped = json!({ANNOTATION_DR_TWIN_OF: "us-east", ANNOTATION_SCALING_TO: "8"});
        let s = StatefulSetState::from_json(&statefulset(0, "4", base_peers, stopped), &tg).unwrap();
        assert_eq!((s.scaling_to, s.problem(&tg)), (Some(8), None));
        // Hand edits.
        let s = StatefulSetState::from_json(&statefulset(8, "4", base_peers, json!({})), &tg).unwrap();
        assert_eq!(s.problem(&tg).unwrap(), "spec.replicas is 8 but TREEAI_PROCESSES is 4");
        let s =
            StatefulSetState::from_json(&statefulset(4, "4", "treeai-0.treeai-peers:2101", json!({})), &tg).unwrap();
        assert!(s.problem(&tg).unwrap().starts_with("TREEAI_PEERS is `treeai-0.treeai-peers:2101`, not"));
        let e = StatefulSetState::from_json(&statefulset(4, "4", "", json!({ANNOTATION_SCALED_AT: "yesterday"})), &tg)
            .unwrap_err();
        assert!(e.to_string().starts_with("statefulset: annotation treeai.io/scaled-at `yesterday`"), "{e}");
        let mut other = tg.clone();
        other.container = "sidecar".into();
        let e = StatefulSetState::from_json(&statefulset(4, "4", "", json!({})), &other).unwrap_err();
        assert_eq!(e.to_string(), "statefulset: no container `sidecar` in the pod template");
    }

    #[test]
    fn decision_json_has_the_interface_fields() {
        let s = Signals { storm: true, ..Default::default() };
        let d = plan_at(&Policy::default(), "2025-01-15T12:00:00Z", "ap-southeast", &s);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["processes"], 20);
        assert_eq!(v["season"], "peak");
        assert_eq!(v["emergency"], true);
        assert_eq!(v["reason"], d.reason.as_str());
        assert_eq!(v["rule"], "emergency");
        assert_eq!(v["triggers"], json!(["storm"]));
        assert_eq!(v["clamped"], Value::Null);
        assert_eq!(v["at"], "2025-01-15T12:00:00Z");
        let line = serde_json::to_string(&d).unwrap();
        assert!(line.starts_with(r#"{"processes":20,"season":"peak","emergency":true,"reason":""#), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(
            d.to_string(),
            "20 processes: ap-southeast is in its peak season (January UTC, ×2); emergency (×5): the storm flag is \
             set; ceil(4 × 5) = 20."
        );
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Plan(PlanArgs),
        Apply(ApplyArgs),
    }

    #[test]
    fn command_line() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "treeai",
            "plan",
            "--at",
            "2025-03-01T01:00:00+01:00",
            "--region",
            "us-east",
            "--json",
            "--current",
            "2",
            "--last-change",
            "2025-02-01T00:00:00Z",
            "--storm",
        ])
        .unwrap();
        let Cmd::Plan(a) = cli.command else { panic!("not plan") };
        assert_eq!(a.at(), t("2025-03-01T00:00:00Z"));
        assert_eq!((a.region.as_str(), a.json, a.namespace()), ("us-east", true, "treeai-us-east".to_string()));
        assert_eq!(
            a.signals(),
            Signals {
                current: Some(2),
                last_change: Some(t("2025-02-01T00:00:00Z")),
                storm: true,
                ..Default::default()
            }
        );
        assert_eq!(a.load_policy().unwrap(), Policy::default());

        let e =
            Cli::try_parse_from(["treeai", "plan", "--region", "us-east", "--at", "March"]).unwrap_err().to_string();
        assert!(e.contains("`March` is not an RFC 3339 time"), "{e}");
        if std::env::var_os("TREEAI_SCALE_REGION").is_none() {
            let e = Cli::try_parse_from(["treeai", "plan"]).unwrap_err().to_string();
            assert!(e.contains("--region"), "{e}");
        }

        // The CronJob's arguments (deploy/base/scaler.yaml).
        let cli = Cli::try_parse_from([
            "treeai",
            "apply",
            "--region=us-east",
            "--policy=/etc/treeai-scaler/scale-policy.toml",
            "--metrics=http://prometheus.monitoring.svc:9090",
            "--statefulset=treeai",
            "--dry-run",
        ])
        .unwrap();
        let Cmd::Apply(a) = cli.command else { panic!("not apply") };
        assert!(a.dry_run);
        assert_eq!(a.plan.metrics.as_deref(), Some("http://prometheus.monitoring.svc:9090"));
        assert_eq!(a.plan.policy.as_deref(), Some(Path::new("/etc/treeai-scaler/scale-policy.toml")));
        if std::env::var_os("TREEAI_SCALE_ADMIN_URL").is_none() && std::env::var_os("TREEAI_SCALE_KUBE_API").is_none() {
            assert_eq!(a.target(), target());
        }
        let before = DateTime::<Utc>::from(std::time::SystemTime::now());
        assert!(a.plan.at() >= before);
    }
}
