//! Golden bytes for every message of the contract: each test encodes one of our
//! messages and compares it with bytes written by hand from PROTOCOL.md's field
//! numbers and wire types. A renumbered or retyped field breaks one of these, which
//! is what keeps us wire-compatible with the Go reference.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use prost::Message;
use ranger_proto::pb::ranger as pb;

fn meta(ident: u64) -> Option<pb::RangeMeta> {
    Some(pb::RangeMeta {
        ident,
        start: Default::default(),
        end: Default::default(),
    })
}

#[track_caller]
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(message: M, golden: &[u8]) {
    let encoded = message.encode_to_vec();
    assert_eq!(encoded, golden, "encoding of {message:?}");
    let decoded = M::decode(golden).expect("golden bytes decode");
    assert_eq!(decoded, message, "decoding of golden bytes");
}

#[test]
fn range_meta() {
    let m = pb::RangeMeta {
        ident: 5,
        start: prost::bytes::Bytes::from_static(b"a"),
        end: prost::bytes::Bytes::from_static(b"b"),
    };
    assert_wire(m, &[0x08, 5, 0x12, 1, b'a', 0x1a, 1, b'b']);
}

#[test]
fn placement() {
    let p = pb::Placement {
        node: "n:1".into(),
        state: pb::PlacementState::PlacementActive as i32,
    };
    assert_wire(p, &[0x0a, 3, b'n', b':', b'1', 0x10, 3]);
}

#[test]
fn load_info_reference_fields_and_extensions() {
    let reference = pb::LoadInfo {
        keys: 7,
        splits: vec!["m".into()],
        ..Default::default()
    };
    assert_wire(reference, &[0x08, 7, 0x12, 1, b'm']);
    let extended = pb::LoadInfo {
        bytes: 1,
        split_keys: vec![vec![0xff]],
        ..Default::default()
    };
    assert_wire(extended, &[0x18, 1, 0x32, 1, 0xff]);
    // Load-based split keys in field 7, apart from the size-based ones in 6.
    let by_load = pb::LoadInfo {
        split_keys: vec![vec![0x01]],
        load_split_keys: vec![vec![0xfe, 0x00]],
        ..Default::default()
    };
    assert_wire(by_load, &[0x32, 1, 0x01, 0x3a, 2, 0xfe, 0x00]);
    // Load cuts in field 8: each a message of key (1) and share below it (2, a double).
    let cuts = pb::LoadInfo {
        load_cuts: vec![pb::LoadCut {
            key: vec![b'k'],
            below: 0.5,
        }],
        ..Default::default()
    };
    assert_wire(
        cuts,
        &[0x42, 12, 0x0a, 1, b'k', 0x11, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f],
    );
}

#[test]
fn range_info() {
    let ri = pb::RangeInfo {
        meta: meta(1),
        state: pb::RemoteState::RemotePreparing as i32,
        info: Some(pb::LoadInfo {
            keys: 2,
            ..Default::default()
        }),
    };
    assert_wire(ri, &[0x0a, 2, 0x08, 1, 0x10, 3, 0x1a, 2, 0x08, 2]);
}

#[test]
fn prepare_request_with_parents_in_field_3() {
    let req = pb::PrepareRequest {
        range: meta(2),
        parents: vec![pb::Parent {
            range: meta(1),
            parent: vec![7],
            placements: vec![pb::Placement {
                node: "a".into(),
                state: 3,
            }],
        }],
        term: 0,
    };
    #[rustfmt::skip]
    let golden = [
        0x0a, 2, 0x08, 2,
        0x1a, 14,
            0x0a, 2, 0x08, 1,
            0x12, 1, 7,
            0x1a, 5, 0x0a, 1, b'a', 0x10, 3,
    ];
    assert_wire(req, &golden);
}

