use ranger_consul::{DeleteOptions, Error, PutOptions, QueryOptions};

#[tokio::test]
async fn binary_values_round_trip() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let value: Vec<u8> = vec![0xff, 0xfe, 0x00, 0x80, b'k', 0xc3];
    assert!(std::str::from_utf8(&value).is_err());
    let put = PutOptions {
        flags: Some(42),
        ..PutOptions::default()
    };
    assert!(c.kv_put("ranges/a b/1", &value, &put).await.unwrap());
    assert!(
        c.kv_put("ranges/a b/2", b"", &PutOptions::default())
            .await
            .unwrap()
    );
    assert!(
        c.kv_put("other", b"x", &PutOptions::default())
            .await
            .unwrap()
    );

    let got = c
        .kv_get("ranges/a b/1", QueryOptions::default())
        .await
        .unwrap();
    let pair = got.value.unwrap();
    assert_eq!(pair.value, value);
    assert_eq!(pair.flags, 42);
    assert!(pair.modify_index > 0 && pair.create_index == pair.modify_index);
    assert!(got.meta.index >= pair.modify_index);
    assert!(got.meta.known_leader);

    let list = c
        .kv_list("ranges/", QueryOptions::default())
        .await
        .unwrap()
        .value;
    let keys: Vec<_> = list.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["ranges/a b/1", "ranges/a b/2"]);
    assert!(list[1].value.is_empty());

    let keys = c
        .kv_keys("", Some("/"), QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert_eq!(keys, ["other", "ranges/"]);

    assert!(
        c.kv_get("missing", QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_none()
    );
    assert!(
        c.kv_list("missing/", QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_empty()
    );

    let recurse = DeleteOptions {
        recurse: true,
        ..DeleteOptions::default()
    };
    assert!(c.kv_delete("ranges/", &recurse).await.unwrap());
    assert!(
        c.kv_list("ranges/", QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_empty()
    );
    assert!(
        c.kv_get("other", QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_some()
    );
}

#[tokio::test]
async fn compare_and_set() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    assert!(
        c.kv_put("k", b"v1", &PutOptions::cas(0)).await.unwrap(),
        "cas 0 creates"
    );
    assert!(
        !c.kv_put("k", b"v2", &PutOptions::cas(0)).await.unwrap(),
        "cas 0 fails if present"
    );
    let index = c
        .kv_get("k", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap()
        .modify_index;
    assert!(
        !c.kv_put("k", b"v2", &PutOptions::cas(index + 1000))
            .await
            .unwrap()
    );
    assert!(c.kv_put("k", b"v2", &PutOptions::cas(index)).await.unwrap());
    assert!(
        !c.kv_put("k", b"v3", &PutOptions::cas(index)).await.unwrap(),
        "stale index"
    );
    let pair = c
        .kv_get("k", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(pair.value, b"v2");

    let stale = DeleteOptions {
        cas: Some(index),
        ..DeleteOptions::default()
    };
    assert!(!c.kv_delete("k", &stale).await.unwrap());
    let current = DeleteOptions {
        cas: Some(pair.modify_index),
        ..DeleteOptions::default()
    };
    assert!(c.kv_delete("k", &current).await.unwrap());
    assert!(
        c.kv_get("k", QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_none()
    );
}

#[tokio::test]
async fn oversized_values_are_refused_before_sending() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let big = vec![7u8; 512 * 1024 + 1];
    let error = c
        .kv_put("big", &big, &PutOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::ValueTooLarge { size, max, .. } if size == big.len() && max == 512 * 1024)
    );
    // The largest allowed value goes through.
    assert!(
        c.kv_put("big", &big[1..], &PutOptions::default())
            .await
            .unwrap()
    );
    let pair = c
        .kv_get("big", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(pair.value.len(), 512 * 1024);
}
