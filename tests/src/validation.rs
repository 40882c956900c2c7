//! Every validation rule of DOMAIN §2: accepted and rejected cases, both
//! timestamp forms, and rejections that name the field and the rule.

use serde_json::{json, Value};
use treeai_dataflows::event::{Event, EventKind, Position};
use treeai_dataflows::parse::{parse_event, Rule};

fn tree() -> Value {
    json!({"type":"tree","tree_id":"T-1","region":"eu-west","species":"Tilia cordata","lat":53.35,"lon":-6.26,
           "dbh_cm":40,"height_m":12.5,"target_occupancy":"frequent","baseline_tilt_deg":2.0,"baseline_sway_hz":0.5,
           "updated_at":"2026-11-25T08:00:00Z"})
}
fn assessment() -> Value {
    json!({"type":"assessment","assessment_id":"A-1","revision":2,"tree_id":"T-1","agent_id":"agent-07",
           "observed_at":"2026-11-20T09:30:00+01:00","likelihood_of_failure":"probable","likelihood_of_impact":"high",
           "consequences":"significant","defects":[{"kind":"decay","severity":3},{"kind":"hanger","severity":5}],
           "crown_dieback_pct":15,"notes":"ok","withdrawn":false})
}
fn reading() -> Value {
    json!({"type":"reading","sensor_id":"S-1","tree_id":"T-1","metric":"tilt_deg","value":4.5,"ts":1795597200000i64})
}

fn with(mut v: Value, path: &str, x: Value) -> Value {
    v[path] = x;
    v
}
fn without(mut v: Value, field: &str) -> Value {
    v.as_object_mut().unwrap().remove(field);
    v
}

fn parse(v: &Value) -> Result<Event, treeai_dataflows::parse::Rejection> {
    parse_event(v.to_string().as_bytes(), None, Position::default())
}

#[track_caller]
fn rejects(v: Value, field: &str, rule: Rule) {
    match parse(&v) {
        Ok(e) => panic!("accepted {v}: {e:?}"),
        Err(r) => {
            assert_eq!((r.field.as_str(), r.rule), (field, rule), "for {v}: {r}");
            assert!(r.to_string().contains(rule.as_str()), "{r}");
        }
    }
}

#[track_caller]
fn accepts(v: Value) -> Event {
    parse(&v).unwrap_or_else(|r| panic!("rejected {v}: {r}"))
}

#[test]
fn valid_events_of_each_kind() {
    let Event::Tree(t) = accepts(tree()) else { panic!() };
    assert_eq!(
        (t.tree_id.as_str(), t.updated_at, t.baseline_sway_hz.map(|x| x.0)),
        ("T-1", 1_795_593_600_000, Some(0.5))
    );
    let Event::Assessment(a, notes) = accepts(assessment()) else { panic!() };
    assert_eq!((a.revision, a.defect_count, a.defect_severity_sum, a.max_defect_severity), (2, 2, 8, 5));
    assert_eq!(a.observed_at, 1_795_595_400_000 - 5 * 86_400_000); // 08:30Z on the 20th
    assert_eq!(notes.as_deref(), Some("ok"));
    let Event::Reading(r) = accepts(reading()) else { panic!() };
    assert_eq!((r.ts, r.value.0), (1_795_597_200_000, 4.5));
    // Defaults and optional fields.
    let Event::Tree(t) = accepts(
        json!({"type":"tree","tree_id":"T-2","region":"us-east","lat":0,"lon":0,"updated_at":1795593600000i64}),
    ) else {
        panic!()
    };
    assert_eq!((t.baseline_tilt_deg.0, t.baseline_sway_hz, t.species), (0.0, None, None));
    let Event::Assessment(a, _) =
        accepts(without(without(without(assessment(), "revision"), "defects"), "crown_dieback_pct"))
    else {
        panic!()
    };
    assert_eq!((a.revision, a.max_defect_severity, a.crown_dieback_pct.0), (1, 0, 0.0));
    // Unknown fields are ignored; null means absent for optional fields.
    accepts(with(with(reading(), "firmware", json!({"v": [1, 2]})), "extra", json!(null)));
    accepts(with(tree(), "species", Value::Null));
    // A deletion needs only tree_id and updated_at.
    let Event::Tree(t) =
        accepts(json!({"type":"tree","tree_id":"T-1","deleted":true,"updated_at":"2026-11-25T08:00:00Z"}))
    else {
        panic!()
    };
    assert!(t.deleted);
    // On a topic the kind comes from the channel and `type` may be absent.
    let v = without(reading(), "type");
    assert!(parse_event(v.to_string().as_bytes(), Some(EventKind::Reading), Position::default()).is_ok());
    let r = parse_event(reading().to_string().as_bytes(), Some(EventKind::Tree), Position::default()).unwrap_err();
    assert_eq!((r.field.as_str(), r.rule), ("type", Rule::UnknownValue));
}

