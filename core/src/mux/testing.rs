//! Paired test harness (in progress).
