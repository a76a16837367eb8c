//! The Rust builder API for jobs: a typed chain from a source topic to a sink topic,
//!
//! ```text
//! source("clicks", Json::<Click>::default())
//!     .filter(|c| !c.page.is_empty())
//!     .timestamps(|c| c.ts, 5_000)            // event time, bounded out-of-orderness
//!     .key_by(|c| c.page.clone())             // reshuffle: each key lives in one key group
//!     .window(WindowSpec::Tumbling { size_ms: 60_000 })
//!     .aggregate(|count: &mut Count, _| count.add(&()), |page, window, views| (page.clone(), window.start, views))
//!     .sink("page-views", Json::default())
//! ```
//!
//! or `.process(function)` after `key_by` for a keyed process function with its own state
//! and event-time timers. What it builds is a [`Dataflow`](crate::Dataflow) the runtime runs
//! like any other (a [`WindowJob`] or a [`ProcessJob`]): keyed state is checkpointed to a
//! changelog (state, keys and aggregates are serde types), late events are dropped and
//! counted. This module is the chain; `formats`, `key_by` and the two jobs are its parts.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::DefinitionError;
use crate::operators::windowed_aggregate::FoldFn;

mod formats;
mod key_by;
mod process_job;
mod window_job;

pub use crate::dataflow::EventTime;
pub use crate::operators::aggregate_functions::{Aggregate, Average, Count, DistinctCount, Max, Min, Sum, TopN};
pub use crate::operators::process_function::{Context, ProcessFunction};
pub use crate::operators::state::Key;
pub use crate::operators::window_assigner::{Window, WindowSpec};
pub use formats::{Json, Raw, RawRecord, SinkFormat, SourceFormat};
pub use key_by::KeyBy;
use key_by::{KeyFn, Step, TimeFn};
pub use process_job::{ProcessGroup, ProcessJob};
use window_job::WindowResult;
pub use window_job::{WindowGroup, WindowJob};

/// Records of a source topic after the stateless steps so far.
pub struct Stream<T> {
    input: String,
    step: Step<T>,
}

/// Starts a job at `topic`, read in `format`.
pub fn source<F: SourceFormat>(topic: &str, format: F) -> Stream<F::Item> {
    let step: Step<F::Item> = Arc::new(move |record, emit| {
        emit(format.decode(record)?);
        Ok(())
    });
    Stream { input: topic.to_string(), step }
}

impl<T: Send + 'static> Stream<T> {
    pub fn input(&self) -> &str {
        &self.input
    }

    pub fn map<U: Send + 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U> {
        let step = self.step;
        Stream { input: self.input, step: Arc::new(move |record, emit| step(record, &mut |t| emit(f(t)))) }
    }

    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        let step = self.step;
        let step: Step<T> = Arc::new(move |record, emit| {
            step(record, &mut |t| {
                if f(&t) {
                    emit(t)
                }
            })
        });
        Stream { input: self.input, step }
    }

    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U>>(
        self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> Stream<U> {
        let step = self.step;
        let step: Step<U> = Arc::new(move |record, emit| step(record, &mut |t| f(t).into_iter().for_each(&mut *emit)));
        Stream { input: self.input, step }
    }

    /// Event time from each element; the watermark allows `bound_ms` of out-of-orderness.
    pub fn timestamps(self, time: impl Fn(&T) -> EventTime + Send + Sync + 'static, bound_ms: i64) -> Timed<T> {
        Timed { stream: self, time: Arc::new(time), bound_ms }
    }
}

pub struct Timed<T> {
    stream: Stream<T>,
    time: TimeFn<T>,
    bound_ms: i64,
}