#[test]
fn timestamps_in_both_forms_and_their_range() {
    for (v, want) in [
        (json!("2026-11-25T10:00:01.250Z"), 1_795_600_801_250i64),
        (json!("2026-11-25T11:00:01.250+01:00"), 1_795_600_801_250),
        (json!(1_795_600_801_250i64), 1_795_600_801_250),
        (json!(1_795_600_801_250.0f64), 1_795_600_801_250),
        (json!("2000-01-01T00:00:00Z"), 946_684_800_000),
        (json!(946_684_800_000i64), 946_684_800_000),
        (json!("2099-12-31T23:59:59.999Z"), 4_102_444_799_999),
    ] {
        let Event::Reading(r) = accepts(with(reading(), "ts", v.clone())) else { panic!() };
        assert_eq!(r.ts, want, "{v}");
    }
    for v in [
        json!("1999-12-31T23:59:59.999Z"),
        json!(946_684_799_999i64),
        json!("2100-01-01T00:00:00Z"),
        json!(4_102_444_800_000i64),
        json!("2000-01-01T00:30:00+01:00"),
    ] {
        rejects(with(reading(), "ts", v), "ts", Rule::OutOfRange);
    }
    for v in [json!("yesterday"), json!("2026-11-25"), json!("2026-02-30T00:00:00Z"), json!("2026-11-25T10:00:00")] {
        rejects(with(reading(), "ts", v), "ts", Rule::BadTimestamp);
    }
    rejects(with(reading(), "ts", json!(1.5e12 + 0.5)), "ts", Rule::WrongType);
    rejects(with(reading(), "ts", json!(true)), "ts", Rule::WrongType);
    rejects(with(tree(), "updated_at", json!("soon")), "updated_at", Rule::BadTimestamp);
    rejects(with(assessment(), "observed_at", json!(0)), "observed_at", Rule::OutOfRange);
}

#[test]
fn identifiers() {
    accepts(with(reading(), "sensor_id", json!("a".repeat(64))));
    accepts(with(reading(), "sensor_id", json!("Az09_.:-")));
    rejects(with(reading(), "sensor_id", json!("a".repeat(65))), "sensor_id", Rule::BadId);
    rejects(with(reading(), "sensor_id", json!("")), "sensor_id", Rule::BadId);
    rejects(with(reading(), "tree_id", json!("T 1")), "tree_id", Rule::BadId);
    rejects(with(reading(), "tree_id", json!("T/1")), "tree_id", Rule::BadId);
    rejects(with(reading(), "tree_id", json!("Tré")), "tree_id", Rule::BadId);
    rejects(with(reading(), "tree_id", json!(7)), "tree_id", Rule::WrongType);
    rejects(with(assessment(), "agent_id", json!("x!")), "agent_id", Rule::BadId);
    rejects(with(assessment(), "assessment_id", json!("")), "assessment_id", Rule::BadId);
}

#[test]
fn required_fields() {
    for f in ["tree_id", "region", "lat", "lon", "updated_at"] {
        rejects(without(tree(), f), f, Rule::Missing);
    }
    for f in [
        "assessment_id",
        "tree_id",
        "agent_id",
        "observed_at",
        "likelihood_of_failure",
        "likelihood_of_impact",
        "consequences",
    ] {
        rejects(without(assessment(), f), f, Rule::Missing);
    }
    for f in ["sensor_id", "tree_id", "metric", "value", "ts"] {
        rejects(without(reading(), f), f, Rule::Missing);
        rejects(with(reading(), f, Value::Null), f, Rule::Missing);
    }
    rejects(without(reading(), "type"), "type", Rule::Missing);
    rejects(json!({"type":"tree","deleted":true,"updated_at":1795593600000i64}), "tree_id", Rule::Missing);
    rejects(json!({"type":"tree","tree_id":"T-1","deleted":true}), "updated_at", Rule::Missing);
}

