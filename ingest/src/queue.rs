//! Bounded lock-free queues between two tasks: ingest's stages, and the rules engine's
//! dispatcher and shards.
//!
//! Crossbeam's `ArrayQueue` holds the messages: a ring of fixed size allocated once, whose
//! ends are moved with atomic operations, never a lock. What a task waiting on a queue needs
//! (to be woken when a message arrives or room is made) is one `AtomicWaker` per end, also
//! without a lock. A full queue makes its sender wait, so a stage that falls behind holds
//! the one before it: nothing is dropped and nothing grows.
//!
//! Each queue joins one sending task to one receiving task, as every queue of the pipeline
//! does, and neither end is `Clone`: an end keeps a single waker, so it must be waited on by
//! one task at a time (several futures of one task, in a `select!`, share that task's waker
//! and are fine).

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use crossbeam_queue::ArrayQueue;
use futures_util::task::AtomicWaker;

/// A queue holding up to `capacity` messages (at least one).
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        ring: ArrayQueue::new(capacity.max(1)),
        receiver: AtomicWaker::new(),
        sender: AtomicWaker::new(),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    ring: ArrayQueue<T>,
    /// The receiving task, woken when a message is queued or the sender goes.
    receiver: AtomicWaker,
    /// The sending task, woken when a message is taken or the receiver goes.
    sender: AtomicWaker,
    sender_gone: AtomicBool,
    receiver_gone: AtomicBool,
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("queued", &self.ring.len())
            .field("capacity", &self.ring.capacity())
            .finish()
    }
}

impl<T> Shared<T> {
    /// Drops what is queued, waking the sender in case it waits for room.
    fn drain(&self) {
        while self.ring.pop().is_some() {}
        self.sender.wake();
    }
}

/// The receiver has gone: nothing will take the message, which is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the receiving task has ended")]
pub struct Closed;

#[derive(PartialEq, Eq)]
pub enum TrySendError<T> {
    /// No room now: the message comes back.
    Full(T),
    /// The receiver has gone; the message is dropped.
    Closed,
}

impl<T> std::fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "Full(..)",
            Self::Closed => "Closed",
        })
    }
}

/// The sending end.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sender").field(&self.shared).finish()
    }
}

impl<T> Sender<T> {
    /// Queues `message` if there is room now.
    pub fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        let shared = &*self.shared;
        if shared.receiver_gone.load(Ordering::Acquire) {
            return Err(TrySendError::Closed);
        }
        if let Err(message) = shared.ring.push(message) {
            return Err(TrySendError::Full(message));
        }
        // The receiver may have gone between the look above and the push: then it will not
        // take the message (nor what is left), which would otherwise stay until the sender
        // goes too.
        if shared.receiver_gone.load(Ordering::Acquire) {
            shared.drain();
            return Err(TrySendError::Closed);
        }
        shared.receiver.wake();
        Ok(())
    }

    /// Queues `message`, waiting for room. Dropping the future before it completes drops the
    /// message unqueued.
    pub async fn send(&self, message: T) -> Result<(), Closed> {
        let mut message = Some(message);
        poll_fn(|cx| self.poll_send(cx, &mut message)).await
    }

    fn poll_send(&self, cx: &mut Context<'_>, message: &mut Option<T>) -> Poll<Result<(), Closed>> {
        // Taken once: the future completes with it, sent or not.
        let Some(mut next) = message.take() else {
            return Poll::Ready(Ok(()));
        };
        for registered in [false, true] {
            match self.try_send(next) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(TrySendError::Closed) => return Poll::Ready(Err(Closed)),
                Err(TrySendError::Full(back)) => next = back,
            }
            if !registered {
                // Registered before the second try, so that room made in between wakes us.
                self.shared.sender.register(cx.waker());
            }
        }
        *message = Some(next);
        Poll::Pending
    }

    /// Completes once the receiver has gone.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            if self.is_closed() {
                return Poll::Ready(());
            }
            self.shared.sender.register(cx.waker());
            if self.is_closed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Whether the receiver has gone.
    pub fn is_closed(&self) -> bool {
        self.shared.receiver_gone.load(Ordering::Acquire)
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.shared.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.ring.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity()
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.sender_gone.store(true, Ordering::Release);
        self.shared.receiver.wake();
    }
}

