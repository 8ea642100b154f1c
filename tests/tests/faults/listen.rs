//! B3 for a listener: its connection goes silently dead, and its keepalive finds out.

use crate::{EPSILON, admin_for, builder, proxy_to, unique, via, within};
use futures::StreamExt;
use momopool_tests::{Rt, pg};
use std::time::{Duration, Instant};

/// How long the listener may be quiet before it pings.
const QUIET: Duration = Duration::from_millis(200);
/// How long its ping may wait for an answer (the pool's recycle timeout).
const ANSWER_WITHIN: Duration = Duration::from_millis(500);

/// A listener blackholed by the proxy (half-open: the kernel still acknowledges, so nothing
/// but a request notices) yields a lost-connection error within its quiet time plus the
/// ping's limit, then ends. Before that, answered pings keep it open and hearing.
pub(crate) async fn b3_listener_keepalive_finds_a_silently_dead_connection(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let app = unique(&rt, "b3_listener");
    let pool = builder(&rt, via(server, &proxy, &app))
        .min_size(1)
        .max_size(2)
        .configure(|b| b.recycle_timeout(ANSWER_WITHIN))
        .build_eager()
        .await
        .unwrap();
    let admin = admin_for(&rt, server, &app).await;
    let channel = unique(&rt, "b3_listener");
    let who = rt.name();
    let mut listener = pool.listen(&channel).await.unwrap();
    listener.keepalive(Some(QUIET));

    // Several pings go out and are answered: the stream stays open, quiet.
    let quiet = rt.timeout(QUIET * 4, listener.next()).await;
    assert!(quiet.is_none(), "[{who}] nothing to hear yet: {quiet:?}");
    admin
        .execute("SELECT pg_notify($1, 'still here')", &[&channel])
        .await
        .unwrap();
    let note = within(
        &rt,
        Duration::from_secs(5),
        "a notification",
        listener.next(),
    )
    .await;
    assert_eq!(note.unwrap().unwrap().payload(), "still here", "[{who}]");

    // A ping on its way (slowed by the proxy) when the keepalive is set again: it is waited
    // for, not dropped, so the connection stays usable.
    proxy.delay(Duration::from_millis(120));
    let quiet = rt.timeout(QUIET + QUIET / 2, listener.next()).await;
    assert!(quiet.is_none(), "[{who}] a ping is on its way: {quiet:?}");
    listener.keepalive(Some(QUIET));
    proxy.delay(Duration::ZERO);
    within(
        &rt,
        Duration::from_secs(5),
        "a LISTEN",
        listener.listen(&format!("{channel}_2")),
    )
    .await
    .unwrap_or_else(|e| panic!("[{who}] the listener still works: {e:?}"));

    proxy.blackhole();
    let started = Instant::now();
    let err = within(
        &rt,
        Duration::from_secs(5),
        "the keepalive",
        listener.next(),
    )
    .await
    .expect("an item before the end")
    .expect_err("the ping's failure, not a notification");
    let took = started.elapsed();
    assert!(err.is_connection_lost(), "[{who}] {err:?}");
    assert!(
        took <= QUIET + ANSWER_WITHIN + EPSILON,
        "[{who}] found after {took:?}"
    );
    assert!(
        listener.next().await.is_none(),
        "[{who}] then the stream ends"
    );
    drop(listener);

    // The pool itself is untouched by the listener's loss once the link passes again.
    proxy.pass();
    let one: i32 = within(
        &rt,
        Duration::from_secs(10),
        "a query",
        pool.query_one("SELECT 1", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(one, 1, "[{who}]");
}
