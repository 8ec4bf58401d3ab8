//! The KV example's wire contract, byte by byte: Get, Put and Dump must stay
//! wire-compatible with the Go reference's KV example (PROTOCOL.md, package `kv`),
//! so that its hammer and clients work against our nodes.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use prost::Message;
use ranger_kv::pb as kv;

/// Encodes `message`, compares with `golden`, and decodes `golden` back.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(message: M, golden: &[u8]) {
    let encoded = message.encode_to_vec();
    assert_eq!(encoded, golden, "encoding of {message:?}");
    let decoded = M::decode(golden).expect("golden bytes decode");
    assert_eq!(decoded, message, "decoding of golden bytes");
}

#[test]
fn kv_messages_keep_the_reference_encoding() {
    assert_wire(kv::GetRequest { key: "k".into() }, &[0x0a, 1, b'k']);
    assert_wire(
        kv::PutRequest {
            key: "k".into(),
            value: b"v".to_vec(),
        },
        &[0x0a, 1, b'k', 0x12, 1, b'v'],
    );
    assert_wire(kv::DumpRequest { range_ident: 9 }, &[0x08, 9]);
    assert_wire(
        kv::DumpResponse {
            pairs: vec![kv::Pair {
                key: "k".into(),
                value: b"v".to_vec(),
            }],
        },
        &[0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v'],
    );
}

/// Our extension's encoding, fixed so that a proxy and a node of different
/// builds keep understanding each other's batches.
#[test]
fn batch_messages_keep_their_encoding() {
    assert_wire(
        kv::BatchRequest {
            ops: vec![
                kv::BatchOp {
                    op: Some(kv::batch_op::Op::Get(kv::GetRequest { key: "k".into() })),
                },
                kv::BatchOp {
                    op: Some(kv::batch_op::Op::Delete(kv::DeleteRequest {
                        key: "k".into(),
                    })),
                },
            ],
        },
        &[
            0x0a, 5, 0x0a, 3, 0x0a, 1, b'k', // op 1: get = 1
            0x0a, 5, 0x1a, 3, 0x0a, 1, b'k', // op 2: delete = 3
        ],
    );
    assert_wire(
        kv::BatchResponse {
            results: vec![kv::BatchResult {
                code: 5,
                message: "m".into(),
                value: b"v".to_vec(),
            }],
        },
        &[0x0a, 8, 0x08, 5, 0x12, 1, b'm', 0x1a, 1, b'v'],
    );
}

#[test]
fn the_service_is_kv_dot_kv() {
    assert_eq!(kv::kv_server::SERVICE_NAME, "kv.KV");
}
