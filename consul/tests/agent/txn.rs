use std::time::Duration;

use ranger_consul::{Error, PutOptions, QueryOptions, SessionBehavior, SessionRequest, TxnOp};

#[tokio::test]
async fn commits_all_ops_and_returns_results() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let results = c
        .txn(&[
            TxnOp::check_not_exists("t/a"),
            TxnOp::set("t/a", vec![0xffu8, 0]),
            TxnOp::cas("t/b", b"b".to_vec(), 0),
            TxnOp::get("t/a"),
        ])
        .await
        .unwrap()
        .results;
    assert_eq!(results.len(), 3, "two writes and one get");
    assert_eq!(results[2].key, "t/a");
    assert_eq!(results[2].value, vec![0xff, 0]);
    let list = c
        .kv_list("t/", QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert_eq!(list.len(), 2);
}

#[tokio::test]
async fn a_failed_check_rolls_back_every_op() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    assert!(c.kv_put("t/c", b"c", &PutOptions::default()).await.unwrap());
    let index = c
        .kv_get("t/c", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap()
        .modify_index;
    let error = c
        .txn(&[
            TxnOp::set("t/a", b"a".to_vec()),
            TxnOp::delete("t/c"),
            TxnOp::check_index("t/c", index + 1),
            TxnOp::set("t/b", b"b".to_vec()),
        ])
        .await
        .unwrap_err();
    let errors = error.txn_errors().expect("a rolled-back transaction");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].op_index, 2);
    // Nothing happened: t/a and t/b absent, t/c still there.
    let keys = c
        .kv_keys("t/", None, QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert_eq!(keys, ["t/c"]);

    // With the right index it commits (the check comes before the delete:
    // operations apply in order).
    c.txn(&[
        TxnOp::check_index("t/c", index),
        TxnOp::set("t/a", b"a".to_vec()),
        TxnOp::delete_cas("t/c", index),
        TxnOp::set("t/b", b"b".to_vec()),
    ])
    .await
    .unwrap();
    let keys = c
        .kv_keys("t/", None, QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert_eq!(keys, ["t/a", "t/b"]);
}

#[tokio::test]
async fn more_than_64_ops_are_refused_client_side() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let ops: Vec<_> = (0..65)
        .map(|i| TxnOp::set(format!("t/{i:03}"), b"x".to_vec()))
        .collect();
    let error = c.txn(&ops).await.unwrap_err();
    assert!(
        matches!(error, Error::TxnTooManyOps { ops: 65, max: 64 }),
        "{error}"
    );
    assert!(
        c.kv_keys("t/", None, QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_empty()
    );
    // 64 is Consul's limit and goes through.
    assert_eq!(c.txn(&ops[..64]).await.unwrap().results.len(), 64);
}

#[tokio::test]
async fn check_session_fences_a_destroyed_sessions_writes() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let mut request = SessionRequest::with_ttl(Duration::from_secs(30), SessionBehavior::Release);
    request.lock_delay = Some(Duration::ZERO);
    let session = c.session_create(&request).await.unwrap();
    c.txn(&[TxnOp::lock("leader", b"me".to_vec(), session.clone())])
        .await
        .unwrap();
    let holder = c
        .kv_get("leader", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(holder.session.as_deref(), Some(session.as_str()));

    let fenced_write = |value: &'static [u8]| {
        vec![
            TxnOp::check_session("leader", session.clone()),
            TxnOp::set("state", value.to_vec()),
        ]
    };
    c.txn(&fenced_write(b"v1")).await.unwrap();

    c.session_destroy(&session).await.unwrap();
    let error = c.txn(&fenced_write(b"v2")).await.unwrap_err();
    let errors = error.txn_errors().expect("a rolled-back transaction");
    assert_eq!(errors[0].op_index, 0, "{error}");
    let state = c
        .kv_get("state", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(state.value, b"v1");
    // The lock was released with the session; the key stays.
    let holder = c
        .kv_get("leader", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(holder.session, None);
}
