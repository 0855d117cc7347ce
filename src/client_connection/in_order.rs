//! The writer's set of pending replies: awaited concurrently, taken in arrival order.
//!
//! A `FuturesOrdered` wakes its own task whenever one poll went over every future it holds
//! and none was ready (futures-rs' guard against starving other tasks). With one request in
//! flight that is every poll, so each reply cost the writer a second trip through the
//! scheduler; and tokio's multi-threaded scheduler answers a task that woke itself by
//! waking its other worker thread (a futex call per request, and often the task moving to
//! that thread). [`InOrder`] polls the set under a waker that tells a wake-up during its own
//! poll (polled again at once, a few times at most) from one afterwards (the task's).
//!
//! A reply alone in the set (one request in flight, the latency-bound case) is held and
//! polled as it is, outside the `FuturesOrdered`: its node, ready queue and waker cost
//! ~1,500 instructions per request (callgrind). A second reply moves it in, at the front.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::stream::{FuturesOrdered, Stream};

use crate::sync::lock;

/// Polls in a row before a future that keeps waking itself is left to the scheduler.
const POLLS_IN_PLACE: usize = 4;

const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// Futures whose outputs come out in the order they were pushed.
pub struct InOrder<F: Future + Unpin> {
    /// The only future in the set, when there is one; `futures` is empty then.
    alone: Option<F>,
    futures: FuturesOrdered<F>,
    waker: Arc<PollAgain>,
    /// `waker` as a [`Waker`], made once.
    as_waker: Waker,
}

impl<F: Future + Unpin> InOrder<F> {
    pub fn new() -> InOrder<F> {
        let waker = Arc::new(PollAgain {
            state: AtomicU8::new(0),
            task: Mutex::new(None),
        });
        InOrder {
            alone: None,
            futures: FuturesOrdered::new(),
            as_waker: Waker::from(waker.clone()),
            waker,
        }
    }

    pub fn push_back(&mut self, future: F) {
        if self.futures.is_empty() && self.alone.is_none() {
            self.alone = Some(future);
            return;
        }
        if let Some(first) = self.alone.take() {
            self.futures.push_front(first);
        }
        self.futures.push_back(future);
    }

    /// One poll of the set: the future alone, or the ordered ones.
    fn poll_set(
        alone: &mut Option<F>,
        futures: &mut FuturesOrdered<F>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<F::Output>> {
        match alone {
            Some(future) => {
                let output = std::task::ready!(Pin::new(future).poll(cx));
                *alone = None;
                Poll::Ready(Some(output))
            }
            None => Pin::new(futures).poll_next(cx),
        }
    }

    /// The next output in order, `Ready(None)` when the set is empty.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        {
            let mut task = lock(&self.waker.task);
            if !task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner = Context::from_waker(&self.as_waker);
        for _ in 0..POLLS_IN_PLACE {
            self.waker.state.store(POLLING, Ordering::SeqCst);
            let polled = Self::poll_set(&mut self.alone, &mut self.futures, &mut inner);
            let state = self.waker.state.swap(0, Ordering::SeqCst);
            if polled.is_ready() || state & WOKEN == 0 {
                return polled;
            }
        }
        // Woken during each of those polls: a future that yields. The scheduler decides.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The waker the set is polled with.
struct PollAgain {
    /// `POLLING` while [`InOrder::poll_next`] polls, plus `WOKEN` once woken meanwhile.
    state: AtomicU8,
    /// The writer task, woken by wake-ups outside its poll.
    task: Mutex<Option<Waker>>,
}

impl Wake for PollAgain {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // During a poll, the poller sees WOKEN when it ends the poll and polls again.
        // Otherwise the bit is stale by the next poll, which starts from POLLING alone.
        if self.state.fetch_or(WOKEN, Ordering::SeqCst) & POLLING == 0 {
            if let Some(task) = lock(&self.task).as_ref() {
                task.wake_by_ref();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts how often the task is woken.
    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn outputs_come_in_push_order_and_a_lone_pending_future_does_not_wake_the_task() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<u32>();
        let (second_tx, second_rx) = tokio::sync::oneshot::channel::<u32>();
        let mut set = InOrder::new();
        set.push_back(first_rx);
        assert!(set.poll_next(&mut cx).is_pending());
        // A FuturesOrdered polled this way wakes its task here: one future, all polled.
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "no wake-up of its own");
        set.push_back(second_rx);
        second_tx.send(2).unwrap();
        assert!(
            set.poll_next(&mut cx).is_pending(),
            "the first is not ready"
        );
        first_tx.send(1).unwrap();
        assert!(
            counter.0.load(Ordering::SeqCst) >= 1,
            "an answer wakes the task"
        );
        assert!(matches!(set.poll_next(&mut cx), Poll::Ready(Some(Ok(1)))));
        assert!(matches!(set.poll_next(&mut cx), Poll::Ready(Some(Ok(2)))));
        assert!(matches!(set.poll_next(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_future_that_keeps_yielding_is_handed_back_to_the_scheduler() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let polls = Arc::new(AtomicUsize::new(0));
        let seen = polls.clone();
        let mut set = InOrder::new();
        set.push_back(std::future::poll_fn(move |cx: &mut Context<'_>| {
            seen.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        assert!(set.poll_next(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), POLLS_IN_PLACE);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "left to the scheduler");
    }

    #[test]
    fn a_reply_alone_keeps_its_place_when_more_arrive() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<u32>();
        let (second_tx, second_rx) = tokio::sync::oneshot::channel::<u32>();
        let (third_tx, third_rx) = tokio::sync::oneshot::channel::<u32>();
        let mut set = InOrder::new();
        set.push_back(first_rx);
        assert!(set.poll_next(&mut cx).is_pending(), "alone, polled once");
        set.push_back(second_rx);
        set.push_back(third_rx);
        third_tx.send(3).unwrap();
        second_tx.send(2).unwrap();
        assert!(
            set.poll_next(&mut cx).is_pending(),
            "the first is not ready"
        );
        first_tx.send(1).unwrap();
        assert!(matches!(set.poll_next(&mut cx), Poll::Ready(Some(Ok(1)))));
        assert!(matches!(set.poll_next(&mut cx), Poll::Ready(Some(Ok(2)))));
        // Empty again: the next one is held alone, and still comes out after the rest.
        let (fourth_tx, fourth_rx) = tokio::sync::oneshot::channel::<u32>();
        fourth_tx.send(4).unwrap();
        set.push_back(fourth_rx);
        assert!(matches!(set.poll_next(&mut cx), Poll::Ready(Some(Ok(3)))));
        assert!(matches!(set.poll_next(&mut cx), Poll::Ready(Some(Ok(4)))));
        assert!(matches!(set.poll_next(&mut cx), Poll::Ready(None)));
    }
}
