//! A listener whose connection ends: it says so, rather than fall silent.

use crate::{pool_for, unique};
use futures::StreamExt;
use momopool_tests::{Rt, pg};
use std::time::Duration;

/// The listener's next item, or `None` after 10 s.
async fn next(
    rt: &Rt,
    listener: &mut momopool_pg::Listener,
) -> Option<Option<Result<momopool_pg::Notification, momopool_pg::Error>>> {
    rt.timeout(Duration::from_secs(10), listener.next()).await
}

/// Sends `payload` on `channel` through `pool`, and checks that `listener` hears it.
async fn hears(
    rt: &Rt,
    pool: &momopool_pg::PgPool,
    listener: &mut momopool_pg::Listener,
    channel: &str,
    payload: &str,
) {
    pool.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .unwrap();
    let note = next(rt, listener)
        .await
        .expect("a notification within 10 s")
        .expect("the stream is open")
        .unwrap_or_else(|e| panic!("[{}] {e:?}", rt.name()));
    assert_eq!(note.payload(), payload, "[{}]", rt.name());
}

/// A listener whose backend is terminated yields a lost-connection error, then ends; a new
/// listener then hears what is sent.
pub(crate) async fn listener_reports_a_lost_connection(rt: Rt) {
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "listen_lost")), |b| b).await;
    let channel = unique(&rt, "listen_lost");
    let who = rt.name();
    let mut listener = pool.listen(&channel).await.unwrap();
    hears(&rt, &pool, &mut listener, &channel, "before").await;

    pg::terminate(&pool, listener.backend_pid()).await;
    let err = next(&rt, &mut listener)
        .await
        .expect("the loss reported within 10 s")
        .expect("an item before the end")
        .expect_err("the loss, not a notification");
    assert!(err.is_connection_lost(), "[{who}] {err:?}");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("57P01"),
        "[{who}] {err:?}"
    );
    let end = next(&rt, &mut listener).await.expect("the end at once");
    assert!(end.is_none(), "[{who}] the stream ends after its error");

    let mut listener = pool.listen(&channel).await.unwrap();
    hears(&rt, &pool, &mut listener, &channel, "after").await;
}
