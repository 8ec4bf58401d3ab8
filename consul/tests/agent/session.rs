use std::time::Duration;

use ranger_consul::{
    Error, PutOptions, QueryOptions, SessionBehavior, SessionKeeper, SessionLoss, SessionRequest,
    SessionStatus,
};

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn renew_info_destroy() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let mut request = SessionRequest::with_ttl(TTL, SessionBehavior::Delete);
    request.name = Some("controller".into());
    let id = c.session_create(&request).await.unwrap();
    let info = c.session_info(&id).await.unwrap().unwrap();
    assert_eq!(info.name, "controller");
    assert_eq!(info.behavior, SessionBehavior::Delete);
    assert_eq!(info.ttl, "10s");
    assert_eq!(info.node, agent.node());
    assert!(info.node_checks.is_empty());
    assert_eq!(c.session_renew(&id).await.unwrap().id, id);

    // Behaviour "delete": the locked key goes with the session.
    assert!(
        c.kv_put("locked", b"x", &PutOptions::acquire(id.clone()))
            .await
            .unwrap()
    );
    c.session_destroy(&id).await.unwrap();
    assert!(c.session_info(&id).await.unwrap().is_none());
    assert!(matches!(c.session_renew(&id).await, Err(Error::SessionNotFound(s)) if s == id));
    assert!(
        c.kv_get("locked", QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_none()
    );
    // Destroying again is harmless.
    c.session_destroy(&id).await.unwrap();
}

#[tokio::test]
async fn ttl_bounds_are_checked() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let request = SessionRequest::with_ttl(Duration::from_secs(5), SessionBehavior::Release);
    assert!(matches!(
        c.session_create(&request).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn keeper_renews_and_reports_loss() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let id = c
        .session_create(&SessionRequest::with_ttl(TTL, SessionBehavior::Release))
        .await
        .unwrap();
    let keeper =
        SessionKeeper::with_interval(c.clone(), id.clone(), TTL, Duration::from_millis(200));
    let mut status = keeper.subscribe();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(keeper.status(), SessionStatus::Alive);
    assert!(c.session_info(&id).await.unwrap().is_some());

    // Someone else ends the session (an operator, a failing check).
    c.session_destroy(&id).await.unwrap();
    let loss = tokio::time::timeout(Duration::from_secs(5), keeper.lost())
        .await
        .expect("the keeper noticed within 5 s");
    assert_eq!(loss, SessionLoss::NotFound);
    status.changed().await.unwrap();
    assert_eq!(*status.borrow(), SessionStatus::Lost(SessionLoss::NotFound));
}

#[tokio::test]
async fn keeper_keeps_a_session_past_its_ttl_and_shutdown_destroys_it() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let id = c
        .session_create(&SessionRequest::with_ttl(TTL, SessionBehavior::Release))
        .await
        .unwrap();
    assert!(
        c.kv_put("lock", b"x", &PutOptions::acquire(id.clone()))
            .await
            .unwrap()
    );
    // Default interval: TTL/2. Consul ends an unrenewed session between one and
    // two TTLs; 25 s is past both.
    let keeper = SessionKeeper::start(c.clone(), id.clone(), TTL);
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(keeper.status(), SessionStatus::Alive);
    assert!(c.session_info(&id).await.unwrap().is_some());
    let holder = c
        .kv_get("lock", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(holder.session.as_deref(), Some(id.as_str()));

    keeper.shutdown().await.unwrap();
    assert!(c.session_info(&id).await.unwrap().is_none());
    let holder = c
        .kv_get("lock", QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(holder.session, None);
}

#[tokio::test]
async fn keeper_reports_loss_when_consul_is_unreachable() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let id = c
        .session_create(&SessionRequest::with_ttl(TTL, SessionBehavior::Release))
        .await
        .unwrap();
    // A short assumed TTL keeps the test quick; what counts is that renewals
    // failing for a whole TTL end in Unconfirmed.
    let keeper =
        SessionKeeper::with_interval(c, id, Duration::from_secs(2), Duration::from_millis(200));
    drop(agent);
    let loss = tokio::time::timeout(Duration::from_secs(10), keeper.lost())
        .await
        .expect("the keeper gave up within 10 s");
    assert!(matches!(loss, SessionLoss::Unconfirmed { .. }), "{loss:?}");
}
