//! Event-time watermarks with bounded out-of-orderness: per source partition, the highest
//! event time seen minus the bound; for a task reading several partitions, the minimum over
//! them, except that a partition idle (no records) for longer than the idle timeout stops
//! holding the others back until it produces again.
//!
//! Invariant: the combined watermark never goes backwards, even when an idle partition
//! wakes up behind it (its records are then late, not a reason to rewind time).

use crate::dataflow::EventTime;

/// No watermark yet: nothing is complete.
pub const NO_WATERMARK: EventTime = i64::MIN;

#[derive(Clone, Debug)]
struct PartitionClock {
    max_event_time: EventTime,
    /// Processing time (ms) of the partition's last record.
    last_active_ms: i64,
}

#[derive(Clone, Debug)]
pub struct Watermarks {
    bound_ms: i64,
    idle_timeout_ms: i64,
    partitions: Vec<Option<PartitionClock>>,
    current: EventTime,
    /// Processing time of the first call: partitions that never produced count as idle
    /// from then on.
    started_ms: Option<i64>,
}

impl Watermarks {
    /// `partitions` inputs, each allowed to be `bound_ms` out of order; a partition silent
    /// for `idle_timeout_ms` of processing time no longer holds the watermark back.
    pub fn new(partitions: usize, bound_ms: i64, idle_timeout_ms: i64) -> Watermarks {
        Watermarks {
            bound_ms,
            idle_timeout_ms,
            partitions: vec![None; partitions],
            current: NO_WATERMARK,
            started_ms: None,
        }
    }

    /// Records an event on `partition` at processing time `now_ms`.
    pub fn observe(&mut self, partition: usize, event_time: EventTime, now_ms: i64) {
        self.started_ms.get_or_insert(now_ms);
        let Some(slot) = self.partitions.get_mut(partition) else { return };
        match slot {
            Some(clock) => {
                clock.max_event_time = clock.max_event_time.max(event_time);
                clock.last_active_ms = now_ms;
            }
            None => *slot = Some(PartitionClock { max_event_time: event_time, last_active_ms: now_ms }),
        }
    }

    /// The watermark at processing time `now_ms`: every event time below it is complete
    /// (later events below it are late).
    pub fn advance(&mut self, now_ms: i64) -> EventTime {
        let started_ms = *self.started_ms.get_or_insert(now_ms);
        let mut any_active = false;
        let mut min = i64::MAX;
        let mut max_idle = NO_WATERMARK;
        for clock in &self.partitions {
            match clock {
                // A partition that never produced holds the watermark back until it is idle
                // for the timeout, counted from the task's start.
                None if now_ms - started_ms < self.idle_timeout_ms => return self.current,
                None => {}
                Some(clock) => {
                    let candidate = clock.max_event_time.saturating_sub(self.bound_ms);
                    if now_ms - clock.last_active_ms >= self.idle_timeout_ms {
                        max_idle = max_idle.max(candidate);
                    } else {
                        any_active = true;
                        min = min.min(candidate);
                    }
                }
            }
        }
        // All idle: time still moves to what the partitions reached.
        let next = if any_active { min } else { max_idle };
        if next == NO_WATERMARK && !any_active {
            return self.current;
        }
        self.current = self.current.max(next);
        self.current
    }

    pub fn current(&self) -> EventTime {
        self.current
    }

    /// The highest event time seen on `partition` (for a checkpoint).
    pub fn max_event_time(&self, partition: usize) -> Option<EventTime> {
        self.partitions.get(partition)?.as_ref().map(|c| c.max_event_time)
    }

    /// A partition's highest event time from a checkpoint, counted as active at `now_ms`.
    pub fn restore(&mut self, partition: usize, max_event_time: EventTime, now_ms: i64) {
        self.observe(partition, max_event_time, now_ms);
    }

    /// The watermark a checkpoint recorded: time does not go back across a restart.
    pub fn restore_current(&mut self, watermark: EventTime) {
        self.current = self.current.max(watermark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_active_partition_sets_the_watermark() {
        let mut w = Watermarks::new(2, 5_000, 60_000);
        w.observe(0, 100_000, 0);
        assert_eq!(w.advance(0), NO_WATERMARK, "partition 1 has not produced yet");
        assert_eq!(w.clone().advance(60_000), 95_000, "until it has been silent for the idle timeout");
        w.observe(1, 50_000, 0);
        assert_eq!(w.advance(0), 45_000);
        w.observe(1, 120_000, 1);
        assert_eq!(w.advance(1), 95_000);
        // Out-of-order events never move it back.
        w.observe(0, 10_000, 2);
        assert_eq!(w.advance(2), 95_000);
    }

    #[test]
    fn an_idle_partition_stops_holding_the_others_back_and_time_never_rewinds() {
        let mut w = Watermarks::new(2, 0, 1_000);
        w.observe(0, 10_000, 0);
        w.observe(1, 1_000, 0);
        assert_eq!(w.advance(500), 1_000);
        w.observe(0, 20_000, 1_500);
        assert_eq!(w.advance(1_500), 20_000, "partition 1 has been idle for 1.5 s");
        w.observe(1, 2_000, 1_600);
        assert_eq!(w.advance(1_600), 20_000, "a woken partition does not rewind the watermark");
    }
}