#[test]
fn prepare_response_and_failure_extension() {
    let ok = pb::PrepareResponse {
        range_info: Some(pb::RangeInfo {
            meta: meta(1),
            state: 1,
            info: None,
        }),
        failure: None,
    };
    assert_wire(ok, &[0x0a, 6, 0x0a, 2, 0x08, 1, 0x10, 1]);
    let failed = pb::ActivateResponse {
        state: pb::RemoteState::RemoteInactive as i32,
        failure: Some(pb::CallbackFailure {
            message: "x".into(),
        }),
    };
    assert_wire(failed, &[0x08, 1, 0x7a, 3, 0x0a, 1, b'x']);
}

#[test]
fn activate_deactivate_drop() {
    assert_wire(
        pb::ActivateRequest {
            range: 3,
            force: true,
            term: 0,
        },
        &[0x08, 3, 0x10, 1],
    );
    assert_wire(
        pb::ActivateResponse {
            state: 2,
            failure: None,
        },
        &[0x08, 2],
    );
    assert_wire(pb::DeactivateRequest { range: 3, term: 0 }, &[0x08, 3]);
    assert_wire(
        pb::DeactivateResponse {
            state: 5,
            failure: None,
        },
        &[0x08, 5],
    );
    assert_wire(
        pb::DropRequest {
            range: 3,
            force: true,
            term: 0,
        },
        &[0x08, 3, 0x10, 1],
    );
    assert_wire(
        pb::DropResponse {
            state: 7,
            failure: None,
        },
        &[0x08, 7],
    );
}

#[test]
fn info_and_ranges() {
    // The reference sends an empty InfoRequest: no lease.
    assert_wire(
        pb::InfoRequest {
            lease_millis: 0,
            term: 0,
            groups: vec![],
        },
        &[],
    );
    assert_wire(
        pb::InfoRequest {
            lease_millis: 300,
            term: 0,
            groups: vec![],
        },
        &[0x08, 0xac, 0x02],
    );
    let info = pb::InfoResponse {
        ranges: vec![pb::RangeInfo {
            meta: meta(1),
            state: 2,
            info: None,
        }],
        want_drain: true,
        capacity: 0.0,
    };
    assert_wire(info, &[0x0a, 6, 0x0a, 2, 0x08, 1, 0x10, 2, 0x10, 1]);
    // Our capacity (field 16, a double): reference peers skip it.
    let info = pb::InfoResponse {
        ranges: Vec::new(),
        want_drain: false,
        capacity: 2.0,
    };
    assert_wire(info, &[0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x40]);
    let change = pb::RangesResponse {
        meta: meta(1),
        state: 2,
    };
    assert_wire(change, &[0x0a, 2, 0x08, 1, 0x10, 2]);
}

#[test]
fn every_command_and_the_probe_carry_the_controller_term_in_field_16() {
    // Extension (SCENARIOS.md #43): `term = 16`, a varint with a two-byte tag
    // (16 << 3 = 0x80 0x01). 0, what the reference sends, is not encoded at all.
    const TERM_7: [u8; 3] = [0x80, 0x01, 7];
    let with_term = |prefix: &[u8]| [prefix, &TERM_7[..]].concat();
    assert_wire(
        pb::PrepareRequest {
            range: meta(2),
            parents: vec![],
            term: 7,
        },
        &with_term(&[0x0a, 2, 0x08, 2]),
    );
    assert_wire(
        pb::ActivateRequest {
            range: 3,
            force: false,
            term: 7,
        },
        &with_term(&[0x08, 3]),
    );
    assert_wire(
        pb::DeactivateRequest { range: 3, term: 7 },
        &with_term(&[0x08, 3]),
    );
    assert_wire(
        pb::DropRequest {
            range: 3,
            force: true,
            term: 7,
        },
        &with_term(&[0x08, 3, 0x10, 1]),
    );
    assert_wire(
        pb::InfoRequest {
            lease_millis: 300,
            term: 7,
            groups: vec![],
        },
        &with_term(&[0x08, 0xac, 0x02]),
    );
    // A term too big for one byte: 300 = 0xac 0x02.
    assert_wire(
        pb::InfoRequest {
            lease_millis: 0,
            term: 300,
            groups: vec![],
        },
        &[0x80, 0x01, 0xac, 0x02],
    );
    // Our replica groups (field 17, tag 0x8a 0x01): range 7, epoch 5,
    // primary "a", members ["a"].
    assert_wire(
        pb::InfoRequest {
            lease_millis: 0,
            term: 0,
            groups: vec![pb::ReplicaGroup {
                range: 7,
                epoch: 5,
                primary: "a".into(),
                members: vec!["a".into()],
            }],
        },
        &[
            0x8a, 0x01, 10, 0x08, 7, 0x10, 5, 0x1a, 1, b'a', 0x22, 1, b'a',
        ],
    );
}

