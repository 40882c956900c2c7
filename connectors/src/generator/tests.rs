//! Tests of the generator: determinism, sharding, event times, the shares of
//! event kinds, the weather's effect on readings, and that every event passes
//! (or, if malformed, fails) the real validator `treeai_dataflows::parse`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use treeai_dataflows::event::{Event, Position};
use treeai_dataflows::parse::{parse_event, Rejection, Rule, MAX_MESSAGE_BYTES};
use treeai_dataflows::time::{format_ts, parse_rfc3339, HOUR_MS, MAX_TS_MS, MIN_TS_MS};

use super::agents::BASE_ASSESSMENT_SHARE;
use super::json::{push_fixed, push_rfc3339, tree_key};
use super::malformed::Bad;
use super::sensors::METRICS;
use super::weather::MIN_MS;
use super::*;

/// Parses `e` as `treeai run` does, both from a file (the `type` field gives
/// the kind) and from its Kafka topic (`e.kind` gives it): the two must agree.
fn validate(e: &GeneratedEvent) -> Result<Event, Rejection> {
    let from_file = parse_event(&e.json, None, Position::default());
    let from_topic = parse_event(&e.json, Some(e.kind), Position::default());
    assert_eq!(from_file, from_topic, "{}", String::from_utf8_lossy(&e.json));
    from_file
}

fn kind_of(event: &Event) -> EventKind {
    match event {
        Event::Tree(_) => EventKind::Tree,
        Event::Assessment(..) => EventKind::Assessment,
        Event::Reading(_) => EventKind::Reading,
    }
}

/// The event's own timestamp: `updated_at`, `observed_at` or `ts`.
fn ts_of(event: &Event) -> i64 {
    match event {
        Event::Tree(t) => t.updated_at,
        Event::Assessment(a, _) => a.observed_at,
        Event::Reading(r) => r.ts,
    }
}

/// The rules a corruption may break (the validator reports the first it finds).
fn rules_for(bad: Bad) -> &'static [Rule] {
    match bad {
        Bad::Huge => &[Rule::TooLarge],
        Bad::Truncate => &[Rule::InvalidJson],
        Bad::NotObject => &[Rule::NotObject],
        Bad::Missing => &[Rule::Missing],
        Bad::WrongType => &[Rule::WrongType],
        Bad::UnknownEnum => &[Rule::UnknownValue],
        Bad::OutOfRange => &[Rule::OutOfRange],
        Bad::Id => &[Rule::BadId],
        Bad::Timestamp => &[Rule::BadTimestamp, Rule::OutOfRange],
        Bad::NonFinite => &[Rule::NotFinite],
        Bad::LongString => &[Rule::TooLong],
        Bad::TooManyDefects => &[Rule::TooMany],
        Bad::DefectItem => &[Rule::Missing, Rule::WrongType],
    }
}

fn small(season: Season, bad_fraction: f64) -> GeneratorConfig {
    GeneratorConfig { trees: 300, agents: 30, rate: 1_000.0, season, bad_fraction, seed: 7, ..Default::default() }
}

// -- tests ----------------------------------------------------------------

#[test]
fn generator_season_parse_and_display() {
    for s in Season::ALL {
        assert_eq!(s.to_string().parse::<Season>(), Ok(s));
    }
    assert_eq!("Emergency".parse::<Season>(), Ok(Season::Emergency));
    assert!("winter".parse::<Season>().is_err());
}

