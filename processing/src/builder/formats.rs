//! How a built job reads its source topic's records and writes its sink topic's values:
//! JSON through serde, or the records' bytes as they are.

use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::dataflow::{Rejection, SourceRecord};

/// How a source topic's records are read.
pub trait SourceFormat: Send + Sync + 'static {
    type Item: Send + 'static;
    fn decode(&self, record: &SourceRecord) -> Result<Self::Item, Rejection>;
}

/// How a sink topic's values are written.
pub trait SinkFormat<O>: Send + Sync + 'static {
    fn encode(&self, output: &O) -> Bytes;
}

/// JSON values through serde: reading `T` (a record that does not parse is malformed), or
/// writing it.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Default for Json<T> {
    fn default() -> Self {
        Json(PhantomData)
    }
}

impl<T: DeserializeOwned + Send + 'static> SourceFormat for Json<T> {
    type Item = T;
    fn decode(&self, record: &SourceRecord) -> Result<T, Rejection> {
        let value = record.value.as_deref().ok_or(Rejection::Malformed)?;
        serde_json::from_slice(value).map_err(|_| Rejection::Malformed)
    }
}

impl<O: Serialize + 'static> SinkFormat<O> for Json<O> {
    fn encode(&self, output: &O) -> Bytes {
        Bytes::from(serde_json::to_vec(output).unwrap_or_default())
    }
}

/// Records as they are: key, value and timestamp, slices of the log.
pub struct Raw;

#[derive(Clone, Debug)]
pub struct RawRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp_ms: i64,
}

impl SourceFormat for Raw {
    type Item = RawRecord;
    fn decode(&self, record: &SourceRecord) -> Result<RawRecord, Rejection> {
        Ok(RawRecord { key: record.key.clone(), value: record.value.clone(), timestamp_ms: record.timestamp_ms })
    }
}

impl<O: AsRef<[u8]> + 'static> SinkFormat<O> for Raw {
    fn encode(&self, output: &O) -> Bytes {
        Bytes::copy_from_slice(output.as_ref())
    }
}
