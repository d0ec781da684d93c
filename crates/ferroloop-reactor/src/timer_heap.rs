//! Scheduled callbacks ordered by deadline.
//!
//! asyncio keeps `call_later`/`call_at` handles in a binary heap and deals with
//! cancellation lazily: a cancelled handle stays in the heap and is skipped when it
//! reaches the top, unless more than half of a large heap is cancelled, in which case the
//! heap is rebuilt without them. [`TimerHeap`] reproduces that policy (the constants are
//! CPython's) so that a program cancelling millions of timers keeps a small heap, and adds
//! a sequence number so that timers with equal deadlines fire in scheduling order.

use dary_heap::QuaternaryHeap as BinaryHeap;
use std::cmp::Ordering;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

/// Below this many entries the heap is never rebuilt (CPython's
/// `_MIN_SCHEDULED_TIMER_HANDLES`).
pub const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;

/// Rebuild once more than this fraction of the heap is cancelled (CPython's
/// `_MIN_CANCELLED_TIMER_HANDLES_FRACTION`).
pub const MIN_CANCELLED_TIMER_HANDLES_FRACTION: f64 = 0.5;

/// What the heap needs to know about the handles it stores.
pub trait TimerEntry {
    /// True once the handle was cancelled; cancelled entries are dropped, never fired.
    fn is_cancelled(&self) -> bool;
    /// Called when the entry leaves the heap, so that a later `cancel()` no longer counts
    /// it as a cancelled heap entry.
    fn mark_unscheduled(&self);
}

struct Scheduled<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Scheduled<T> {}

impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Scheduled<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest deadline first.
    /// `total_cmp` gives NaN deadlines a place (after +inf) instead of breaking the heap.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A min-heap of timer handles keyed by (deadline, scheduling order).
///
/// Entries removed by [`TimerHeap::tidy`] and [`TimerHeap::clear`] are handed back to the
/// caller instead of being dropped here: in the binding they are Python objects, and the
/// caller must release them only after letting go of the lock that guards the heap.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Scheduled<T>>,
    next_seq: u64,
    cancelled: Arc<AtomicUsize>,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerHeap<T> {
    /// An empty heap.
    pub fn new() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The counter that cancelled handles bump (see [`note_cancelled`]); handles keep a
    /// clone so that `cancel()` needs no reference back to the loop.
    pub fn cancel_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.cancelled)
    }

    /// Number of entries, cancelled ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// How many entries are known to be cancelled but still stored.
    pub fn cancelled_count(&self) -> usize {
        self.cancelled.load(AtomicOrdering::Relaxed)
    }

    /// Schedules `item` at `when` (seconds on the loop clock).
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Scheduled { when, seq, item });
    }

    /// Deadline of the earliest entry, cancelled or not.
    pub fn peek_when(&self) -> Option<f64> {
        self.heap.peek().map(|s| s.when)
    }

    fn forget_cancelled(&self) {
        // Saturating: cancel() and removal race benignly across threads, and the count is
        // only a heuristic for when to rebuild.
        let _ =
            self.cancelled
                .fetch_update(AtomicOrdering::Relaxed, AtomicOrdering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
    }
}

impl<T: TimerEntry> TimerHeap<T> {
    /// Drops cancelled entries the way asyncio's `_run_once` does before computing the
    /// poll timeout: rebuild the heap when most of a large heap is cancelled, otherwise
    /// pop cancelled entries off the top. Returns the removed entries.
    pub fn tidy(&mut self) -> Vec<T> {
        let len = self.heap.len();
        let cancelled = self.cancelled_count();
        if len > MIN_SCHEDULED_TIMER_HANDLES
            && cancelled as f64 / len as f64 > MIN_CANCELLED_TIMER_HANDLES_FRACTION
        {
            let (keep, removed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
                .into_vec()
                .into_iter()
                .partition(|s| !s.item.is_cancelled());
            self.heap = BinaryHeap::from(keep);
            self.cancelled.store(0, AtomicOrdering::Relaxed);
            return removed
                .into_iter()
                .map(|s| {
                    s.item.mark_unscheduled();
                    s.item
                })
                .collect();
        }
        let mut removed = Vec::new();
        while self.heap.peek().is_some_and(|s| s.item.is_cancelled()) {
            let s = self.heap.pop().expect("peeked entry exists");
            s.item.mark_unscheduled();
            self.forget_cancelled();
            removed.push(s.item);
        }
        removed
    }

    /// Pops the earliest entry if its deadline is before `end_time`.
    ///
    /// Cancelled entries are returned too (the ready queue skips them), matching asyncio,
    /// which moves every due handle to the ready queue.
    pub fn pop_due(&mut self, end_time: f64) -> Option<T> {
        // Not `when < end_time`: a NaN deadline counts as due, which is what CPython's
        // `handle._when >= end_time` check does with NaN.
        let due = |s: &Scheduled<T>| {
            !matches!(
                s.when.partial_cmp(&end_time),
                Some(Ordering::Greater | Ordering::Equal)
            )
        };
        if self.heap.peek().is_some_and(due) {
            let s = self.heap.pop().expect("peeked entry exists");
            s.item.mark_unscheduled();
            if s.item.is_cancelled() {
                self.forget_cancelled();
            }
            Some(s.item)
        } else {
            None
        }
    }

    /// Empties the heap (loop close), returning every entry.
    pub fn clear(&mut self) -> Vec<T> {
        self.cancelled.store(0, AtomicOrdering::Relaxed);
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|s| {
                s.item.mark_unscheduled();
                s.item
            })
            .collect()
    }

