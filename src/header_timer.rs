//! hyper's per-request header deadline, without a timer-wheel entry per
//! request.
//!
//! hyper bounds each HTTP/1.1 request head with `header_read_timeout`: it
//! asks its [`Timer`] for a fresh sleep before every head and drops it once
//! the head is in. With tokio's timer that is an allocation, a wheel insert
//! under the driver's lock and a wheel removal for every request, about as
//! much as the cache lookup itself. A slowloris bound does not need that
//! precision. Here each connection gets one slot that the sleep arms with
//! its deadline and disarms when dropped (two atomic stores), and one
//! sweeper per listener wakes the connections whose deadline has passed a
//! few times per timeout, as nginx checks its client header timer. hyper
//! reads the clock before every head only to add the timeout to it; the
//! sweeper's last reading plus one tick serves instead, so no hit reads
//! the clock for it. A head is cut off between `timeout` and
//! `timeout + 2 × tick` after it started (earlier only by as much as a
//! starved sweeper runs late).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use hyper::rt::{Sleep, Timer};

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
    deadline: AtomicU64,
    /// Which sleep armed the slot: a replaced sleep dropped after its
    /// successor armed it must not disarm it.
    armed_by: AtomicU64,
    /// The sleep whose deadline the sweeper found passed, so that a poll
    /// needs no clock read.
    expired: AtomicU64,
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

    /// The timer for one connection's HTTP/1.1 server. The connection's
    /// slot lives as long as the timer and the sleeps it made.
    pub fn timer(self: &Arc<Self>) -> ConnTimer {
        let slot = Arc::new(Slot::default());
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&slot));
        ConnTimer {
            deadlines: Arc::clone(self),
            slot,
            next: AtomicU64::new(1),
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
                let id = slot.armed_by.load(Ordering::Acquire);
                slot.expired.store(id, Ordering::Release);
                slot.waker.wake();
            }
            true
        });
    }
}

/// One connection's timer; see the module docs.
#[derive(Debug)]
pub struct ConnTimer {
    deadlines: Arc<HeaderDeadlines>,
    slot: Arc<Slot>,
    next: AtomicU64,
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn now(&self) -> Instant {
        self.deadlines.now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.slot.armed_by.store(id, Ordering::Release);
        self.slot
            .deadline
            .store(self.deadlines.nanos(deadline), Ordering::Release);
        Box::pin(HeaderSleep {
            slot: Arc::clone(&self.slot),
            id,
        })
    }
}

/// A sleep armed in its connection's slot. It ends when the sweeper has
/// found its deadline passed.
#[derive(Debug)]
struct HeaderSleep {
    slot: Arc<Slot>,
    id: u64,
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.expired.load(Ordering::Acquire) == self.id {
            return Poll::Ready(());
        }
        // The sweeper marks and wakes the slot on every tick past the
        // deadline, so a wake racing this registration is repeated, never
        // lost.
        self.slot.waker.register(cx.waker());
        Poll::Pending
    }
}

impl Sleep for HeaderSleep {}

impl Drop for HeaderSleep {
    fn drop(&mut self) {
        if self.slot.armed_by.load(Ordering::Relaxed) == self.id {
            self.slot.deadline.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_wakes() -> (std::task::Waker, Arc<std::sync::atomic::AtomicUsize>) {
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Arc::new(Count(Arc::clone(&n))).into(), n)
    }

    #[test]
    fn a_sleep_is_woken_once_its_deadline_has_passed_and_not_before() {
        let d = HeaderDeadlines::new(Duration::from_secs(1));
        let timer = d.timer();
        let start = Instant::now();
        let mut sleep = timer.sleep_until(start + Duration::from_secs(5));
        let (waker, wakes) = count_wakes();
        let mut cx = Context::from_waker(&waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());

        d.wake_expired(start + Duration::from_secs(4));
        assert_eq!(wakes.load(Ordering::SeqCst), 0, "woken before its deadline");
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        d.wake_expired(start + Duration::from_secs(6));
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert!(sleep.as_mut().poll(&mut cx).is_ready());

        // The next head's sleep starts afresh.
        drop(sleep);
        let mut next = timer.sleep_until(start + Duration::from_secs(10));
        assert!(next.as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn a_dropped_sleep_disarms_its_slot_but_not_its_successors() {
        let d = HeaderDeadlines::new(Duration::from_secs(1));
        let timer = d.timer();
        let start = Instant::now();
        let (waker, wakes) = count_wakes();
        let mut cx = Context::from_waker(&waker);

        let mut first = timer.sleep_until(start + Duration::from_secs(1));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        drop(first);
        d.wake_expired(start + Duration::from_secs(2));
        assert_eq!(wakes.load(Ordering::SeqCst), 0, "a finished head was woken");

        // hyper's default `reset` makes the new sleep before it drops the old.
        let old = timer.sleep_until(start + Duration::from_secs(3));
        let mut new = timer.sleep_until(start + Duration::from_secs(3));
        drop(old);
        assert!(new.as_mut().poll(&mut cx).is_pending());
        d.wake_expired(start + Duration::from_secs(4));
        assert_eq!(
            wakes.load(Ordering::SeqCst),
            1,
            "the successor was disarmed"
        );
    }

    #[test]
    fn the_timers_clock_is_the_last_sweep_rounded_up_by_a_tick() {
        let d = HeaderDeadlines::new(Duration::from_secs(1));
        let timer = d.timer();
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
    fn ended_connections_are_forgotten() {
        let d = HeaderDeadlines::new(Duration::from_secs(1));
        let kept = d.timer();
        drop(d.timer());
        d.wake_expired(Instant::now());
        assert_eq!(d.conns.lock().unwrap().len(), 1);
        drop(kept);
        d.wake_expired(Instant::now());
        assert!(d.conns.lock().unwrap().is_empty());
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
