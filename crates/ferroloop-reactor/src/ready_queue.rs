//! Callbacks that are ready to run.
//!
//! asyncio's rule: one loop iteration runs the callbacks that were ready when the
//! iteration's run phase began; callbacks scheduled while they run wait for the next
//! iteration (after another poll). [`ReadyQueue::take_batch`] hands out exactly that set
//! in O(1) by swapping buffers, so the lock that guards the queue is held once per phase
//! instead of once per callback.

use std::collections::VecDeque;

/// FIFO queue of ready callbacks with batch hand-out.
pub struct ReadyQueue<T> {
    queue: VecDeque<T>,
    /// An empty buffer kept for the next swap, so steady-state batches do not allocate.
    spare: VecDeque<T>,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ReadyQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        ReadyQueue {
            queue: VecDeque::new(),
            spare: VecDeque::new(),
        }
    }

    /// Appends a callback; it runs after everything already queued.
    #[inline]
    pub fn push(&mut self, item: T) {
        self.queue.push_back(item);
    }

    /// Number of queued callbacks.
    #[inline]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes every queued callback as one batch; the queue starts empty again.
    pub fn take_batch(&mut self) -> VecDeque<T> {
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.queue, spare)
    }

    /// Gives back a batch buffer once it is empty so its capacity is reused.
    pub fn recycle(&mut self, batch: VecDeque<T>) {
        if batch.is_empty() && batch.capacity() > self.spare.capacity() {
            self.spare = batch;
        }
    }

    /// Puts the unrun rest of an interrupted batch back in front of the queue, keeping
    /// FIFO order (a callback raised `KeyboardInterrupt`; the others still run later).
    pub fn requeue_front(&mut self, rest: VecDeque<T>) {
        if rest.is_empty() {
            return;
        }
        let newer = std::mem::replace(&mut self.queue, rest);
        self.queue.extend(newer);
    }

    /// Removes everything (loop close), returning the callbacks to the caller.
    pub fn clear(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.queue)
    }

    /// Visits every queued callback (for the garbage collector's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.queue.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_holds_only_what_was_ready() {
        let mut q = ReadyQueue::new();
        q.push(1);
        q.push(2);
        let mut batch = q.take_batch();
        // Scheduled while the batch runs: goes to the next batch.
        q.push(3);
        assert_eq!(batch.pop_front(), Some(1));
        assert_eq!(batch.pop_front(), Some(2));
        assert_eq!(batch.pop_front(), None);
        q.recycle(batch);
        assert_eq!(q.take_batch().into_iter().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn interrupted_batch_goes_back_in_front() {
        let mut q = ReadyQueue::new();
        for i in 1..=4 {
            q.push(i);
        }
        let mut batch = q.take_batch();
        assert_eq!(batch.pop_front(), Some(1));
        q.push(5);
        q.requeue_front(batch);
        assert_eq!(
            q.take_batch().into_iter().collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
    }

    #[test]
    fn recycled_buffer_is_reused() {
        let mut q = ReadyQueue::new();
        for i in 0..1000 {
            q.push(i);
        }
        let mut batch = q.take_batch();
        batch.clear();
        let cap = batch.capacity();
        q.recycle(batch);
        q.push(1);
        let _ = q.take_batch();
        // The queue now runs on the recycled buffer.
        assert!(q.queue.capacity() >= cap);
    }
}
