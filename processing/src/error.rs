//! The processing crate's errors. [`DefinitionError`] is what is wrong with what a user
//! wrote (a job definition, an aggregation, a window, a builder chain), each one sentence
//! naming the field, as the admin API returns it; [`Error`] is everything else: the broker
//! refusing a step, state that cannot be written or read back, a task that panicked. A
//! failed job shows its error's message in its status and restarts from its checkpoint.

use std::path::PathBuf;

use sluice_broker::in_process::ClientError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Definition(#[from] DefinitionError),

    #[error("processing.worker.threads must be a number, got \"{0}\"")]
    WorkerThreadsNotANumber(String),
    #[error("processing.worker.threads must be between 1 and 256, got {0}")]
    WorkerThreadsOutOfRange(usize),
    #[error("unknown processing config \"{0}\"; known: processing.worker.threads")]
    UnknownConfig(String),

    #[error("{} is damaged ({source}); fix or remove it to start the broker", path.display())]
    JobsFileDamaged { path: PathBuf, source: serde_json::Error },
    #[error("cannot read {}: {source}", path.display())]
    JobsFileUnreadable { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    JobsFileUnwritable { path: PathBuf, source: std::io::Error },

    #[error("input topic {0} does not exist")]
    NoInputTopic(String),
    /// `role` says what the topic is to the job: input, output or changelog.
    #[error("cannot create {role} topic {topic}: {source}")]
    CreateTopic { role: &'static str, topic: String, source: ClientError },
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The broker refused a step of the job's transaction.
    #[error("transaction {transactional_id}: {source}")]
    Transaction { transactional_id: String, source: ClientError },
    #[error(transparent)]
    Storage(#[from] sluice_storage::Error),
    #[error("cannot read partition {partition}: {source}")]
    ReadInput { partition: usize, source: sluice_storage::Error },
    #[error("changelog {topic}: {source}")]
    OpenChangelog { topic: String, source: ClientError },
    #[error("cannot read {topic}-{partition}: {source}")]
    ReadChangelog { topic: String, partition: i32, source: sluice_storage::Error },

    #[error(
        "job {job} has state in its changelogs but no committed offsets in group {group} (expired after \
         offsets.retention.minutes?); delete its changelog topics to start it afresh"
    )]
    StateWithoutOffsets { job: String, group: String },
    #[error(
        "job {0}'s checkpoint was made by a different definition; stop it and start the new definition under \
         another name"
    )]
    CheckpointOfAnotherDefinition(String),

    #[error("state cannot be serialised: {0}")]
    EncodeState(serde_json::Error),
    /// A changelog value that does not decode; `what` names the operator's state.
    #[error("bad {what} state: {source}")]
    DecodeState { what: &'static str, source: serde_json::Error },
    /// Restored sessions that overlap or end before they start: no checkpoint writes those.
    #[error("restored sessions are not apart: {0}")]
    SessionsOverlap(String),
    #[error("a window key needs 16 bytes of times, got {0}")]
    ShortWindowKey(usize),
    /// `what` is "window" or "session".
    #[error("a {0} key is not UTF-8")]
    KeyNotUtf8(&'static str),
    /// A codec asked for the kind of state its operator does not keep: a bug of ours.
    #[error("the {operator} operator keeps no {what}")]
    NotKept { operator: &'static str, what: &'static str },
    #[error("no operator {operator} in the {job} job")]
    NoSuchOperator { operator: usize, job: &'static str },
    /// A restored changelog record that does not apply; the runtime says where it was.
    #[error("{topic} partition {group}: {source}")]
    RestoreState { topic: String, group: usize, source: Box<Error> },
    #[error("cannot checkpoint key group {group}: {source}")]
    CheckpointState { group: usize, source: Box<Error> },

    /// What panicked: "a source task", "a key group task" or "the job's driver".
    #[error("{0} panicked")]
    Panicked(&'static str),
}

/// What is wrong with a job as a user defined it; the message names the field and says
/// what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("the job definition is not valid: {0}")]
    NotJson(serde_json::Error),
    #[error("a job name must be 1 to {max} characters, got {length}")]
    NameLength { length: usize, max: usize },
    #[error("job name \"{0}\" may only use letters, digits, '.', '_' and '-'")]
    NameCharacters(String),
    #[error("unknown job kind \"{0}\"; the kinds are: clickstream, aggregation")]
    UnknownKind(String),
    #[error("a clickstream job takes no \"aggregation\"")]
    ClickstreamWithAggregation,
    #[error("an aggregation job needs its \"aggregation\" definition")]
    NoAggregation,
    #[error("an aggregation job needs an \"input\" topic")]
    NoInput,
    #[error("an aggregation job cannot write to its own input topic")]
    OutputIsInput,
    #[error("\"{0}\" cannot be a job's input topic")]
    BadInputTopic(String),
    #[error("the clickstream job writes {0}; it cannot read it too")]
    ReadsItsOutput(String),
    #[error("commit_interval_ms must be between 10 and {max}, got {value}")]
    CommitInterval { value: u64, max: u64 },
    #[error("idle_timeout_ms must be positive, got {0}")]
    IdleTimeout(i64),

    /// In the job's `aggregation` definition.
    #[error("aggregation: {0}")]
    Aggregation(Box<DefinitionError>),
    #[error("\"{0}\" cannot be an output topic")]
    BadOutputTopic(String),
    /// In the aggregation's `window`.
    #[error("window: {0}")]
    Window(Box<DefinitionError>),
    #[error("window must be one of {{\"tumbling_ms\"}}, {{\"sliding_ms\", \"slide_ms\"}} or {{\"session_gap_ms\"}}")]
    WindowShape,
    #[error("watermark_bound_ms and allowed_lateness_ms cannot be negative")]
    NegativeBound,
    #[error("a job needs 1 to {max} aggregates, got {count}")]
    AggregateCount { count: usize, max: usize },
    #[error("aggregate name \"{0}\" is already an output field")]
    AggregateNameTaken(String),
    #[error("aggregate \"{0}\" needs a \"field\"")]
    AggregateWithoutField(String),
    #[error("the condition on \"{0}\" needs exactly one of equals, starts_with")]
    Condition(String),

    #[error("window size must be positive, got {0} ms")]
    WindowSize(i64),
    #[error("window size and slide must be positive, got {size_ms} ms and {slide_ms} ms")]
    WindowSizeOrSlide { size_ms: i64, slide_ms: i64 },
    #[error("window size ({size_ms} ms) must be a multiple of the slide ({slide_ms} ms)")]
    SlideNotDivisor { size_ms: i64, slide_ms: i64 },
    #[error("a {size_ms} ms window sliding every {slide_ms} ms puts each event in more than {max} windows")]
    TooManyWindows { size_ms: i64, slide_ms: i64, max: i64 },
    #[error("session gap must be positive, got {0} ms")]
    SessionGap(i64),
    #[error("allowed lateness cannot be negative, got {0} ms")]
    NegativeLateness(i64),
}
