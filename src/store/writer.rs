//! The store task: applies [`StoreOp`]s in the order they were handed over, the ops waiting at
//! once in one transaction (group commit: one fsync for many). When the database
//! is unreachable the op goes to the [`Outbox`] (fsynced) instead, and every later op queues
//! behind it so the order holds; the outbox is retried every `retry_interval_ms` and emptied,
//! in order, when the database is back. Ops the database refuses for good (a constraint) are
//! logged and kept in `{outbox}.rejected.jsonl`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::outbox::{self, Outbox};
use super::{Store, StoreOp, is_transient};

/// Where an op ended up when its caller was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// In the database.
    Written,
    /// In the local outbox; written when the database is back.
    Queued,
    /// Refused by the database for good (logged and kept in the rejected file).
    Rejected,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub queued: AtomicU64,
    pub rejected: AtomicU64,
    /// Ops waiting in the outbox now.
    pub pending: AtomicU64,
    /// 1 while the database is unreachable.
    pub degraded: AtomicU64,
}

enum Msg {
    Op(Box<StoreOp>, Option<oneshot::Sender<Durable>>),
    /// Try to empty the outbox now; answers how many ops remain.
    Flush(oneshot::Sender<usize>),
    /// Last try, then stop (server shutdown); answers how many ops stay in the outbox.
    Close(oneshot::Sender<usize>),
}

/// Hands ops to the store task. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::UnboundedSender<Msg>,
    pub stats: Arc<WriterStats>,
    pub store: Store,
}

impl StoreHandle {
    /// Queue an op (fire and forget; the media path uses this).
    pub fn send(&self, op: StoreOp) {
        if self.tx.send(Msg::Op(Box::new(op), None)).is_err() {
            tracing::error!("store task is gone; a write was dropped");
        }
    }

    /// Queue an op now (in order with every op handed over before) and get a receiver that
    /// answers once it is durable.
    pub fn send_durable(&self, op: StoreOp) -> oneshot::Receiver<Durable> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Msg::Op(_, Some(tx)))) =
            self.tx.send(Msg::Op(Box::new(op), Some(tx)))
        {
            let _ = tx.send(Durable::Rejected);
        }
        rx
    }

    /// Queue an op and wait until it is durable (in the database or the outbox).
    pub async fn write(&self, op: StoreOp) -> Durable {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Op(Box::new(op), Some(tx))).is_err() {
            return Durable::Rejected;
        }
        rx.await.unwrap_or(Durable::Rejected)
    }

    /// Write what can be written and stop the store task (shutdown). What the database cannot
    /// take stays in the outbox file for the next start. Returns how many ops that is.
    pub async fn close(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Wait until everything handed over so far has been tried; returns the ops still in the
    /// outbox (0: all in the database).
    pub async fn flush(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return usize::MAX;
        }
        rx.await.unwrap_or(usize::MAX)
    }
}

/// Most ops applied in one transaction.
const MAX_BATCH: usize = 256;

struct Writer {
    store: Store,
    outbox: Outbox,
    outbox_path: PathBuf,
    stats: Arc<WriterStats>,
    op_timeout: Duration,
}

