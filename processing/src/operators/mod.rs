//! The operators jobs are composed of, behind one interface: keyed state fed a batch of
//! events at a time, results emitted when the watermark completes them, and state written
//! to and read back from a changelog at checkpoints (the hooks Flink's and Arroyo's
//! operators have). The parts: event-time watermarks (`watermark`), window assignment
//! (`window_assigner`), the keyed windowed aggregation (`windowed_aggregate`), aggregate
//! functions (`aggregate_functions`), keyed process functions with timers
//! (`process_function`), and the maps keyed state lives in (`state`).
//!
//! Invariant: an operator's watermark never goes back, and a result it has emitted is never
//! emitted again.

use crate::dataflow::EventTime;
use crate::dataflow::{KeyGroup, StateRecord};
use crate::error::Result;

pub mod aggregate_functions;
pub mod process_function;
pub(crate) mod state;
pub mod watermark;
pub mod window_assigner;
pub mod windowed_aggregate;

/// One stateful step of a key group.
pub trait Operator: Send {
    /// What it reads, a batch at a time.
    type In;
    /// What it emits when the watermark completes it.
    type Out;
    /// What the operators of a key group share and their changelog records refer to (a
    /// dictionary of interned keys, say); `()` when there is nothing.
    type Context: ?Sized;

    /// Applies a batch of inputs, leaving `batch` empty (its capacity is kept for the next
    /// one); returns how many were dropped as late.
    fn process_batch(&mut self, batch: &mut Vec<Self::In>) -> u64;

    /// Moves the watermark (it never goes back) and appends what it completes.
    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<Self::Out>);

    /// Writes the state changed since the last checkpoint; an error if some of it cannot be
    /// written.
    fn checkpoint(&mut self, context: &Self::Context, out: &mut ChangelogWriter<'_>) -> Result<()>;

    /// Applies one changelog record, the latest value of its key.
    fn restore(&mut self, context: &mut Self::Context, key: &[u8], value: &[u8]) -> Result<()>;

    /// The watermark of the checkpoint restored, before any new input.
    fn restore_watermark(&mut self, watermark: EventTime);

    /// Keyed state entries held (windows per key, keys with sessions or timers).
    fn state_entries(&self) -> usize;
}

/// An event on its way into a keyed operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedEvent<K, V> {
    pub key: K,
    pub time: EventTime,
    pub value: V,
}

/// Where an operator writes its state changes at a checkpoint: records of the operator's
/// own changelog (its number in the job, as [`StateRecord::operator`]).
pub struct ChangelogWriter<'a> {
    operator: usize,
    records: &'a mut Vec<StateRecord>,
}

impl<'a> ChangelogWriter<'a> {
    pub fn new(operator: usize, records: &'a mut Vec<StateRecord>) -> ChangelogWriter<'a> {
        ChangelogWriter { operator, records }
    }

    /// A key's latest state, or (`None`) its removal.
    pub fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.records.push(StateRecord { operator: self.operator, key, value });
    }
}

/// Turns an operator's outputs into its key group's results.
pub type Emit<Out, R> = Box<dyn Fn(Out) -> R + Send + Sync>;

/// A key group of one operator with nothing to share ([`Operator::Context`] is `()`): the
/// aggregation job's and the builder's.
pub struct OperatorGroup<O: Operator, R> {
    operator: O,
    emit: Emit<O::Out, R>,
}

impl<O: Operator, R> OperatorGroup<O, R> {
    pub fn new(operator: O, emit: Emit<O::Out, R>) -> OperatorGroup<O, R> {
        OperatorGroup { operator, emit }
    }
}

impl<O, R> KeyGroup for OperatorGroup<O, R>
where
    O: Operator<Context = ()> + 'static,
    R: 'static,
{
    type Event = O::In;
    type Result = R;

    fn process(&mut self, events: &mut Vec<O::In>, late: &mut [u64]) {
        let dropped = self.operator.process_batch(events);
        if let Some(count) = late.first_mut() {
            *count += dropped;
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<R>) {
        let mut fired = Vec::new();
        self.operator.on_watermark(watermark, &mut fired);
        out.extend(fired.into_iter().map(&self.emit));
    }

    fn checkpoint(&mut self, out: &mut Vec<StateRecord>) -> Result<()> {
        self.operator.checkpoint(&(), &mut ChangelogWriter::new(0, out))
    }

    fn restore(&mut self, operator: usize, key: &[u8], value: &[u8]) -> Result<()> {
        debug_assert_eq!(operator, 0, "a key group of one operator has one changelog");
        self.operator.restore(&mut (), key, value)
    }

    fn restore_watermark(&mut self, watermark: EventTime) {
        self.operator.restore_watermark(watermark);
    }

    fn state_entries(&self) -> usize {
        self.operator.state_entries()
    }
}