#[test]
fn generator_timestamp_formatting() {
    let fmt = |ms: i64| {
        let mut b = Vec::new();
        push_rfc3339(&mut b, ms);
        String::from_utf8(b).unwrap()
    };
    assert_eq!(fmt(1_795_564_800_000), "2026-11-25T00:00:00.000Z");
    assert_eq!(fmt(1_795_597_200_000 + 1_250), "2026-11-25T09:00:01.250Z");
    assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(fmt(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(fmt(MAX_TS_MS - 1), "2099-12-31T23:59:59.999Z");
    let mut r = Pcg64Mcg::seed_from_u64(3);
    for _ in 0..10_000 {
        let ms = r.random_range(MIN_TS_MS..MAX_TS_MS);
        let s = fmt(ms);
        assert_eq!(s, format_ts(ms));
        assert_eq!(parse_rfc3339(&s), Some(ms));
    }
    let num = |v: f64, d: usize| {
        let mut b = Vec::new();
        push_fixed(&mut b, v, d);
        String::from_utf8(b).unwrap()
    };
    assert_eq!(num(4.5, 2), "4.5");
    assert_eq!(num(18.0, 2), "18.0");
    assert_eq!(num(0.05, 3), "0.05");
    assert_eq!(num(-6.26011, 5), "-6.26011");
    assert_eq!(num(-0.0001, 2), "0.0");
    assert_eq!(num(53.349999, 2), "53.35");
    assert_eq!(tree_key(42), "T-000042");
    assert_eq!(tree_key(1_234_567), "T-1234567");
}

#[test]
fn generator_is_deterministic() {
    for season in [Season::Moderate, Season::Emergency] {
        let a: Vec<_> = Generator::new(small(season, 0.1), 1, 2).take(30_000).collect();
        let b: Vec<_> = Generator::new(small(season, 0.1), 1, 2).take(30_000).collect();
        assert!(a == b, "same config must give the same events");
        let c: Vec<_> = Generator::new(GeneratorConfig { seed: 8, ..small(season, 0.1) }, 1, 2).take(30_000).collect();
        assert!(a != c, "another seed must give other events");
    }
}

#[test]
fn generator_shards_partition_the_trees() {
    let cfg = GeneratorConfig { trees: 1_000, ..small(Season::Peak, 0.0) };
    let tree_ids = |shard: u32, shards: u32| -> BTreeMap<String, Value> {
        let mut g = Generator::new(cfg.clone(), shard, shards);
        let mut ids = BTreeMap::new();
        for e in g.by_ref().take(3_000) {
            if e.kind == EventKind::Tree {
                let v: Value = serde_json::from_slice(&e.json).unwrap();
                assert_eq!(v["tree_id"].as_str(), Some(e.key.as_str()));
                ids.entry(e.key).or_insert(v);
            }
        }
        assert_eq!(g.generated(), 3_000);
        ids
    };
    let whole = tree_ids(0, 1);
    assert_eq!(whole.len(), 1_000);
    let parts: Vec<_> = (0..3).map(|s| tree_ids(s, 3)).collect();
    let mut union = BTreeSet::new();
    for (s, part) in parts.iter().enumerate() {
        for (id, v) in part {
            let n: u64 = id[2..].parse().unwrap();
            assert_eq!(n % 3, s as u64, "{id} in shard {s}");
            assert!(union.insert(id.clone()), "{id} in two shards");
            // Same tree, same attributes, whatever the sharding.
            let w = &whole[id];
            for k in ["region", "species", "lat", "lon", "dbh_cm", "baseline_sway_hz"] {
                assert_eq!(v.get(k), w.get(k), "{id}.{k}");
            }
        }
    }
    assert_eq!(union, whole.keys().cloned().collect::<BTreeSet<_>>());
}

#[test]
fn generator_valid_events_follow_the_spec() {
    for season in Season::ALL {
        let cfg = GeneratorConfig { trees: 500, rate: 20.0, ..small(season, 0.0) };
        let mut g = Generator::new(cfg.clone(), 0, 1);
        let mut kinds: HashMap<&str, u64> = HashMap::new();
        let (mut int_ts, mut late, mut revised, mut withdrawn, mut deleted) = (0u64, 0u64, 0, 0, 0);
        let mut agents = BTreeSet::new();
        let n = 200_000;
        for (i, e) in g.by_ref().take(n).enumerate() {
            assert!(!e.json.contains(&b'\n'));
            let ev = validate(&e).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&e.json)));
            assert_eq!(kind_of(&ev), e.kind);
            assert_eq!(ev.tree_id().as_str(), e.key);
            let v: Value = serde_json::from_slice(&e.json).unwrap();
            assert_eq!(v["tree_id"].as_str(), Some(e.key.as_str()));
            *kinds.entry(e.kind.as_str()).or_default() += 1;
            let ts_key = match e.kind {
                EventKind::Tree => "updated_at",
                EventKind::Assessment => "observed_at",
                EventKind::Reading => "ts",
            };
            assert_eq!(ts_of(&ev), e.ts_ms);
            int_ts += v[ts_key].is_number() as u64;
            // Event time advances with the rate, after the inventory (registered at the start).
            let now = cfg.start_ms + (i.saturating_sub(cfg.trees as usize) as f64 * 1000.0 / cfg.rate) as i64;
            match e.kind {
                EventKind::Reading => {
                    assert!(e.ts_ms <= now && e.ts_ms >= now - 2 * HOUR_MS, "reading ts {} at {now}", e.ts_ms);
                    late += (e.ts_ms < now - 60_000) as u64;
                }
                EventKind::Tree => {
                    assert_eq!(e.ts_ms, now);
                    deleted += (v["deleted"] == Value::Bool(true)) as u64;
                }
                EventKind::Assessment => {
                    assert!(e.ts_ms <= now);
                    agents.insert(v["agent_id"].as_str().unwrap().to_string());
                    let rev = v.get("revision").and_then(Value::as_i64).unwrap_or(1);
                    revised += (rev > 1) as u64;
                    withdrawn += (v["withdrawn"] == Value::Bool(true)) as u64;
                }
            }
        }
        let stream = (n - 500) as f64;
        let share = |k: &str| *kinds.get(k).unwrap_or(&0) as f64 / stream;
        let mult = season.activity_multiplier();
        assert!(share("reading") > 0.97, "{season}: {kinds:?}");
        let expect = BASE_ASSESSMENT_SHARE * mult;
        let a = share("assessment");
        assert!(a > expect * 0.8 && a < expect * 1.3, "{season}: assessment share {a}, {kinds:?}");
        assert!(agents.len() as f64 <= (30.0 * mult).round(), "{season}: {} agents", agents.len());
        assert!(agents.len() >= 5, "{season}: {agents:?}");
        assert!(revised > 0, "{season}: no revisions");
        let ti = int_ts as f64 / n as f64;
        assert!((0.17..0.23).contains(&ti), "integer timestamps {ti}");
        assert!(late > 50 && late < 400, "{season}: {late} late readings");
        assert!(kinds["tree"] > 500, "{season}: no registry updates");
        if season == Season::Emergency {
            assert!(withdrawn > 0, "no withdrawals");
        }
        let _ = deleted;
    }
}