#[test]
fn orchestrator_requests() {
    assert_wire(
        pb::MoveRequest {
            range: 4,
            node: "b".into(),
        },
        &[0x08, 4, 0x12, 1, b'b'],
    );
    assert_wire(
        pb::SplitRequest {
            range: 1,
            boundary: b"m".to_vec(),
            node_left: "a".into(),
            node_right: "b".into(),
        },
        &[0x08, 1, 0x12, 1, b'm', 0x1a, 1, b'a', 0x22, 1, b'b'],
    );
    assert_wire(
        pb::JoinRequest {
            range_left: 1,
            range_right: 2,
            node: "c".into(),
        },
        &[0x08, 1, 0x10, 2, 0x1a, 1, b'c'],
    );
}

#[test]
fn debug_responses() {
    let range = pb::RangeResponse {
        meta: meta(1),
        state: pb::RangeState::RangeSubsuming as i32,
        parents: vec![],
        children: vec![2, 3],
        placements: vec![pb::PlacementWithRangeInfo {
            placement: Some(pb::Placement {
                node: "a".into(),
                state: 3,
            }),
            range_info: None,
        }],
        unavailable: String::new(),
        unavailable_millis: 0,
    };
    #[rustfmt::skip]
    let golden = [
        0x0a, 2, 0x08, 1,
        0x10, 2,
        0x22, 2, 2, 3,
        0x2a, 7, 0x0a, 5, 0x0a, 1, b'a', 0x10, 3,
    ];
    assert_wire(range, &golden);
    // Extension: unavailable = 16 (string), unavailable_millis = 17 (varint); field
    // numbers above 15 take a two-byte tag.
    let unavailable = pb::RangeResponse {
        unavailable: "x".into(),
        unavailable_millis: 5,
        ..Default::default()
    };
    assert_wire(unavailable, &[0x82, 0x01, 1, b'x', 0x88, 0x01, 5]);

    let node = pb::NodeResponse {
        node: Some(pb::NodeMeta {
            ident: "a".into(),
            address: "h:1".into(),
            want_drain: true,
        }),
        ranges: vec![pb::NodeRange {
            meta: meta(1),
            state: 3,
        }],
        capacity: 0.0,
    };
    #[rustfmt::skip]
    let golden = [
        0x0a, 10, 0x0a, 1, b'a', 0x12, 3, b'h', b':', b'1', 0x18, 1,
        0x12, 6, 0x0a, 2, 0x08, 1, 0x18, 3,
    ];
    assert_wire(node, &golden);

    // Extension: capacity = 16 (double, fixed64: tag 0x81 0x01), 2.0 little-endian.
    let capacity = pb::NodeResponse {
        capacity: 2.0,
        ..Default::default()
    };
    assert_wire(capacity, &[0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x40]);
}

#[test]
fn service_names() {
    // Method paths are `/<service>/<Method>`; the node SDK's tests check the full
    // paths on a live server.
    assert_eq!(pb::node_server::SERVICE_NAME, "ranger.Node");
    assert_eq!(pb::orchestrator_server::SERVICE_NAME, "ranger.Orchestrator");
    assert_eq!(pb::debug_server::SERVICE_NAME, "ranger.Debug");
}
