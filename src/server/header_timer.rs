//! hyper's HTTP/1.1 header deadline, without a timer or an allocation per
//! request.
//!
//! hyper bounds each request head with `header_read_timeout`: it asks its
//! [`Timer`] for a fresh sleep before every head, polls it while the head
//! is incomplete, and drops it once the head is in. With tokio's timer that
//! is an allocation, a wheel insert under the driver's lock and a wheel
//! removal for every request, about as much as the cache lookup itself. A
//! slowloris bound does not need that precision, nor that shape:
//!
//! - each connection has one slot; the sleep hyper asks for only writes
//!   the deadline into it, and is an empty value, which a `Box` does not
//!   allocate ([`ConnDeadline::timer`]);
//! - the service call that hyper makes once the head is in clears it
//!   ([`ConnDeadline::service`]);
//! - one sweeper per listener, a few times per timeout (as nginx checks
//!   its client header timer), marks the connections whose deadline has
//!   passed and wakes them, and the connection's future then ends the
//!   connection ([`ConnDeadline::guard`]).
//!
//! hyper reads the clock before every head only to add the timeout to it;
//! the sweeper's last reading plus one tick serves instead, so no request
//! reads the clock for it. A head is cut off between `timeout` and
//! `timeout + 2 × tick` after it started (earlier only by as much as a
//! starved sweeper runs late). The connection is closed without hyper's
//! 408, as nginx closes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use hyper::rt::{Sleep, Timer};
use hyper::service::Service;
use pin_project_lite::pin_project;

/// The deadlines of one listener's connections, and their sweeper.
#[derive(Debug)]
pub struct HeaderDeadlines {
    /// Deadlines are kept as nanoseconds since this instant, plus one, so
    /// that zero means disarmed.
    epoch: Instant,
    tick: Duration,
    /// The sweeper's last clock reading, in nanoseconds since `epoch`.
    swept_at: AtomicU64,
    conns: Mutex<Vec<Weak<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    /// Zero while no head is being read.
    deadline: AtomicU64,
    /// Set by the sweeper once the deadline has passed; never cleared.
    expired: AtomicBool,
    waker: AtomicWaker,
}

impl HeaderDeadlines {
    /// Sweeps every quarter of `timeout`, at most once a second and at
    /// least every 10 ms.
    pub fn new(timeout: Duration) -> Arc<HeaderDeadlines> {
        Arc::new(HeaderDeadlines {
            epoch: Instant::now(),
            tick: (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            swept_at: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        })
    }

    /// The deadline of one HTTP/1.1 connection. Its slot lives as long as
    /// the pieces made from it.
    pub fn conn(self: &Arc<Self>) -> ConnDeadline {
        let slot = Arc::new(Slot::default());
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&slot));
        ConnDeadline {
            deadlines: Arc::clone(self),
            slot,
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
            + 1
    }

    /// Wakes every connection whose armed deadline has passed, each tick,
    /// and forgets the connections that have ended. Runs until aborted.
    pub async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.wake_expired(Instant::now());
        }
    }

    /// Never earlier than the clock while the sweeper keeps its ticks, and
    /// at most a tick later.
    fn now(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.swept_at.load(Ordering::Relaxed)) + self.tick
    }

    fn wake_expired(&self, now: Instant) {
        let now = self.nanos(now);
        self.swept_at.store(now - 1, Ordering::Relaxed);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|weak| {
            let Some(slot) = weak.upgrade() else {
                return false;
            };
            let deadline = slot.deadline.load(Ordering::Acquire);
            if deadline != 0 && deadline <= now {
                slot.expired.store(true, Ordering::Release);
                slot.waker.wake();
            }
            true
        });
    }
}

/// One connection's deadline; see the module docs.
#[derive(Clone, Debug)]
pub struct ConnDeadline {
    deadlines: Arc<HeaderDeadlines>,
    slot: Arc<Slot>,
}

impl ConnDeadline {
    /// The timer for the connection's HTTP/1.1 server, which uses it for
    /// the header deadline only.
    pub fn timer(&self) -> ConnTimer {
        ConnTimer(self.clone())
    }

    /// `inner`, disarming the deadline at each call: hyper calls the
    /// service once the head is in.
    pub fn service<S>(&self, inner: S) -> HeadRead<S> {
        HeadRead {
            inner,
            slot: Arc::clone(&self.slot),
        }
    }

    /// `conn`, which ends with `None` once its deadline has passed.
    pub fn guard<F: Future>(&self, conn: F) -> Guarded<F> {
        Guarded {
            conn,
            slot: Arc::clone(&self.slot),
            waker: None,
        }
    }
}

/// See [`ConnDeadline::timer`].
#[derive(Debug)]
pub struct ConnTimer(ConnDeadline);

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let ConnDeadline { deadlines, slot } = &self.0;
        slot.deadline
            .store(deadlines.nanos(deadline), Ordering::Release);
        Box::pin(Armed)
    }

    fn now(&self) -> Instant {
        self.0.deadlines.now()
    }
}

/// The sleep hyper holds while it reads a head. Empty, so boxing it
/// allocates nothing; it never ends by itself: [`Guarded`] ends the
/// connection instead.
#[derive(Debug)]
struct Armed;