impl<T: Send + 'static> Timed<T> {
    pub fn watermark_bound_ms(&self) -> i64 {
        self.bound_ms
    }

    /// Partitions by key: every element of a key goes to the one task that holds its state.
    pub fn key_by<K: Key>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> Keyed<K, T> {
        let key: KeyFn<K, T> = Arc::new(key);
        let Timed { stream, time, bound_ms } = self;
        Keyed { source: KeyBy { input: stream.input, step: stream.step, time, watermark_bound_ms: bound_ms, key } }
    }
}

pub struct Keyed<K, T> {
    source: KeyBy<K, T>,
}

impl<K: Key, T: Send + 'static> Keyed<K, T> {
    pub fn window(self, spec: WindowSpec) -> Windowed<K, T> {
        Windowed { keyed: self, spec, allowed_lateness_ms: 0 }
    }

    /// A keyed process function: per-key state and event-time timers of its own.
    pub fn process<P: ProcessFunction<K, T>>(self, function: P) -> Processed<K, T, P> {
        Processed { keyed: self, function: Arc::new(function), allowed_lateness_ms: 0 }
    }
}

pub struct Windowed<K, T> {
    keyed: Keyed<K, T>,
    spec: WindowSpec,
    allowed_lateness_ms: i64,
}

impl<K: Key, T: Send + 'static> Windowed<K, T> {
    /// Events up to this far behind the watermark still count; a window fires when the
    /// watermark passes its end plus this.
    pub fn allowed_lateness(mut self, ms: i64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }

    /// Aggregates each key's window with `update` per element; `result` turns a fired
    /// window into an output.
    pub fn aggregate<A, O>(
        self,
        update: impl Fn(&mut A, &T) + Send + Sync + 'static,
        result: impl Fn(&K, Window, A::Output) -> O + Send + Sync + 'static,
    ) -> WindowStage<K, T, A, O>
    where
        A: Aggregate + Serialize + DeserializeOwned + Send + 'static,
        O: Send + 'static,
    {
        WindowStage { windowed: self, update: Arc::new(update), result: Arc::new(result) }
    }
}

pub struct WindowStage<K, T, A: Aggregate, O> {
    windowed: Windowed<K, T>,
    update: FoldFn<T, A>,
    result: WindowResult<K, A, O>,
}

impl<K, T, A, O> WindowStage<K, T, A, O>
where
    K: Key,
    T: Send + 'static,
    A: Aggregate + Serialize + DeserializeOwned + Send + 'static,
    O: Send + 'static,
{
    /// Ends the job at `topic`; checks the window definition.
    pub fn sink(self, topic: &str, format: impl SinkFormat<O>) -> Result<WindowJob<K, T, A, O>, DefinitionError> {
        let Windowed { keyed, spec, allowed_lateness_ms } = self.windowed;
        spec.validate()?;
        if allowed_lateness_ms < 0 {
            return Err(DefinitionError::NegativeLateness(allowed_lateness_ms));
        }
        Ok(WindowJob {
            source: keyed.source,
            spec,
            allowed_lateness_ms,
            update: self.update,
            result: self.result,
            topic: topic.into(),
            format: Arc::new(format),
        })
    }
}

pub struct Processed<K, T, P> {
    keyed: Keyed<K, T>,
    function: Arc<P>,
    allowed_lateness_ms: i64,
}

impl<K: Key, T: Send + 'static, P: ProcessFunction<K, T>> Processed<K, T, P> {
    /// Elements up to this far behind the watermark are still processed; further behind
    /// they are dropped and counted as late.
    pub fn allowed_lateness(mut self, ms: i64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }

    pub fn sink(self, topic: &str, format: impl SinkFormat<P::Output>) -> Result<ProcessJob<K, T, P>, DefinitionError> {
        if self.allowed_lateness_ms < 0 {
            return Err(DefinitionError::NegativeLateness(self.allowed_lateness_ms));
        }
        Ok(ProcessJob {
            source: self.keyed.source,
            function: self.function,
            allowed_lateness_ms: self.allowed_lateness_ms,
            topic: topic.into(),
            format: Arc::new(format),
        })
    }
}
