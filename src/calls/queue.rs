//! The coordinator's inbox: one ordered queue that never drops.
//!
//! Producers in async code (admission, the API) `send().await`, which waits while the queue
//! holds `capacity` events: that is the backpressure, so a burst of joins slows down instead
//! of piling up. Producers that cannot wait (the SFU reports joins, leaves and room closes
//! synchronously, under the room's lock; recording threads report consent and results) `push`,
//! which always enqueues: their events are bounded by what was admitted (a few per participant
//! and per recording), and going past `capacity` is counted in
//! `commhub_call_events_over_capacity_total`. Both go through one lock, so events keep the
//! order in which they happened.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct QueueStats {
    pub events: AtomicU64,
    pub over_capacity: AtomicU64,
    pub pending: AtomicU64,
}

struct Inner<T> {
    q: Mutex<VecDeque<T>>,
    capacity: usize,
    has_items: Notify,
    has_room: Notify,
    closed: AtomicBool,
    /// The receiver is gone (the coordinator ended): events are refused, so whoever waits for
    /// a reply learns it at once instead of waiting forever.
    gone: AtomicBool,
    stats: Arc<QueueStats>,
}

/// The sending side (cheap to clone).
pub struct EventSender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for EventSender<T> {
    fn clone(&self) -> Self {
        EventSender {
            inner: self.inner.clone(),
        }
    }
}

/// The one receiving side.
pub struct EventReceiver<T> {
    inner: Arc<Inner<T>>,
}

pub fn channel<T>(capacity: usize) -> (EventSender<T>, EventReceiver<T>) {
    let inner = Arc::new(Inner {
        q: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        has_items: Notify::new(),
        has_room: Notify::new(),
        closed: AtomicBool::new(false),
        gone: AtomicBool::new(false),
        stats: Arc::new(QueueStats::default()),
    });
    (
        EventSender {
            inner: inner.clone(),
        },
        EventReceiver { inner },
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> EventSender<T> {
    /// Enqueue without waiting (for code that cannot await). Never drops.
    pub fn push(&self, ev: T) {
        let q = lock(&self.inner.q);
        if self.inner.gone.load(Ordering::Acquire) {
            return;
        }
        if q.len() >= self.inner.capacity {
            self.inner
                .stats
                .over_capacity
                .fetch_add(1, Ordering::Relaxed);
        }
        self.enqueue(q, ev);
    }

    /// Append under the lock, then count and wake the receiver.
    fn enqueue(&self, mut q: std::sync::MutexGuard<'_, VecDeque<T>>, ev: T) {
        q.push_back(ev);
        self.inner
            .stats
            .pending
            .store(q.len() as u64, Ordering::Relaxed);
        drop(q);
        self.inner.stats.events.fetch_add(1, Ordering::Relaxed);
        self.inner.has_items.notify_one();
    }

    /// Enqueue, waiting while the queue is full.
    pub async fn send(&self, ev: T) {
        loop {
            let room = self.inner.has_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let q = lock(&self.inner.q);
                if self.inner.gone.load(Ordering::Acquire) {
                    return;
                }
                if q.len() < self.inner.capacity {
                    self.enqueue(q, ev);
                    return;
                }
            }
            room.await;
        }
    }

    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.inner.stats
    }
}

impl<T> EventReceiver<T> {
    /// The next event; `None` once [`EventReceiver::close`] was called and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let more = self.inner.has_items.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            if let Some(ev) = self.try_recv() {
                return Some(ev);
            }
            if self.inner.closed.load(Ordering::Acquire) {
                return None;
            }
            more.await;
        }
    }

    pub fn try_recv(&self) -> Option<T> {
        let mut q = lock(&self.inner.q);
        let ev = q.pop_front();
        self.inner
            .stats
            .pending
            .store(q.len() as u64, Ordering::Relaxed);
        drop(q);
        if ev.is_some() {
            self.inner.has_room.notify_one();
        }
        ev
    }

    /// After this, `recv` returns what is queued, then `None`.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.has_items.notify_one();
    }

    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.inner.stats
    }
}

impl<T> Drop for EventReceiver<T> {
    fn drop(&mut self) {
        let mut q = lock(&self.inner.q);
        self.inner.gone.store(true, Ordering::Release);
        self.inner.closed.store(true, Ordering::Release);
        // Dropping what is left drops its reply channels: their senders learn it now.
        let left = std::mem::take(&mut *q);
        drop(q);
        drop(left);
        self.inner.has_room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn keeps_order_and_never_drops() {
        let (tx, rx) = channel::<u32>(4);
        for i in 0..10 {
            tx.push(i);
        }
        assert_eq!(tx.stats().over_capacity.load(Ordering::Relaxed), 6);
        let mut got = Vec::new();
        while let Some(i) = rx.try_recv() {
            got.push(i);
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn async_senders_wait_for_room() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.send(1).await;
        tx.send(2).await;
        let t = tx.clone();
        let blocked = tokio::spawn(async move { t.send(3).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !blocked.is_finished(),
            "the third send waits: the queue is full"
        );
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(1), blocked)
            .await
            .expect("room made")
            .expect("task");
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        rx.close();
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_gone_receiver_refuses_at_once() {
        let (tx, rx) = channel::<tokio::sync::oneshot::Sender<()>>(1);
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.push(reply);
        drop(rx);
        assert!(
            answer.await.is_err(),
            "the queued reply channel was dropped"
        );
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.send(reply).await;
        assert!(answer.await.is_err(), "a later send is refused");
    }
}
