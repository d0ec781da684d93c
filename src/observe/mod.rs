//! Seeing inside a running loop: the always-on counters of `loop.stats()` ([`stats`]),
//! and the blocked-loop watchdog ([`watchdog`]) with what it needs: the marks the loop
//! thread publishes ([`marks`]) and the ways to take the loop thread's stack
//! ([`stack`]). `ferroloop.format_tasks()` and the dump signal are Python
//! (`python/ferroloop/_tasks_tree.py`, `_observe.py`).

pub(crate) mod coarse_clock;
pub(crate) mod marks;
pub(crate) mod stack;
pub(crate) mod stats;
pub(crate) mod watchdog;

pub(crate) use stats::LoopStats;
pub(crate) use watchdog::Watchdog;