    /// Visits every stored entry (for the garbage collector's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|s| &s.item)
    }
}

/// Records that a scheduled entry was cancelled; called by handles through the counter
/// obtained from [`TimerHeap::cancel_counter`].
pub fn note_cancelled(counter: &AtomicUsize) {
    counter.fetch_add(1, AtomicOrdering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Timer {
        id: u32,
        cancelled: AtomicBool,
        scheduled: AtomicBool,
        counter: Arc<AtomicUsize>,
    }

    impl Timer {
        fn new(id: u32, heap: &TimerHeap<Arc<Timer>>) -> Arc<Timer> {
            Arc::new(Timer {
                id,
                cancelled: AtomicBool::new(false),
                scheduled: AtomicBool::new(true),
                counter: heap.cancel_counter(),
            })
        }

        fn cancel(&self) {
            if !self.cancelled.swap(true, AtomicOrdering::Relaxed)
                && self.scheduled.load(AtomicOrdering::Relaxed)
            {
                note_cancelled(&self.counter);
            }
        }
    }

    impl TimerEntry for Arc<Timer> {
        fn is_cancelled(&self) -> bool {
            self.cancelled.load(AtomicOrdering::Relaxed)
        }
        fn mark_unscheduled(&self) {
            self.scheduled.store(false, AtomicOrdering::Relaxed);
        }
    }

    fn drain(heap: &mut TimerHeap<Arc<Timer>>, end: f64) -> Vec<u32> {
        std::iter::from_fn(|| heap.pop_due(end))
            .filter(|t| !t.is_cancelled())
            .map(|t| t.id)
            .collect()
    }

    #[test]
    fn pops_in_deadline_order() {
        let mut heap = TimerHeap::new();
        for (id, when) in [(1, 3.0), (2, 1.0), (3, 2.0)] {
            let t = Timer::new(id, &heap);
            heap.push(when, t);
        }
        assert_eq!(heap.peek_when(), Some(1.0));
        assert_eq!(drain(&mut heap, 10.0), vec![2, 3, 1]);
    }

    #[test]
    fn equal_deadlines_fire_in_scheduling_order() {
        let mut heap = TimerHeap::new();
        for id in 0..1000 {
            let t = Timer::new(id, &heap);
            heap.push(5.0, t);
        }
        assert_eq!(drain(&mut heap, 6.0), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn only_due_entries_pop() {
        let mut heap = TimerHeap::new();
        for (id, when) in [(1, 1.0), (2, 2.0)] {
            let t = Timer::new(id, &heap);
            heap.push(when, t);
        }
        assert_eq!(drain(&mut heap, 1.5), vec![1]);
        assert_eq!(heap.len(), 1);
        // The end time is exclusive, as in asyncio (`when >= end_time` stops).
        assert_eq!(drain(&mut heap, 2.0), Vec::<u32>::new());
    }

    #[test]
    fn cancelled_heads_are_tidied() {
        let mut heap = TimerHeap::new();
        let a = Timer::new(1, &heap);
        let b = Timer::new(2, &heap);
        heap.push(1.0, Arc::clone(&a));
        heap.push(2.0, Arc::clone(&b));
        a.cancel();
        assert_eq!(heap.cancelled_count(), 1);
        let removed = heap.tidy();
        assert_eq!(removed.len(), 1);
        assert_eq!(heap.cancelled_count(), 0);
        assert_eq!(heap.peek_when(), Some(2.0));
        // Cancelling after removal is not counted again.
        a.cancel();
        assert_eq!(heap.cancelled_count(), 0);
    }

    #[test]
    fn mass_cancellation_rebuilds_the_heap() {
        let mut heap = TimerHeap::new();
        let keep = Timer::new(0, &heap);
        heap.push(0.5, Arc::clone(&keep));
        for id in 1..=1000 {
            let t = Timer::new(id, &heap);
            heap.push(3600.0, Arc::clone(&t));
            t.cancel();
        }
        let removed = heap.tidy();
        assert_eq!(removed.len(), 1000);
        assert_eq!(heap.len(), 1);
        assert_eq!(heap.cancelled_count(), 0);
        assert_eq!(drain(&mut heap, 1.0), vec![0]);
    }

    #[test]
    fn small_heaps_are_not_rebuilt() {
        let mut heap = TimerHeap::new();
        let keep = Timer::new(0, &heap);
        heap.push(0.5, Arc::clone(&keep));
        for id in 1..=50 {
            let t = Timer::new(id, &heap);
            heap.push(3600.0, Arc::clone(&t));
            t.cancel();
        }
        assert!(heap.tidy().is_empty());
        assert_eq!(heap.len(), 51);
    }

    #[test]
    fn nan_deadline_does_not_break_ordering() {
        let mut heap = TimerHeap::new();
        for (id, when) in [(1, f64::NAN), (2, 1.0), (3, f64::INFINITY)] {
            let t = Timer::new(id, &heap);
            heap.push(when, t);
        }
        assert_eq!(drain(&mut heap, 2.0), vec![2]);
        assert_eq!(heap.len(), 2);
    }

    #[test]
    fn clear_returns_everything() {
        let mut heap = TimerHeap::new();
        for id in 0..10 {
            let t = Timer::new(id, &heap);
            heap.push(id as f64, t);
        }
        assert_eq!(heap.clear().len(), 10);
        assert!(heap.is_empty());
    }
}
