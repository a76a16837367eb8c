//! The work of one round, as it runs on the worker pool: a source task reads and routes its
//! partition's next records; a key group's task applies them, fires what the watermark
//! completes and, at a checkpoint, reports its state changes. Each task owns what it works
//! on and hands it back to the driver when done.

use crate::dataflow::EventTime;
use crate::dataflow::{Dataflow, KeyGroup, Routed, StateRecord};
use crate::error::{Error, Result};
use crate::runtime::source::LogSource;

use crate::runtime::checkpoint::PartitionCheckpoint;

/// Bytes read from one partition per round: small enough that a round stays short (the
/// watermark and the stop flag are looked at between rounds), large enough to amortise it.
const ROUND_BYTES: usize = 512 * 1024;

/// Per key group, the batches of events the source tasks routed to it.
pub(crate) type Inbound<D> = Vec<Vec<Vec<<D as Dataflow>::Event>>>;

/// A key group's work in one round.
pub(crate) struct GroupWork<D: Dataflow> {
    pub(crate) index: usize,
    pub(crate) group: D::Group,
    pub(crate) inbound: Vec<Vec<D::Event>>,
}

pub(crate) struct GroupDone<D: Dataflow> {
    pub(crate) index: usize,
    pub(crate) group: D::Group,
    pub(crate) results: Vec<D::Result>,
    /// Events dropped as late, per operator.
    pub(crate) late: Vec<u64>,
    pub(crate) state: Vec<StateRecord>,
    /// State that could not be written: the checkpoint must not commit without it.
    pub(crate) state_error: Option<Error>,
}

impl<D: Dataflow> GroupWork<D> {
    pub(crate) fn run(mut self, operators: usize, watermark: EventTime, checkpoint: bool) -> GroupDone<D> {
        let mut late = vec![0u64; operators];
        for mut events in self.inbound {
            self.group.process(&mut events, &mut late);
        }
        // Always: a group may have results before the first watermark (a process
        // function's outputs), and they must go out with this round's checkpoint.
        let mut results = Vec::new();
        self.group.on_watermark(watermark, &mut results);
        let mut state = Vec::new();
        let state_error = if checkpoint { self.group.checkpoint(&mut state).err() } else { None };
        GroupDone { index: self.index, group: self.group, results, late, state, state_error }
    }
}

pub(crate) struct SourceTask {
    pub(crate) partition: usize,
    pub(crate) source: LogSource,
    pub(crate) committed: i64,
    /// The counters as of the current position.
    pub(crate) checkpoint: PartitionCheckpoint,
}

pub(crate) struct Polled<E> {
    pub(crate) routed: Vec<Vec<E>>,
    pub(crate) records: u64,
    pub(crate) max_ts: Option<EventTime>,
}

impl SourceTask {
    pub(crate) fn poll<D: Dataflow>(&mut self, dataflow: &D, groups: usize, now: i64) -> Result<Polled<D::Event>> {
        let records =
            self.source.poll(ROUND_BYTES).map_err(|source| Error::ReadInput { partition: self.partition, source })?;
        let mut routed = Routed::new(groups);
        dataflow.parse(&records, now, &mut routed);
        self.checkpoint.malformed += routed.malformed();
        self.checkpoint.absurd += routed.absurd_timestamps();
        self.checkpoint.records_in += records.len() as u64;
        let max_ts = routed.max_event_time();
        Ok(Polled { routed: routed.into_groups(), records: records.len() as u64, max_ts })
    }
}
