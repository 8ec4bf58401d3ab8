use std::time::{Duration, Instant};

use ranger_consul::{BlockingQuery, PutOptions, QueryOptions};

#[tokio::test]
async fn a_blocking_get_returns_promptly_on_change() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    assert!(
        c.kv_put("watched", b"1", &PutOptions::default())
            .await
            .unwrap()
    );
    let first = c.kv_get("watched", QueryOptions::default()).await.unwrap();
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.kv_put("watched", b"2", &PutOptions::default())
                .await
                .unwrap()
        })
    };
    let started = Instant::now();
    let next = c
        .kv_get(
            "watched",
            QueryOptions::blocking(first.meta.index, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(writer.await.unwrap());
    assert!(
        elapsed >= Duration::from_millis(250),
        "it blocked ({elapsed:?})"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "it returned on the change ({elapsed:?})"
    );
    assert!(next.meta.index > first.meta.index);
    assert_eq!(next.value.unwrap().value, b"2");
}

#[tokio::test]
async fn a_blocking_get_times_out_with_the_same_index() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    assert!(
        c.kv_put("quiet", b"1", &PutOptions::default())
            .await
            .unwrap()
    );
    let first = c.kv_get("quiet", QueryOptions::default()).await.unwrap();
    let started = Instant::now();
    let next = c
        .kv_get(
            "quiet",
            QueryOptions::blocking(first.meta.index, Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "it waited ({elapsed:?})"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(next.meta.index, first.meta.index);
}

#[tokio::test]
async fn a_watch_sees_each_change_of_a_prefix() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let mut watch = BlockingQuery::new(Duration::from_secs(2));
    let first = watch.next(|o| c.kv_list("ranges/", o)).await;
    assert!(first.value.is_empty());
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..3u8 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                c.kv_put(&format!("ranges/{i}"), &[i], &PutOptions::default())
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = 0;
    while seen < 3 {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            watch.next(|o| c.kv_list("ranges/", o)),
        )
        .await
        .expect("the watch saw the change");
        seen = answer.value.len();
    }
    writer.await.unwrap();
    // Caught up: with nothing changing, no answer comes.
    let quiet = tokio::time::timeout(
        Duration::from_secs(3),
        watch.next(|o| c.kv_list("ranges/", o)),
    )
    .await;
    assert!(quiet.is_err(), "nothing changed, so no answer");
}
