//! A dependency-free [`Runtime`] on plain OS threads, for doctests and small tools.

use crate::runtime::{BoxFuture, Runtime};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

/// A [`Runtime`] that runs every spawned task on its own OS thread with
/// `futures::executor::block_on`, and every sleep on a short-lived timer thread.
///
/// It needs no async runtime at all, which makes it handy for doctests, command-line tools and
/// tests of a custom [`Manager`](crate::Manager). It is not built for load: use
/// `momopool-tokio`, `momopool-smol` or `momopool-async-std` in services.
///
/// # Examples
///
/// ```
/// use momopool::{Runtime, ThreadRuntime};
/// use std::time::{Duration, Instant};
///
/// let started = Instant::now();
/// futures::executor::block_on(ThreadRuntime.sleep(Duration::from_millis(20)));
/// assert!(started.elapsed() >= Duration::from_millis(20));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRuntime;

impl Runtime for ThreadRuntime {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        std::thread::spawn(move || futures::executor::block_on(task));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let shared: Arc<Mutex<(bool, Option<Waker>)>> = Arc::new(Mutex::new((false, None)));
        let timer = Arc::clone(&shared);
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            let waker = {
                let mut state = timer.lock().unwrap_or_else(|e| e.into_inner());
                state.0 = true;
                state.1.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        });
        Box::pin(std::future::poll_fn(move |cx| {
            let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
            if state.0 {
                Poll::Ready(())
            } else {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }))
    }
}
