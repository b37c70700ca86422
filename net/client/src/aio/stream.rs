//! Scans as pages and watches as streams, for the async client.
//!
//! A [`WatchStream`] runs the blocking client's watch
//! ([`crate::watch_client`]: one resuming stream per region, splits
//! followed, resume tokens) on a thread of its own and hands its changes to
//! the async side through a bounded channel: a caller that stops reading
//! holds the watch back (the servers then catch it up from their history),
//! never memory.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use corekv_types::watch::Change;
use corekv_types::Consistency;
use tokio::sync::{mpsc, oneshot};

use super::AsyncClient;
use crate::client::{Client, ClientError, Result};
use crate::message::{Op, Outcome};
use crate::watch_client::{ResumeToken, Watch};

/// Changes a watch stream holds for its reader at most.
const STREAM_BUFFER: usize = 1024;

/// The pages of a scan of a prefix (see [`AsyncClient::scan_prefix`]).
pub struct ScanPages {
    client: AsyncClient,
    prefix: Bytes,
    next: Option<u64>,
    limit: u32,
    keys_only: bool,
}

impl ScanPages {
    /// Keys per page at most (1..=10000; default 1000).
    pub fn page_size(mut self, limit: u32) -> ScanPages {
        self.limit = limit;
        self
    }

    /// Leave the values out.
    pub fn keys_only(mut self) -> ScanPages {
        self.keys_only = true;
        self
    }

    /// The next page's keys (in hash order, each a `Put` with its record;
    /// never empty), or `None` when every region was read. Each page is a
    /// linearizable read of one region; together they are not one
    /// snapshot, but every key that lives from the first page to the last
    /// is returned exactly once, whatever splits or leader moves happen.
    pub async fn next_page(&mut self) -> Option<Result<Vec<Change>>> {
        loop {
            let from_hash = self.next?;
            let op = Op::Scan {
                from_hash,
                limit: self.limit,
                keys_only: self.keys_only,
                consistency: Consistency::Linearizable,
                prefix: self.prefix.clone(),
            };
            match self.client.execute(from_hash, op, true).await {
                Ok((
                    Outcome::Scanned {
                        items, next_hash, ..
                    },
                    _,
                    _,
                )) => {
                    self.next = next_hash;
                    if !items.is_empty() {
                        return Some(Ok(items));
                    }
                }
                Ok((other, _, _)) => {
                    self.next = None;
                    let e = ClientError::Protocol(format!("scan answered {other:?}"));
                    return Some(Err(e));
                }
                // Retried already; the caller may call again to retry the
                // same page.
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A running watch: a [`futures_core::Stream`] of changes (and of errors
/// that ended some of its keys' streams). Dropping it stops the watch.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<Change>>,
    stop: Arc<AtomicBool>,
    token: Arc<Mutex<Option<ResumeToken>>>,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl WatchStream {
    /// The next change, or the error that ended some keys' streams (the
    /// others go on). The stream does not end by itself.
    pub async fn next(&mut self) -> Option<Result<Change>> {
        self.rx.recv().await
    }

    /// Where a prefix watch stands: every change up to each part's cursor
    /// was handed to this stream's reader, or is in its buffer (at most
    /// [`STREAM_BUFFER`] changes); see [`Watch::resume_token`]. `None` for
    /// a watch of keys.
    pub fn resume_token(&self) -> Option<ResumeToken> {
        self.token.lock().unwrap().clone()
    }
}

impl futures_core::Stream for WatchStream {
    type Item = Result<Change>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

enum Subject {
    Keys(Vec<Bytes>, u64),
    Prefix(Bytes, Option<ResumeToken>),
}

impl AsyncClient {
    /// The pages of the live keys beginning with `prefix` (empty: every
    /// key), each read linearizably from one region.
    pub fn scan_prefix(&self, prefix: &[u8]) -> ScanPages {
        ScanPages {
            client: self.clone(),
            prefix: Bytes::copy_from_slice(prefix),
            next: Some(0),
            limit: 1000,
            keys_only: false,
        }
    }

    /// Watches `keys` (see [`Client::watch`]): every change after
    /// `from_version`, or from now when it is 0. Returns once every
    /// region's leader accepted the watch.
    pub async fn watch(&self, keys: &[&[u8]], from_version: u64) -> Result<WatchStream> {
        let keys = keys.iter().map(|k| Bytes::copy_from_slice(k)).collect();
        self.start_watch(Subject::Keys(keys, from_version)).await
    }

    /// Watches every key beginning with `prefix`, from now (see
    /// [`Client::watch_prefix`]).
    pub async fn watch_prefix(&self, prefix: &[u8]) -> Result<WatchStream> {
        let subject = Subject::Prefix(Bytes::copy_from_slice(prefix), None);
        self.start_watch(subject).await
    }

    /// Watches every key beginning with `prefix` from where `token` says a
    /// previous watch got: no gap, no repeat.
    pub async fn watch_prefix_from(
        &self,
        prefix: &[u8],
        token: &ResumeToken,
    ) -> Result<WatchStream> {
        let subject = Subject::Prefix(Bytes::copy_from_slice(prefix), Some(token.clone()));
        self.start_watch(subject).await
    }

    async fn start_watch(&self, subject: Subject) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (ready_tx, ready_rx) = oneshot::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let token = Arc::new(Mutex::new(None));
        let cfg = self.inner.cfg.clone();
        let (stop2, token2) = (stop.clone(), token.clone());
        std::thread::Builder::new()
            .name("corekv-watch-stream".into())
            .spawn(move || {
                let started = Client::connect(cfg).and_then(|mut c| match &subject {
                    Subject::Keys(keys, from) => {
                        let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                        c.watch(&keys, *from)
                    }
                    Subject::Prefix(p, None) => c.watch_prefix(p),
                    Subject::Prefix(p, Some(t)) => c.watch_prefix_from(p, t),
                });
                match started {
                    Ok(w) => {
                        *token2.lock().unwrap() = w.resume_token();
                        let _ = ready_tx.send(Ok(()));
                        forward(&w, &tx, &stop2, &token2);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| ClientError::Protocol(format!("starting a watch thread: {e}")))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(WatchStream { rx, stop, token }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Protocol("the watch thread ended".into())),
        }
    }
}

/// Hands the watch's changes on until the reader is gone.
fn forward(
    w: &Watch,
    tx: &mpsc::Sender<Result<Change>>,
    stop: &AtomicBool,
    token: &Mutex<Option<ResumeToken>>,
) {
    while !stop.load(Ordering::Acquire) && !tx.is_closed() {
        match w.next(Duration::from_millis(200)) {
            Ok(Some(change)) => {
                if tx.blocking_send(Ok(change)).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            // The streams of the error's keys ended; the others go on.
            Err(e) => {
                if tx.blocking_send(Err(e)).is_err() {
                    return;
                }
            }
        }
        *token.lock().unwrap() = w.resume_token();
    }
}