#[test]
fn generator_bad_fraction() {
    let count_bad = |bad_fraction: f64, season: Season| {
        let mut g = Generator::new(GeneratorConfig { rate: 500.0, ..small(season, bad_fraction) }, 0, 1);
        let mut bad = 0u64;
        let mut reasons = BTreeMap::<String, u64>::new();
        for e in g.by_ref().take(20_000) {
            assert!(!e.json.contains(&b'\n'));
            if let Err(rejection) = validate(&e) {
                bad += 1;
                *reasons.entry(rejection.label()).or_default() += 1;
            }
        }
        // Every malformed event is rejected, every other event accepted.
        assert_eq!(bad, g.malformed, "{reasons:?}");
        (bad, reasons)
    };
    assert_eq!(count_bad(0.0, Season::Moderate).0, 0);
    for season in [Season::Moderate, Season::Emergency] {
        let (bad, reasons) = count_bad(0.2, season);
        let share = bad as f64 / 20_000.0;
        assert!((0.15..=0.25).contains(&share), "bad share {share}");
        assert!(reasons.len() > 25, "too little variety: {reasons:?}");
        for rule in
            [Rule::InvalidJson, Rule::NotObject, Rule::Missing, Rule::OutOfRange, Rule::BadId, Rule::BadTimestamp]
        {
            assert!(reasons.keys().any(|r| r.ends_with(rule.as_str())), "no {rule:?}: {reasons:?}");
        }
    }
}