/// The receiving end.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Receiver").field(&self.shared).finish()
    }
}

impl<T> Receiver<T> {
    /// The next message if one is queued now.
    pub fn try_recv(&mut self) -> Option<T> {
        let message = self.shared.ring.pop()?;
        self.shared.sender.wake();
        Some(message)
    }

    /// The next message, waiting for one; `None` once the sender has gone and everything it
    /// queued was taken.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(message) = self.try_recv() {
            return Poll::Ready(Some(message));
        }
        // Registered before looking again, so that a message queued in between wakes us.
        self.shared.receiver.register(cx.waker());
        if let Some(message) = self.try_recv() {
            return Poll::Ready(Some(message));
        }
        if self.shared.sender_gone.load(Ordering::Acquire) {
            // What the sender queued, it queued before it went: seen now, if it was missed.
            return Poll::Ready(self.try_recv());
        }
        Poll::Pending
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.shared.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.ring.is_empty()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        // What is queued is dropped now, not when the sender goes: a message may hold a share
        // of a budget (ingest's bytes in flight) that the sender waits for.
        self.shared.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Bounds a test that would hang if a wake-up were lost.
    async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish in 30 s"))
    }

    #[test]
    fn messages_come_out_in_order_and_a_full_queue_refuses_more() {
        let (tx, mut rx) = bounded(2);
        tx.try_send(1).expect("room");
        tx.try_send(2).expect("room");
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!((tx.len(), rx.len(), tx.capacity()), (2, 2, 2));
        assert_eq!(rx.try_recv(), Some(1));
        tx.try_send(3).expect("room again");
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
        assert!(rx.is_empty());
    }

    #[test]
    fn a_capacity_of_zero_holds_one() {
        let (tx, _rx) = bounded(0);
        tx.try_send(()).expect("room for one");
        assert_eq!(tx.try_send(()), Err(TrySendError::Full(())));
    }

    #[tokio::test]
    async fn the_receiver_gets_what_was_queued_before_the_sender_went_then_none() {
        let (tx, mut rx) = bounded(4);
        tx.send("a").await.expect("open");
        tx.send("b").await.expect("open");
        drop(tx);
        assert_eq!(rx.recv().await, Some("a"));
        assert_eq!(rx.recv().await, Some("b"));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_gone_receiver_refuses_sends_wakes_a_waiting_sender_and_drops_what_was_queued() {
        let held = Arc::new(());
        let (tx, rx) = bounded(1);
        tx.try_send(Arc::clone(&held)).expect("room");
        let waiting = tokio::spawn(async move {
            let sent = tx.send(Arc::new(())).await;
            let closed_at_once = tokio::time::timeout(Duration::from_secs(5), tx.closed()).await;
            (sent, closed_at_once.is_ok(), tx.is_closed())
        });
        // The sender is waiting for room when the receiver goes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(rx);
        let (sent, closed, is_closed) = within("the waiting send", waiting)
            .await
            .expect("the sender's task");
        assert_eq!(sent, Err(Closed));
        assert!(closed && is_closed);
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "what was queued was dropped with the receiver"
        );
    }

    #[tokio::test]
    async fn a_receiver_waiting_on_an_empty_queue_wakes_when_the_sender_goes() {
        let (tx, mut rx) = bounded::<u8>(1);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(tx);
        assert_eq!(within("the waiting receive", waiting).await.unwrap(), None);
    }

    /// Two tasks on two threads through a queue of one and of three, so that both ends wait
    /// over and over: a wake-up lost on either side would hang the test.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_messages_pass_between_two_threads_in_order_without_a_lost_wake_up() {
        const MESSAGES: u64 = 200_000;
        for capacity in [1, 3] {
            let (tx, mut rx) = bounded(capacity);
            let producer = tokio::spawn(async move {
                for n in 0..MESSAGES {
                    tx.send(n).await.expect("the receiver takes everything");
                }
            });
            let consumer = tokio::spawn(async move {
                let mut expected = 0;
                while let Some(n) = rx.recv().await {
                    assert_eq!(n, expected, "in order");
                    expected += 1;
                }
                expected
            });
            within("the transfer", producer).await.unwrap();
            assert_eq!(within("the transfer", consumer).await.unwrap(), MESSAGES);
        }
    }
}
