//! Round trips of every schema version, and what a damaged record is refused as.

use ranger_proto::NodeId;

use super::*;
use crate::keyspace::PlacementId;

fn record() -> RangeRecord {
    RangeRecord {
        v: RECORD_VERSION,
        id: RangeId::FIRST,
        start: Key::empty(),
        end: Key::from("m"),
        state: RangeState::Active,
        parents: vec![],
        children: vec![],
        ever_activated: false,
        placements: vec![],
        history: RangeHistory::default(),
    }
}

fn range(id: u64) -> RangeId {
    RangeId::new(id).expect("not zero")
}

fn placement(id: u64, node: &str) -> Placement {
    Placement {
        id: PlacementId::new(id),
        node: NodeId::new(node).expect("not blank"),
        state: ranger_proto::PlacementState::Active,
        replaces: None,
        retiring: false,
        activate_sent: false,
        served: false,
    }
}

/// A record using every field and flag, with awkward keys.
fn busy_record() -> RangeRecord {
    let mut moving = placement(9, "node with spaces \"and quotes\"");
    moving.state = ranger_proto::PlacementState::Inactive;
    moving.replaces = Some(PlacementId::new(7));
    let mut source = placement(7, "n1");
    source.retiring = true;
    source.activate_sent = true;
    source.served = true;
    RangeRecord {
        v: RECORD_VERSION,
        id: range(12),
        start: Key::from("hex:6162"),
        end: Key::new(vec![0xff, 0x00, b'"']),
        state: RangeState::Subsuming,
        parents: vec![range(3)],
        children: vec![range(13), range(14)],
        ever_activated: true,
        placements: vec![source, moving],
        history: RangeHistory {
            split: Some(1_796_000_000_000),
            moved: Some(1_796_000_060_000),
            joined: Some(1),
        },
    }
}

fn round_trip(record: &RangeRecord) -> RangeRecord {
    RangeRecord::decode(&record.encode().expect("encodes")).expect("decodes")
}

#[test]
fn a_record_round_trips_in_every_version_and_only_version_3_keeps_the_history() {
    for v in READABLE_RECORD_VERSIONS {
        for mut r in [record(), busy_record()] {
            r.v = v;
            let mut expected = r.clone();
            if v < 3 {
                expected.history = RangeHistory::default();
            }
            assert_eq!(round_trip(&r), expected, "version {v}");
        }
    }
}