#[test]
fn generator_malformed_kinds_cover_the_spec() {
    let cfg = GeneratorConfig { bad_fraction: 1.0, ..small(Season::Moderate, 0.0) };
    let mut g = Generator::new(cfg, 0, 1);
    let (mut corruptions, mut rules, mut labels) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut huge = 0;
    for _ in 0..10_000 {
        let e = g.next().expect("an event");
        let err = validate(&e).expect_err("must be rejected");
        assert!(!e.json.contains(&b'\n'));
        huge += (e.json.len() > MAX_MESSAGE_BYTES) as u32;
        // Rejected for the reason the generator meant.
        let bad = g.last_bad.expect("a malformed event");
        assert!(
            rules_for(bad).contains(&err.rule),
            "{bad:?} rejected as {err}: {}",
            String::from_utf8_lossy(&e.json[..e.json.len().min(400)])
        );
        corruptions.insert(bad);
        rules.insert(err.rule);
        labels.insert(err.label());
    }
    assert!(huge > 0 && huge < 100, "{huge} huge messages");
    assert_eq!(corruptions.len(), 13, "{corruptions:?}");
    // Every rule but `duplicate`, and both kinds of over-long string.
    assert_eq!(rules.len(), 12, "{rules:?}");
    assert!(!rules.contains(&Rule::Duplicate));
    for label in ["notes:too_long", "species:too_long", "defects:too_many"] {
        assert!(labels.contains(label), "no {label}: {labels:?}");
    }
}

#[test]
fn generator_storms_raise_gusts() {
    // Moderate season: storms are occasional, so run 11 hours of event time.
    let cfg = GeneratorConfig { trees: 50, rate: 5.0, ..small(Season::Moderate, 0.0) };
    let mut strong = 0;
    let mut calm_max: f64 = 0.0;
    for e in Generator::new(cfg, 0, 1).take(200_000) {
        if e.kind == EventKind::Reading {
            let v: Value = serde_json::from_slice(&e.json).unwrap();
            if v["metric"] == "wind_gust_ms" {
                let g = v["value"].as_f64().unwrap();
                if g >= 20.0 {
                    strong += 1;
                } else {
                    calm_max = calm_max.max(g);
                }
            }
        }
    }
    assert!(strong > 20, "{strong} gusts >= 20 m/s");
    // In an emergency, storms come within minutes.
    let cfg = GeneratorConfig { trees: 50, rate: 50.0, ..small(Season::Emergency, 0.0) };
    let strong = Generator::new(cfg, 0, 1)
        .take(100_000)
        .filter(|e| {
            let v: Value = serde_json::from_slice(&e.json).unwrap();
            v["metric"] == "wind_gust_ms" && v["value"].as_f64().unwrap() >= 20.0
        })
        .count();
    assert!(strong > 200, "{strong} gusts >= 20 m/s in an emergency");
}