impl Future for Armed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl Sleep for Armed {}

/// See [`ConnDeadline::service`].
#[derive(Debug)]
pub struct HeadRead<S> {
    inner: S,
    slot: Arc<Slot>,
}

impl<S: Service<R>, R> Service<R> for HeadRead<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> S::Future {
        self.slot.deadline.store(0, Ordering::Release);
        self.inner.call(req)
    }
}

pin_project! {
    /// See [`ConnDeadline::guard`].
    #[derive(Debug)]
    pub struct Guarded<F> {
        #[pin]
        conn: F,
        slot: Arc<Slot>,
        // The waker filed in the slot for this connection's task.
        waker: Option<Waker>,
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.project();
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.slot.waker.register(cx.waker());
            *this.waker = Some(cx.waker().clone());
        }
        // Read after filing the waker: a sweep that marked the slot before
        // it could not wake this task, so this read sees the mark.
        if this.slot.expired.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        this.conn.poll(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::Empty;

    use super::*;

    fn count_wakes() -> (Waker, Arc<AtomicUsize>) {
        struct Count(Arc<AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let n = Arc::new(AtomicUsize::new(0));
        (Arc::new(Count(Arc::clone(&n))).into(), n)
    }

    /// A connection that never ends by itself.
    fn guarded(conn: &ConnDeadline) -> Pin<Box<Guarded<std::future::Pending<()>>>> {
        Box::pin(conn.guard(std::future::pending::<()>()))
    }

    #[test]
    fn a_connection_ends_once_its_deadline_has_passed_and_not_before() {
        let d = HeaderDeadlines::new(Duration::from_secs(1));
        let conn = d.conn();
        let mut guarded = guarded(&conn);
        let (waker, wakes) = count_wakes();
        let mut cx = Context::from_waker(&waker);
        assert!(guarded.as_mut().poll(&mut cx).is_pending());

        let start = Instant::now();
        let mut sleep = conn.timer().sleep_until(start + Duration::from_secs(5));
        // hyper polls its sleep while the head is incomplete: it never
        // ends it, the guard does.
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        d.wake_expired(start + Duration::from_secs(4));
        assert_eq!(wakes.load(Ordering::SeqCst), 0, "woken before its deadline");
        assert!(guarded.as_mut().poll(&mut cx).is_pending());
        d.wake_expired(start + Duration::from_secs(6));
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert!(matches!(guarded.as_mut().poll(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn the_service_call_disarms_the_deadline_and_the_next_head_rearms_it() {
        let d = HeaderDeadlines::new(Duration::from_secs(1));
        let conn = d.conn();
        let service = conn.service(hyper::service::service_fn(
            |_: http::Request<Empty<Bytes>>| async {
                Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
            },
        ));
        let mut guarded = guarded(&conn);
        let (waker, wakes) = count_wakes();
        let mut cx = Context::from_waker(&waker);
        assert!(guarded.as_mut().poll(&mut cx).is_pending());
        let start = Instant::now();

        let _head = conn.timer().sleep_until(start + Duration::from_secs(1));
        drop(service.call(http::Request::new(Empty::new())));
        d.wake_expired(start + Duration::from_secs(2));
        assert_eq!(wakes.load(Ordering::SeqCst), 0, "a finished head was cut");
        assert!(guarded.as_mut().poll(&mut cx).is_pending());

        let _next = conn.timer().sleep_until(start + Duration::from_secs(3));
        d.wake_expired(start + Duration::from_secs(4));
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert!(matches!(guarded.as_mut().poll(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn hypers_sleep_costs_no_allocation() {
        assert_eq!(std::mem::size_of::<Armed>(), 0);
    }

    #[test]
    fn ended_connections_are_forgotten() {
        let d = HeaderDeadlines::new(Duration::from_secs(1));
        let kept = d.conn();
        drop(d.conn());
        d.wake_expired(Instant::now());
        assert_eq!(d.conns.lock().unwrap().len(), 1);
        drop(kept);
        d.wake_expired(Instant::now());
        assert!(d.conns.lock().unwrap().is_empty());
    }

    #[test]
    fn the_timers_clock_is_the_last_sweep_rounded_up_by_a_tick() {
        let d = HeaderDeadlines::new(Duration::from_secs(1));
        let timer = d.conn().timer();
        let swept = Instant::now();
        d.wake_expired(swept);
        let now = timer.now();
        assert!(
            now >= Instant::now(),
            "a deadline counted from it would be early"
        );
        assert!(now <= swept + d.tick + Duration::from_millis(1));
        // Until the next sweep it stands still.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(timer.now(), now);
        let later = swept + Duration::from_secs(3);
        d.wake_expired(later);
        assert!(timer.now() >= later + d.tick - Duration::from_millis(1));
    }

    #[test]
    fn the_tick_is_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(
            HeaderDeadlines::new(Duration::from_secs(1)).tick,
            Duration::from_millis(250)
        );
        assert_eq!(
            HeaderDeadlines::new(Duration::from_secs(30)).tick,
            Duration::from_secs(1)
        );
        assert_eq!(
            HeaderDeadlines::new(Duration::from_millis(1)).tick,
            Duration::from_millis(10)
        );
    }
}