#[test]
fn enumerations() {
    rejects(with(reading(), "type", json!("sensor")), "type", Rule::UnknownValue);
    rejects(with(tree(), "region", json!("us-west")), "region", Rule::UnknownValue);
    rejects(with(tree(), "target_occupancy", json!("often")), "target_occupancy", Rule::UnknownValue);
    rejects(with(assessment(), "likelihood_of_failure", json!("likely")), "likelihood_of_failure", Rule::UnknownValue);
    rejects(with(assessment(), "likelihood_of_impact", json!("HIGH")), "likelihood_of_impact", Rule::UnknownValue);
    rejects(with(assessment(), "consequences", json!("fatal")), "consequences", Rule::UnknownValue);
    rejects(with(reading(), "metric", json!("humidity")), "metric", Rule::UnknownValue);
    rejects(with(assessment(), "defects", json!([{"kind":"rot","severity":1}])), "defects[0].kind", Rule::UnknownValue);
    for r in ["us-east", "eu-west", "ap-southeast"] {
        accepts(with(tree(), "region", json!(r)));
    }
    for k in ["decay", "crack", "lean", "deadwood", "root_damage", "cavity", "canker", "included_bark", "hanger"] {
        accepts(with(assessment(), "defects", json!([{"kind": k, "severity": 1}])));
    }
}

#[test]
fn ranges_with_open_and_closed_ends() {
    let cases: [(Value, &str, &[f64], &[f64]); 11] = [
        (tree(), "lat", &[-90.0, 90.0, 0.0], &[-90.01, 90.01]),
        (tree(), "lon", &[-180.0, 180.0], &[-180.5, 180.5]),
        (tree(), "dbh_cm", &[0.01, 1500.0], &[0.0, 1500.1, -1.0]),
        (tree(), "height_m", &[0.1, 150.0], &[0.0, 150.1]),
        (tree(), "baseline_tilt_deg", &[0.0, 90.0], &[-0.1, 90.1]),
        (tree(), "baseline_sway_hz", &[0.01, 20.0], &[0.0, 20.01]),
        (assessment(), "crown_dieback_pct", &[0.0, 100.0], &[-1.0, 100.5]),
        (with(reading(), "metric", json!("tilt_deg")), "value", &[0.0, 90.0], &[-0.01, 90.01]),
        (with(reading(), "metric", json!("sway_hz")), "value", &[0.001, 20.0], &[0.0, 20.5]),
        (with(reading(), "metric", json!("soil_moisture_pct")), "value", &[0.0, 100.0], &[-0.5, 100.01]),
        (with(reading(), "metric", json!("wind_gust_ms")), "value", &[0.0, 120.0], &[-1.0, 120.01]),
    ];
    for (base, field, ok, bad) in cases {
        for x in ok {
            accepts(with(base.clone(), field, json!(x)));
        }
        for x in bad {
            rejects(with(base.clone(), field, json!(x)), field, Rule::OutOfRange);
        }
        rejects(with(base.clone(), field, json!("1")), field, Rule::WrongType);
    }
    rejects(with(assessment(), "revision", json!(0)), "revision", Rule::OutOfRange);
    rejects(with(assessment(), "revision", json!(1.5)), "revision", Rule::WrongType);
    accepts(with(assessment(), "revision", json!(3.0)));
    rejects(
        with(assessment(), "defects", json!([{"kind":"decay","severity":0}])),
        "defects[0].severity",
        Rule::OutOfRange,
    );
    rejects(
        with(assessment(), "defects", json!([{"kind":"decay","severity":6}])),
        "defects[0].severity",
        Rule::OutOfRange,
    );
    rejects(with(assessment(), "defects", json!([{"kind":"decay"}])), "defects[0].severity", Rule::Missing);
    rejects(
        with(assessment(), "defects", json!([{"kind":"decay","severity":2.5}])),
        "defects[0].severity",
        Rule::WrongType,
    );
    rejects(with(assessment(), "defects", json!(["decay"])), "defects[0]", Rule::WrongType);
    rejects(with(assessment(), "defects", json!({"kind":"decay"})), "defects", Rule::WrongType);
    let many: Vec<Value> = (0..33).map(|_| json!({"kind":"lean","severity":1})).collect();
    rejects(with(assessment(), "defects", json!(many)), "defects", Rule::TooMany);
    accepts(with(assessment(), "defects", json!(many[..32])));
}