/// Start the store task. It runs until every [`StoreHandle`] is dropped, then tries the
/// outbox once more; what is left stays on disk for the next start.
pub fn spawn(
    store: Store,
    outbox_path: PathBuf,
    retry: Duration,
    op_timeout: Duration,
) -> std::io::Result<(StoreHandle, tokio::task::JoinHandle<()>)> {
    let outbox = Outbox::open(&outbox_path)?;
    let stats = Arc::new(WriterStats::default());
    stats.pending.store(outbox.len() as u64, Ordering::Relaxed);
    if !outbox.is_empty() {
        tracing::info!(
            pending = outbox.len(),
            "writes queued by an earlier run will be written to the database"
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = StoreHandle {
        tx,
        stats: stats.clone(),
        store: store.clone(),
    };
    let mut w = Writer {
        store,
        outbox,
        outbox_path,
        stats,
        op_timeout,
    };
    let task = tokio::spawn(async move {
        w.drain().await;
        let mut closed = false;
        let mut tick = tokio::time::interval(retry);
        // After a slow failed retry, wait a whole interval before the next.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A message taken while gathering a batch, handled next.
        let mut held: Option<Msg> = None;
        // While the outbox waits, each retry first asks the database in a task of its own, so
        // ops handed over meanwhile are queued at once instead of waiting out a connection
        // timeout; the outbox is written only once the database answers.
        let mut probe: Option<tokio::task::JoinHandle<bool>> = None;
        loop {
            let next = match held.take() {
                Some(m) => Some(m),
                None => tokio::select! {
                    // Handing over comes first: while the database is down it only appends
                    // to the outbox.
                    biased;
                    m = rx.recv() => m,
                    up = async {
                        match probe.as_mut() {
                            Some(p) => p.await.unwrap_or(false),
                            None => std::future::pending().await,
                        }
                    } => {
                        probe = None;
                        if up {
                            w.drain().await;
                        }
                        continue;
                    }
                    _ = tick.tick(), if !w.outbox.is_empty() && probe.is_none() => {
                        let (store, limit) = (w.store.clone(), w.op_timeout);
                        probe = Some(tokio::spawn(async move {
                            matches!(tokio::time::timeout(limit, store.ping()).await, Ok(Ok(())))
                        }));
                        continue;
                    }
                },
            };
            match next {
                None => break,
                Some(Msg::Op(op, ack)) => {
                    // Group commit: the ops already waiting go in one transaction.
                    let mut batch = vec![(*op, ack)];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(Msg::Op(op, ack)) => batch.push((*op, ack)),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    w.handle_batch(batch).await;
                }
                Some(Msg::Flush(ack)) => {
                    w.drain().await;
                    let _ = ack.send(w.outbox.len());
                }
                Some(Msg::Close(ack)) => {
                    // Ops sent before the close still count.
                    while let Ok(m) = rx.try_recv() {
                        if let Msg::Op(op, a) = m {
                            let d = w.handle(*op).await;
                            if let Some(a) = a {
                                let _ = a.send(d);
                            }
                        }
                    }
                    w.drain().await;
                    let _ = ack.send(w.outbox.len());
                    closed = true;
                    break;
                }
            }
        }
        if !closed {
            w.drain().await;
        }
        if !w.outbox.is_empty() {
            tracing::warn!(
                pending = w.outbox.len(),
                path = %w.outbox_path.display(),
                "the database is unreachable; queued writes stay in the outbox for the next start"
            );
        }
    });
    Ok((handle, task))
}

impl Writer {
    async fn apply(&self, op: &StoreOp) -> Result<(), (bool, String)> {
        let t = std::time::Instant::now();
        let r = match tokio::time::timeout(self.op_timeout, self.store.apply(op)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err((is_transient(&e), e.to_string())),
            Err(_) => Err((true, "timed out".into())),
        };
        tracing::debug!(
            op = op.name(),
            ok = r.is_ok(),
            ms = t.elapsed().as_millis() as u64,
            "store write"
        );
        r
    }

    fn set_pending(&self) {
        self.stats
            .pending
            .store(self.outbox.len() as u64, Ordering::Relaxed);
    }

    fn queue(&mut self, op: StoreOp) -> Durable {
        match self.outbox.push(op.clone()) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                self.set_pending();
                Durable::Queued
            }
            Err(e) => {
                // Disk trouble too: the op can only be logged.
                tracing::error!(op = op.name(), error = %e, "cannot write to the outbox; write lost");
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Durable::Rejected
            }
        }
    }

    fn rejected(&self, op: &StoreOp, error: &str) {
        tracing::error!(
            op = op.name(),
            error,
            "the database refused a write; kept in the rejected file"
        );
        outbox::reject(&self.outbox_path, op, error);
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Several ops waiting at once: one transaction for all (one commit, one fsync). If the
    /// database refuses the batch for good, each op is tried alone so only the bad one is
    /// rejected; if it is unreachable, they all go to the outbox, in order.
    async fn handle_batch(&mut self, batch: Vec<(StoreOp, Option<oneshot::Sender<Durable>>)>) {
        if batch.len() == 1 || !self.outbox.is_empty() {
            for (op, ack) in batch {
                let d = self.handle(op).await;
                if let Some(a) = ack {
                    let _ = a.send(d);
                }
            }
            return;
        }
        let ops: Vec<StoreOp> = batch.iter().map(|(op, _)| op.clone()).collect();
        let r = match tokio::time::timeout(self.op_timeout, self.store.apply_batch(&ops)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err((is_transient(&e), e.to_string())),
            Err(_) => Err((true, "timed out".to_string())),
        };
        match r {
            Ok(()) => {
                self.stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (_, ack) in batch {
                    if let Some(a) = ack {
                        let _ = a.send(Durable::Written);
                    }
                }
            }
            // Unreachable: all of them to the outbox, in order, without trying again.
            Err((true, e)) => {
                if self.stats.degraded.swap(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, "database unreachable; writes go to the local outbox");
                }
                for (op, ack) in batch {
                    let d = self.queue(op);
                    if let Some(a) = ack {
                        let _ = a.send(d);
                    }
                }
            }
            // Refused: one by one, so only the bad op is rejected.
            Err((false, _)) => {
                for (op, ack) in batch {
                    let d = self.handle(op).await;
                    if let Some(a) = ack {
                        let _ = a.send(d);
                    }
                }
            }
        }
    }

    async fn handle(&mut self, op: StoreOp) -> Durable {
        if !self.outbox.is_empty() {
            // Keep the order: behind what is already queued. The retry tick (or a flush)
            // writes the queue; trying the database here for every op would make each op
            // wait out a connection timeout while it is down.
            return self.queue(op);
        }
        match self.apply(&op).await {
            Ok(()) => {
                self.stats.written.fetch_add(1, Ordering::Relaxed);
                Durable::Written
            }
            Err((true, e)) => {
                if self.stats.degraded.swap(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, "database unreachable; writes go to the local outbox");
                }
                self.queue(op)
            }
            Err((false, e)) => {
                self.rejected(&op, &e);
                Durable::Rejected
            }
        }
    }

    async fn drain(&mut self) {
        let mut progressed = false;
        while let Some(op) = self.outbox.front().cloned() {
            match self.apply(&op).await {
                Ok(()) => self.stats.written.fetch_add(1, Ordering::Relaxed),
                Err((true, _)) => {
                    if progressed && let Err(e) = self.outbox.compact() {
                        tracing::error!(error = %e, "cannot rewrite the outbox");
                    }
                    self.set_pending();
                    return;
                }
                Err((false, e)) => {
                    self.rejected(&op, &e);
                    0
                }
            };
            progressed = true;
            if let Err(e) = self.outbox.pop() {
                tracing::error!(error = %e, "cannot truncate the outbox");
            }
        }
        self.set_pending();
        if self.stats.degraded.swap(0, Ordering::Relaxed) == 1 {
            tracing::info!("database reachable again; the outbox is written");
        }
    }
}
