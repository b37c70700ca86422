//! A one-slot wake-up signal for a single-threaded loop (a shard's rounds, a
//! load-generator client): any task that adds work calls [`Wake::notify`];
//! the loop awaits [`Wake::wait`].

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Wake-up signal (single-threaded).
#[derive(Default)]
pub struct Wake {
    pending: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Wake {
    /// Marks work pending and wakes the waiting loop.
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Resolves once work is pending (at once if it already is), clearing it.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.pending.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}