#[test]
fn strings_types_and_non_finite_numbers() {
    accepts(with(tree(), "species", json!("é".repeat(128))));
    rejects(with(tree(), "species", json!("x".repeat(129))), "species", Rule::TooLong);
    accepts(with(assessment(), "notes", json!("n".repeat(4096))));
    rejects(with(assessment(), "notes", json!("n".repeat(4097))), "notes", Rule::TooLong);
    rejects(with(tree(), "deleted", json!("yes")), "deleted", Rule::WrongType);
    rejects(with(assessment(), "withdrawn", json!(1)), "withdrawn", Rule::WrongType);
    rejects(with(reading(), "value", json!(null)), "value", Rule::Missing);
    rejects(with(reading(), "value", json!([1])), "value", Rule::WrongType);
    // JSON cannot spell NaN or Infinity; a number beyond f64 is the way to send one.
    let line =
        br#"{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1e999,"ts":1795597200000}"#;
    let r = parse_event(line, None, Position::default()).unwrap_err();
    assert_eq!((r.field.as_str(), r.rule), ("value", Rule::NotFinite), "{r}");
    let r = parse_event(br#"{"type":"reading","value":NaN}"#, None, Position::default()).unwrap_err();
    assert_eq!(r.rule, Rule::InvalidJson);
}

#[test]
fn whole_message_rules() {
    for (bytes, rule) in [
        (&b"{\"type\":\"reading\""[..], Rule::InvalidJson),
        (b"not json", Rule::InvalidJson),
        (b"", Rule::InvalidJson),
        (b"{} {}", Rule::InvalidJson),
        (b"[1,2,3]", Rule::NotObject),
        (b"\"reading\"", Rule::NotObject),
        (b"null", Rule::NotObject),
        (b"\xff\xfe{}", Rule::InvalidJson),
    ] {
        let r = parse_event(bytes, None, Position::default()).unwrap_err();
        assert_eq!((r.field.as_str(), r.rule), ("", rule), "{:?}: {r}", String::from_utf8_lossy(bytes));
    }
    let r = parse_event(br#"{"type":"reading","ts":1,"ts":2}"#, None, Position::default()).unwrap_err();
    assert_eq!((r.field.as_str(), r.rule), ("ts", Rule::Duplicate));
    // 64 KiB: the limit itself is accepted, one byte more is not.
    let mut big = with(assessment(), "notes", json!("n")).to_string();
    let pad = 65_536 - big.len();
    big = big.replacen('{', &format!("{{\"pad\":\"{}\",", "p".repeat(pad - 9)), 1);
    assert_eq!(big.len(), 65_536);
    assert!(parse_event(big.as_bytes(), None, Position::default()).is_ok());
    let bigger = big.replacen("\"pad\":\"", "\"pad\":\"p", 1);
    let r = parse_event(bigger.as_bytes(), None, Position::default()).unwrap_err();
    assert_eq!(r.rule, Rule::TooLarge);
    assert!(r.to_string().contains("65537"), "{r}");
}

#[test]
fn generator_malformed_events_are_all_rejected_and_valid_ones_accepted() {
    use treeai_connectors::generator::{Generator, GeneratorConfig};
    let config = GeneratorConfig { trees: 200, bad_fraction: 0.3, ..Default::default() };
    let (mut ok, mut bad) = (0, 0);
    let mut rules = std::collections::BTreeSet::new();
    for e in Generator::new(config, 0, 1).take(20_000) {
        match parse_event(&e.json, None, Position::default()) {
            Ok(_) => ok += 1,
            Err(r) => {
                bad += 1;
                rules.insert(r.rule.as_str());
            }
        }
    }
    assert!((5_000..7_000).contains(&bad), "rejected {bad} of 20000 at bad_fraction 0.3");
    assert!(ok > 13_000);
    for rule in
        ["invalid_json", "missing", "wrong_type", "unknown_value", "out_of_range", "bad_id", "too_long", "too_large"]
    {
        assert!(rules.contains(rule), "no generated event broke {rule}: {rules:?}");
    }
}
