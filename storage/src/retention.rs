//! Retention: which closed segments `retention.ms` and `retention.bytes` allow deleting. Only
//! whole segments go, oldest first, never the active one, and never one holding offsets at or
//! above the high watermark (a consumer may not have been allowed to read them yet).

use crate::config::LogConfig;
use crate::segment::{Segment, NO_TIMESTAMP};

/// How many segments from the front of `segments` retention deletes.
pub(crate) fn deletable_prefix(segments: &[Segment], config: &LogConfig, high_watermark: i64, now_ms: i64) -> usize {
    let total_bytes: u64 = segments.iter().map(|s| s.size).sum();
    let mut remaining_bytes = total_bytes;
    let mut count = 0;
    for segment in segments {
        if segment.active || segment.next_offset > high_watermark {
            break;
        }
        let expired = match config.retention_ms {
            // A segment without timestamps never expires by time, rather than at once.
            Some(retention_ms) => {
                segment.max_timestamp_ms != NO_TIMESTAMP
                    && now_ms.saturating_sub(segment.max_timestamp_ms) > retention_ms as i64
            }
            None => false,
        };
        let oversize = match config.retention_bytes {
            Some(retention_bytes) => remaining_bytes.saturating_sub(segment.size) >= retention_bytes,
            None => false,
        };
        if !(expired || oversize) {
            break;
        }
        remaining_bytes -= segment.size;
        count += 1;
    }
    count
}