/// Scores trees from readings alone (as unassessed trees, base 75) over
/// sliding 1 h windows: storms must push some trees into `critical`, and
/// they must recover afterwards. Also checks removals and re-registrations.
#[test]
fn generator_storms_make_trees_critical_and_back() {
    let cfg = GeneratorConfig { trees: 60, rate: 30.0, ..small(Season::Emergency, 0.0) };
    let id = |key: &str| key[2..].parse::<usize>().unwrap();
    let mut baselines: HashMap<usize, (f64, Option<f64>)> = HashMap::new();
    let mut readings: Vec<(i64, usize, usize, f64)> = Vec::new();
    let mut deleted = BTreeSet::new();
    let mut reregistered = 0;
    for e in Generator::new(cfg, 0, 1).take(6 * 3600 * 30) {
        let v: Value = serde_json::from_slice(&e.json).unwrap();
        match e.kind {
            EventKind::Tree if v["deleted"] == Value::Bool(true) => {
                deleted.insert(id(&e.key));
            }
            EventKind::Tree => {
                reregistered += deleted.remove(&id(&e.key)) as u32;
                let tilt = v.get("baseline_tilt_deg").and_then(Value::as_f64).unwrap_or(0.0);
                baselines.insert(id(&e.key), (tilt, v.get("baseline_sway_hz").and_then(Value::as_f64)));
            }
            EventKind::Reading => {
                let m = METRICS.iter().position(|m| v["metric"] == *m).unwrap();
                readings.push((e.ts_ms, id(&e.key), m, v["value"].as_f64().unwrap()));
            }
            EventKind::Assessment => {}
        }
    }
    assert!(reregistered > 0, "no tree removed and registered again");
    readings.sort_by_key(|r| r.0);
    let start = readings[0].0;
    let mut was_critical: BTreeSet<usize> = BTreeSet::new();
    let (mut crossings_in, mut crossings_out) = (0, 0);
    let mut w = start + HOUR_MS;
    while w <= readings.last().unwrap().0 {
        let lo = readings.partition_point(|r| r.0 <= w - HOUR_MS);
        let hi = readings.partition_point(|r| r.0 <= w);
        // tilt_max, sway_min, gust_max, soil sum, soil n
        let mut agg: BTreeMap<usize, (f64, f64, f64, f64, f64)> = BTreeMap::new();
        for &(_, tree, m, x) in &readings[lo..hi] {
            let a = agg.entry(tree).or_insert((f64::MIN, f64::MAX, f64::MIN, 0.0, 0.0));
            match m {
                0 => a.0 = a.0.max(x),
                1 => a.1 = a.1.min(x),
                2 => {
                    a.3 += x;
                    a.4 += 1.0
                }
                _ => a.2 = a.2.max(x),
            }
        }
        let mut critical = BTreeSet::new();
        for (tree, (tilt_max, sway_min, gust_max, soil_sum, soil_n)) in agg {
            let (bt, bs) = baselines[&tree];
            let tilt = if tilt_max > f64::MIN { (5.0 * (tilt_max - bt - 1.0).max(0.0)).min(30.0) } else { 0.0 };
            let sway = match bs {
                Some(bs) if sway_min < f64::MAX => (50.0 * ((bs - sway_min) / bs - 0.1).max(0.0)).min(15.0),
                _ => 0.0,
            };
            let soil_mean = if soil_n > 0.0 { soil_sum / soil_n } else { 0.0 };
            let storm = if gust_max >= 20.0 { 10.0 + if soil_mean >= 40.0 { 10.0 } else { 0.0 } } else { 0.0 };
            if 75.0 - tilt - sway - storm < 40.0 {
                critical.insert(tree);
            }
        }
        crossings_in += critical.difference(&was_critical).count();
        crossings_out += was_critical.difference(&critical).count();
        was_critical = critical;
        w += 5 * MIN_MS;
    }
    assert!(crossings_in >= 3 && crossings_out >= 3, "into critical {crossings_in}, back {crossings_out}");
    assert!(crossings_in < 200, "too many crossings: {crossings_in}");
}

#[test]
fn generator_empty_shard_and_event_time() {
    let cfg = GeneratorConfig { trees: 2, ..Default::default() };
    assert_eq!(Generator::new(cfg.clone(), 2, 3).next(), None);
    // The shard's 25 trees are registered first, all at the start (the inventory); then each
    // of 4 shards advances at rate/4: event 25 + i at start + i * 4 / rate s (a reading's own
    // time may be earlier: sensors report late).
    let cfg = GeneratorConfig { trees: 100, rate: 1_000.0, ..Default::default() };
    let g = Generator::new(cfg.clone(), 3, 4);
    assert_eq!(g.local_trees(), 25);
    for (i, e) in g.take(2025).enumerate() {
        if i < 25 {
            assert_eq!((e.kind, e.ts_ms), (EventKind::Tree, cfg.start_ms));
        } else {
            let now = cfg.start_ms + (i as i64 - 25) * 4;
            assert!(e.ts_ms <= now, "event {i} at {} after {now}", e.ts_ms);
            if e.kind == EventKind::Tree {
                assert_eq!(e.ts_ms, now, "a registry update at the shard's clock");
            }
        }
    }
}
