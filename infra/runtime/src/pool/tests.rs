//! Scheduler tests with an in-process launcher on paused time.