#[test]
fn a_version_2_record_loads_without_history_and_may_not_carry_any() {
    let stored = br#"{"v":2,"id":1,"start":"","end":"","state":"Active"}"#;
    let r = RangeRecord::decode(stored).expect("a v2 record loads");
    assert_eq!((r.v, r.history), (2, RangeHistory::default()));
    let with_history = br#"{"v":2,"id":1,"start":"","end":"","state":"Active","moved":5}"#;
    let err = RangeRecord::decode(with_history).expect_err("refused");
    assert!(
        matches!(
            err,
            RecordError::FieldNotInVersion {
                field: "moved",
                version: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn awkward_keys_round_trip_exactly() {
    let awkward = [
        Key::empty(),
        Key::new(vec![0u8]),
        Key::new(vec![0xc3, 0x28, 0xff]),
        Key::from("hex:00"),
        Key::from("b64:AA=="),
        Key::from("back\\\\slash \"quoted\""),
        Key::from("\u{e9}t\u{e9}"),
        Key::new(vec![0xab; 4096]),
        Key::new((0..=255u8).collect::<Vec<_>>()),
    ];
    for start in &awkward {
        let mut r = record();
        r.start = start.clone();
        r.end = Key::empty();
        assert_eq!(round_trip(&r).start, *start, "{start:?}");
        r.start = Key::empty();
        r.end = start.clone();
        assert_eq!(round_trip(&r).end, *start, "{start:?}");
    }
}

#[test]
fn version_3_is_what_the_keyspace_writes_and_is_readable_text() {
    let mut r = record();
    r.history.moved = Some(1_796_000_000_000);
    r.end = Key::from("k0000000006");
    let mut p = placement(5, "n5");
    p.activate_sent = true;
    p.served = true;
    r.placements.push(p);
    r.ever_activated = true;
    let text = String::from_utf8(r.encode().expect("encodes")).expect("text");
    assert_eq!(
        text,
        r#"{"v":3,"id":1,"start":"","end":"k0000000006","state":"Active","activated":true,"placements":[[5,"n5","Active","sent","served"]],"moved":1796000000000}"#
    );
    assert!(text.as_bytes().starts_with(v2::PREFIX_V3));
}

#[test]
fn version_3_takes_about_half_the_bytes_of_version_1() {
    let mut r = record();
    r.start = Key::from("k0000000005");
    r.end = Key::from("k0000000006");
    r.ever_activated = true;
    let mut p = placement(5, "n5");
    p.activate_sent = true;
    p.served = true;
    r.placements.push(p);
    let v2 = r.encode().expect("encodes").len();
    r.v = 1;
    let v1 = r.encode().expect("encodes").len();
    assert!(v2 * 2 <= v1, "v2 {v2} bytes, v1 {v1} bytes");
}

#[test]
fn a_version_1_record_as_an_older_build_wrote_it_still_loads() {
    let stored = br#"{"v":1,"id":4,"start":[107,49],"end":[],"state":"Active","parents":[2],"children":[],"ever_activated":true,"placements":[{"id":3,"node":"n2","state":"Active","replaces":null,"retiring":false,"activate_sent":true}]}"#;
    let r = RangeRecord::decode(stored).expect("a v1 record loads");
    assert_eq!(r.v, 1);
    assert_eq!(r.start, Key::from("k1"));
    assert_eq!(r.end, Key::empty());
    assert_eq!(r.parents, vec![range(2)]);
    assert!(r.ever_activated);
    let p = &r.placements[0];
    assert_eq!((p.id.get(), p.node.as_str()), (3, "n2"));
    assert!(p.activate_sent && !p.served && !p.retiring && p.replaces.is_none());
}

#[test]
fn a_version_2_record_with_its_fields_in_another_order_loads() {
    let stored = br#"{"id":4,"state":"Obsolete","end":"b","start":"a","v":2,"placements":[[3,"n2","Dropped","served","replaces=1"]]}"#;
    let r = RangeRecord::decode(stored).expect("loads");
    assert_eq!((r.v, r.state), (2, RangeState::Obsolete));
    assert_eq!(r.placements[0].replaces, Some(PlacementId::new(1)));
    assert!(r.placements[0].served);
}

#[test]
fn other_versions_are_refused_by_number() {
    for found in [0u64, 4, 99] {
        let stored = format!(r#"{{"v":{found},"id":1,"start":"","end":"","state":"Active"}}"#);
        let err = RangeRecord::decode(stored.as_bytes()).unwrap_err();
        assert!(
            matches!(err, RecordError::UnsupportedVersion { found: f } if f == found),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("version {found}")));
    }
    let mut r = record();
    r.v = 4;
    assert!(matches!(
        r.encode(),
        Err(RecordError::UnsupportedVersion { found: 4 })
    ));
}

#[test]
fn missing_versions_and_garbage_are_refused() {
    assert!(matches!(
        RangeRecord::decode(br#"{"id":1}"#),
        Err(RecordError::MissingVersion)
    ));
    assert!(matches!(
        RangeRecord::decode(b"not json"),
        Err(RecordError::Malformed(_))
    ));
    assert!(matches!(
        RangeRecord::decode(b"{\"v\":2,"),
        Err(RecordError::Malformed(_))
    ));
    // Right version, wrong shape: a zero range id is refused by RangeId itself.
    for bad in [
        &br#"{"v":1,"id":0,"start":[],"end":[],"state":"Active"}"#[..],
        br#"{"v":2,"id":0,"start":"","end":"","state":"Active"}"#,
    ] {
        assert!(
            matches!(RangeRecord::decode(bad), Err(RecordError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn a_version_2_record_with_a_bad_field_names_it() {
    let cases: [(&str, &str); 6] = [
        (
            r#"{"v":2,"id":1,"start":"hex:zz","end":"","state":"Active"}"#,
            "bad hex key",
        ),
        (
            r#"{"v":2,"id":1,"start":[1],"end":"","state":"Active"}"#,
            "a key as text",
        ),
        (
            r#"{"v":2,"id":1,"start":"","end":"","state":"Active","extra":1}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"v":2,"id":1,"start":"","end":"","state":"Active","placements":[[1,"n1"]]}"#,
            "invalid length 2",
        ),
        (
            r#"{"v":2,"id":1,"start":"","end":"","state":"Active","placements":[[1,"n1","Active","sent","sent"]]}"#,
            "flag sent is given twice",
        ),
        (
            r#"{"v":2,"id":1,"start":"","end":"","state":"Active","placements":[[1,"n1","Active","shiny"]]}"#,
            "unknown placement flag \"shiny\"",
        ),
    ];
    for (stored, expected) in cases {
        let err = RangeRecord::decode(stored.as_bytes()).unwrap_err();
        assert!(err.to_string().contains(expected), "{stored}: {err}");
    }
}
