//! One segment of a partition log: `<base offset>.log` holding batches back to back, with its
//! `.index` and `.timeindex`. Only the last segment of a log (the active one) is appended to.
//!
//! Invariants: `size` is the committed length of the log file, and nothing at or past it is
//! ever handed to a reader; a log file is never shrunk while it may be mapped (truncation
//! writes a shortened copy and renames it over), so no reader's mapping can fault.

use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::MmapOptions;

use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::format::{self, BatchInfo, RecordBatch, StoredHeader, HEADER_SIZE};
use crate::handle_cache::{HandleCache, HandleSlot};
use crate::index::{OffsetIndex, TimeIndex};
use crate::segment_files::SegmentPaths;

/// The open files and mappings of a segment, shared by everyone using it at the moment.
pub(crate) struct OpenSegment {
    path: PathBuf,
    log: File,
    /// Shared read-only mapping of the log file; for the active segment it extends past the
    /// file's end so that appends (via pwritev) become readable without remapping.
    map: Bytes,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
}

impl OpenSegment {
    fn open(
        paths: &SegmentPaths,
        base_offset: i64,
        active: bool,
        map_len: usize,
        index_bytes: usize,
    ) -> Result<OpenSegment> {
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.log)
            .map_err(Error::io("open segment", &paths.log))?;
        let map = if map_len == 0 {
            Bytes::new()
        } else {
            // SAFETY: Sluice owns the data directory and never shrinks a log file that may be
            // mapped (see the module invariants), and readers only touch bytes below the
            // committed size, which the file always covers. Mapping past the end of the file
            // is allowed; those pages are not read until appends have written them.
            let mmap =
                unsafe { MmapOptions::new().len(map_len).map(&log) }.map_err(Error::io("map segment", &paths.log))?;
            Bytes::from_owner(mmap)
        };
        Ok(OpenSegment {
            path: paths.log.clone(),
            log,
            map,
            offset_index: OffsetIndex::open(&paths.offset_index, base_offset, index_bytes, active)?,
            time_index: TimeIndex::open(&paths.time_index, base_offset, index_bytes, active)?,
        })
    }

    #[cfg(test)]
    pub fn open_for_test(paths: &SegmentPaths) -> OpenSegment {
        OpenSegment::open(paths, 0, true, 4096, 4096).unwrap()
    }

    /// `len` committed bytes starting at `position`, without copying.
    pub fn slice(&self, position: u64, len: usize) -> Bytes {
        let start = position as usize;
        self.map.slice(start..start + len)
    }

    pub fn mapped_len(&self) -> usize {
        self.map.len()
    }

    fn write_at(&self, bufs: [&[u8]; 2], position: u64) -> Result<()> {
        write_all_vectored_at(&self.log, bufs, position).map_err(Error::io("append to segment", &self.path))
    }

    pub fn sync_data(&self) -> std::io::Result<()> {
        self.log.sync_data()
    }
}

/// `pwritev` of both buffers at `position`, retried until all bytes are written.
fn write_all_vectored_at(file: &File, bufs: [&[u8]; 2], position: u64) -> std::io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut written = 0usize;
    while written < total {
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
        let mut count = 0;
        let mut skip = written;
        for buf in bufs {
            if skip >= buf.len() {
                skip -= buf.len();
                continue;
            }
            let rest = &buf[skip..];
            skip = 0;
            iov[count] = libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() };
            count += 1;
        }
        // SAFETY: each iovec points into a live slice borrowed for the duration of the call,
        // and pwritev only reads from them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                count as libc::c_int,
                (position + written as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n as usize;
    }
    Ok(())
}

/// What is known of a segment without opening it. Mutated only under the log's write lock.
pub(crate) struct Segment {
    pub base_offset: i64,
    /// The offset after the last batch.
    pub next_offset: i64,
    /// Committed bytes in the log file.
    pub size: u64,
    /// Largest batch max timestamp, and the offset of the record that first carried it.
    pub max_timestamp_ms: i64,
    pub offset_of_max_timestamp: i64,
    /// The first batch's timestamp, which `segment.ms` rolling counts from (as Kafka does).
    pub rolling_timestamp_ms: Option<i64>,
    pub offset_index_entries: usize,
    pub time_index_entries: usize,
    bytes_since_index_entry: u64,
    /// Taken off `segment.ms` for this segment (`segment.jitter.ms`), chosen when it is created.
    pub roll_jitter_ms: u64,
    /// The log file was allocated to `segment.bytes` when created (`preallocate`), so it is
    /// cut to its committed size when sealed.
    pub preallocated: bool,
    pub active: bool,
    pub paths: SegmentPaths,
    pub slot: Arc<HandleSlot<OpenSegment>>,
}

/// Timestamp of a segment with no timestamped records, as in Kafka.
pub(crate) const NO_TIMESTAMP: i64 = -1;

impl Segment {
    /// Creates a new, empty active segment on disk.
    pub fn create(dir: &Path, base_offset: i64) -> Result<Segment> {
        let paths = SegmentPaths::new(dir, base_offset);
        File::create(&paths.log).map_err(Error::io("create segment", &paths.log))?;
        for stale in [&paths.offset_index, &paths.time_index] {
            match fs::remove_file(stale) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove stale index", stale)(err))
                }
                _ => {}
            }
        }
        Ok(Segment::empty(paths, base_offset, true))
    }

    /// [`Segment::create`] under `config`: its `segment.ms` jitter chosen, and its log file
    /// allocated to `segment.bytes` if the topic says `preallocate`.
    pub fn create_with(dir: &Path, base_offset: i64, config: &LogConfig) -> Result<Segment> {
        let mut segment = Segment::create(dir, base_offset)?;
        if config.segment_jitter_ms > 0 {
            let bound = config.segment_jitter_ms.min(config.segment_ms.unwrap_or(u64::MAX)).max(1);
            let random = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), base_offset);
            segment.roll_jitter_ms = random % bound;
        }
        if config.preallocate {
            let file = OpenOptions::new()
                .write(true)
                .open(&segment.paths.log)
                .map_err(Error::io("open segment", &segment.paths.log))?;
            // SAFETY: plain syscall on an open descriptor.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, config.segment_bytes as libc::off_t) };
            if rc != 0 {
                // Nothing half made is left behind.
                fs::remove_file(&segment.paths.log).ok();
                return Err(Error::io("preallocate segment", &segment.paths.log)(std::io::Error::from_raw_os_error(
                    rc,
                )));
            }
            segment.preallocated = true;
        }
        Ok(segment)
    }

    pub fn empty(paths: SegmentPaths, base_offset: i64, active: bool) -> Segment {
        Segment {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_timestamp_ms: NO_TIMESTAMP,
            offset_of_max_timestamp: base_offset,
            rolling_timestamp_ms: None,
            offset_index_entries: 0,
            time_index_entries: 0,
            bytes_since_index_entry: 0,
            roll_jitter_ms: 0,
            preallocated: false,
            active,
            paths,
            slot: Arc::default(),
        }
    }

    /// The open handle, opening the files if they were closed. An active segment is mapped
    /// to at least `segment.bytes` so appends rarely remap.
    pub fn handle(&self, cache: &HandleCache, config: &LogConfig) -> Result<Arc<OpenSegment>> {
        cache.get_or_open(&self.slot, self.active, || self.open_handle(config, 0))
    }

    /// The open handle, remapped if its mapping does not reach `len` bytes. Only a batch
    /// bigger than `segment.bytes` (written into an empty segment), or a segment written under
    /// a larger `segment.bytes`, needs the remap.
    pub fn handle_covering(&self, cache: &HandleCache, config: &LogConfig, len: usize) -> Result<Arc<OpenSegment>> {
        let handle = self.handle(cache, config)?;
        if len <= handle.mapped_len() {
            return Ok(handle);
        }
        let handle = Arc::new(self.open_handle(config, len)?);
        cache.replace(&self.slot, handle.clone());
        Ok(handle)
    }

    pub fn set_bytes_since_index_entry(&mut self, bytes: u64) {
        self.bytes_since_index_entry = bytes;
    }

    fn open_handle(&self, config: &LogConfig, min_map_len: usize) -> Result<OpenSegment> {
        let map_len = if self.active {
            (config.segment_bytes as usize).max(self.size as usize).max(min_map_len)
        } else {
            self.size as usize
        };
        OpenSegment::open(&self.paths, self.base_offset, self.active, map_len, config.segment_index_bytes as usize)
    }

    /// Whether appending a batch of `info` at `base_offset` needs a new segment first.
    /// `handle` is this segment's: index capacity is what its files were sized with, which a
    /// later change of `segment.index.bytes` does not alter.
    pub fn should_roll(
        &self,
        handle: &OpenSegment,
        info: &BatchInfo,
        base_offset: i64,
        config: &LogConfig,
        now_ms: i64,
    ) -> bool {
        if self.size == 0 {
            return false;
        }
        let too_big = self.size + info.size as u64 > u64::from(config.segment_bytes);
        // As Kafka: the batch's own timestamp against the segment's first, so that records
        // with old timestamps (a backfill) do not roll a segment per batch; under
        // LogAppendTime, or without timestamps, the clock's.
        let batch_timestamp_ms = match config.message_timestamp_type {
            crate::format::TimestampType::CreateTime if info.max_timestamp_ms >= 0 => info.max_timestamp_ms,
            _ => now_ms,
        };
        let too_old = match (config.segment_ms, self.rolling_timestamp_ms) {
            (Some(segment_ms), Some(first)) => {
                batch_timestamp_ms.saturating_sub(first) >= segment_ms.saturating_sub(self.roll_jitter_ms) as i64
            }
            _ => false,
        };
        let index_full = self.offset_index_entries >= handle.offset_index.capacity()
            || self.time_index_entries >= handle.time_index.capacity();
        // Relative offsets in the indexes are 32-bit.
        let offsets_overflow = base_offset + i64::from(info.last_offset_delta) - self.base_offset > i64::from(u32::MAX);
        too_big || too_old || index_full || offsets_overflow
    }

    /// Writes a validated batch (its stamped header plus the producer's record bytes) at the
    /// end of this active segment and indexes it.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        cache: &HandleCache,
        config: &LogConfig,
        header: &[u8; HEADER_SIZE],
        records: &[u8],
        info: &BatchInfo,
        base_offset: i64,
        stored_max_timestamp_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        debug_assert!(self.active, "append to a closed segment");
        debug_assert_eq!(base_offset, self.next_offset, "offsets must stay dense");
        let end = self.size as usize + info.size;
        let handle = self.handle_covering(cache, config, end)?;
        if let Err(err) = handle.write_at([header, records], self.size) {
            // A partial write (a full disk) leaves bytes past the committed size; cut them, or
            // a later clean shutdown would keep a torn batch in a trusted segment.
            if let Err(trim) = handle.log.set_len(self.size) {
                return Err(Error::LogFailed {
                    path: self.paths.log.clone(),
                    reason: format!("append failed ({err}) and its partial write could not be cut ({trim})"),
                });
            }
            return Err(err);
        }

        let offset_of_max = if stored_max_timestamp_ms == info.max_timestamp_ms {
            base_offset + i64::from(info.offset_delta_of_max_timestamp)
        } else {
            // Log append time: every record carries the batch's timestamp.
            base_offset
        };
        self.index_batch(&handle, config, self.size, base_offset, info.size, stored_max_timestamp_ms, offset_of_max);
        if self.rolling_timestamp_ms.is_none() {
            self.rolling_timestamp_ms =
                Some(if stored_max_timestamp_ms >= 0 { stored_max_timestamp_ms } else { now_ms });
        }
        self.next_offset = base_offset + i64::from(info.last_offset_delta) + 1;
        self.size = end as u64;
        Ok(())
    }

    /// Records a batch written at `position` in the segment's metadata and indexes: an offset
    /// index entry every `index.interval.bytes`, with a time index entry when the max
    /// timestamp has grown since the last one. Used by appends and by recovery alike.
    #[allow(clippy::too_many_arguments)]
    pub fn index_batch(
        &mut self,
        handle: &OpenSegment,
        config: &LogConfig,
        position: u64,
        base_offset: i64,
        size: usize,
        max_timestamp_ms: i64,
        offset_of_max_timestamp: i64,
    ) {
        if max_timestamp_ms > self.max_timestamp_ms {
            self.max_timestamp_ms = max_timestamp_ms;
            self.offset_of_max_timestamp = offset_of_max_timestamp;
        }
        let first = self.offset_index_entries == 0 && position == 0;
        if (first || self.bytes_since_index_entry >= u64::from(config.index_interval_bytes))
            && self.offset_index_entries < handle.offset_index.capacity()
        {
            // A failed growth (a full disk) skips the entry: the index stays sparse and right.
            if handle.offset_index.append(self.offset_index_entries, base_offset, position as u32).is_ok() {
                self.offset_index_entries += 1;
                self.maybe_append_time_entry(handle);
                self.bytes_since_index_entry = 0;
            }
        }
        self.bytes_since_index_entry += size as u64;
    }

    fn maybe_append_time_entry(&mut self, handle: &OpenSegment) {
        if self.max_timestamp_ms == NO_TIMESTAMP || self.time_index_entries >= handle.time_index.capacity() {
            return;
        }
        let last = self.time_index_entries.checked_sub(1).and_then(|slot| handle.time_index.entry(slot));
        match last {
            Some((ts, offset)) if ts == self.max_timestamp_ms && offset != self.offset_of_max_timestamp => {
                // Recovery indexes at batch granularity; keep the exact record offset found
                // since, so the last entry (which later opens read the maximum from) is exact.
                // Rewriting an allocated slot cannot fail.
                let _ = handle.time_index.append(self.time_index_entries - 1, ts, self.offset_of_max_timestamp);
            }
            Some((ts, _)) if ts >= self.max_timestamp_ms => {}
            _ => {
                let slot = self.time_index_entries;
                if handle.time_index.append(slot, self.max_timestamp_ms, self.offset_of_max_timestamp).is_ok() {
                    self.time_index_entries += 1;
                }
            }
        }
    }

    /// Makes this segment read-only: a final time index entry for its max timestamp, index
    /// files trimmed to their entries and flushed. Its handle is reopened in closed mode.
    pub fn close(&mut self, cache: &HandleCache, config: &LogConfig) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.seal(cache, config)?.make_durable()
    }

    /// Makes this segment read-only in memory, without I/O: a roll does this on the append
    /// path, and leaves the fsyncs, index msyncs and trims to the flusher's next round
    /// ([`RolledSegment::make_durable`]). Until then the segment stays above the recovery
    /// point, so a crash rebuilds it instead of trusting its files.
    pub fn seal(&mut self, cache: &HandleCache, config: &LogConfig) -> Result<RolledSegment> {
        let handle = self.handle(cache, config)?;
        self.maybe_append_time_entry(&handle);
        if self.preallocated {
            // Now, not at the flusher's next round: a crash before then would otherwise leave
            // a sealed segment with a tail of zeros, which recovery takes for a torn write.
            handle.log.set_len(self.size).map_err(Error::io("trim preallocated segment", &self.paths.log))?;
            self.preallocated = false;
        }
        self.active = false;
        cache.close(&self.slot);
        Ok(RolledSegment {
            handle,
            size: self.size,
            offset_index_entries: self.offset_index_entries,
            time_index_entries: self.time_index_entries,
        })
    }

    /// Walks the stored batch headers from `position` to the committed end, framing-checked.
    pub fn headers_from<'a>(&self, handle: &'a OpenSegment, position: u64) -> HeaderScan<'a> {
        HeaderScan { handle, position, end: self.size }
    }

    /// Position of the batch containing `offset` (or the first after it), and that batch.
    pub fn locate(&self, handle: &OpenSegment, offset: i64) -> Result<Option<(u64, StoredHeader)>> {
        let (_, start) = handle.offset_index.lookup(self.offset_index_entries, offset);
        for item in self.headers_from(handle, u64::from(start)) {
            let (position, header) = item?;
            if header.last_offset() >= offset {
                return Ok(Some((position, header)));
            }
        }
        Ok(None)
    }

    /// Whole batches from the one containing `offset`: at least one (even past `max_bytes`,
    /// as Kafka does, so a consumer can always make progress), then more while they fit in
    /// `max_bytes` and start below `max_offset`.
    pub fn read(&self, handle: &OpenSegment, offset: i64, max_bytes: usize, max_offset: i64) -> Result<Bytes> {
        let Some((start, first)) = self.locate(handle, offset)? else {
            return Ok(Bytes::new());
        };
        if first.base_offset >= max_offset {
            return Ok(Bytes::new());
        }
        let mut end = start + first.size as u64;
        for item in self.headers_from(handle, end) {
            let (position, header) = item?;
            if header.base_offset >= max_offset || (end - start) as usize + header.size > max_bytes {
                break;
            }
            end = position + header.size as u64;
        }
        Ok(handle.slice(start, (end - start) as usize))
    }

    /// The first record at or after `min_offset` and below `max_offset` whose timestamp is at
    /// least `timestamp_ms`, as (offset, timestamp).
    pub fn find_timestamp(
        &self,
        handle: &OpenSegment,
        timestamp_ms: i64,
        min_offset: i64,
        max_offset: i64,
    ) -> Result<Option<(i64, i64)>> {
        let from = handle.time_index.lookup(self.time_index_entries, timestamp_ms).max(min_offset);
        let Some((start, _)) = self.locate(handle, from)? else { return Ok(None) };
        for item in self.headers_from(handle, start) {
            let (position, header) = item?;
            if header.base_offset >= max_offset {
                break;
            }
            if header.max_timestamp_ms < timestamp_ms || header.last_offset() < min_offset {
                continue;
            }
            let batch = RecordBatch::new(handle.slice(position, header.size))?;
            for record in batch.records()? {
                let record = record?;
                if record.offset >= min_offset && record.offset < max_offset && record.timestamp_ms >= timestamp_ms {
                    return Ok(Some((record.offset, record.timestamp_ms)));
                }
            }
        }
        Ok(None)
    }

    /// Headers give max timestamps per batch; after deriving the segment's maximum from them,
    /// this finds the exact record that first carried it (what ListOffsets MAX_TIMESTAMP
    /// returns), decoding only that one batch.
    pub fn refine_offset_of_max_timestamp(&mut self, handle: &OpenSegment) {
        if self.max_timestamp_ms == NO_TIMESTAMP {
            return;
        }
        let exact = (|| -> Result<Option<i64>> {
            let Some((position, header)) = self.locate(handle, self.offset_of_max_timestamp)? else { return Ok(None) };
            let batch = RecordBatch::new(handle.slice(position, header.size))?;
            for record in batch.records()? {
                let record = record?;
                if record.timestamp_ms == self.max_timestamp_ms {
                    return Ok(Some(record.offset));
                }
            }
            Ok(None)
        })();
        match exact {
            Ok(Some(offset)) => self.offset_of_max_timestamp = offset,
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(segment = %self.paths.log.display(), %err, "cannot decode the batch holding the max timestamp")
            }
        }
    }

    pub fn corrupt(&self, position: u64, reason: impl Into<String>) -> Error {
        Error::CorruptSegment { path: self.paths.log.clone(), position, reason: reason.into() }
    }

    /// Renames the segment's files to `*.deleted` for removal later (`file.delete.delay.ms`);
    /// returns the new names. Open mappings stay valid for readers that hold them.
    pub fn delete_later(&self, cache: &HandleCache) -> Result<Vec<PathBuf>> {
        cache.close(&self.slot);
        let mut renamed = Vec::new();
        for path in [&self.paths.log, &self.paths.offset_index, &self.paths.time_index, &self.paths.txn_index] {
            let target = crate::segment_files::deleted(path);
            match fs::rename(path, &target) {
                Ok(()) => renamed.push(target),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("rename deleted segment file", path)(err)),
            }
        }
        Ok(renamed)
    }

    /// Deletes the segment's files. Open mappings stay valid for readers that hold them.
    pub fn delete(&self, cache: &HandleCache) -> Result<()> {
        cache.close(&self.slot);
        for path in [&self.paths.log, &self.paths.offset_index, &self.paths.time_index, &self.paths.txn_index] {
            match fs::remove_file(path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("delete segment file", path)(err))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Cuts the segment back so that it ends before the batch containing `offset`, making it
    /// the active segment again. The log file is replaced by a shortened copy rather than
    /// truncated in place, so that mappings readers hold never lose their pages.
    pub fn truncate_to(&mut self, cache: &HandleCache, config: &LogConfig, offset: i64) -> Result<()> {
        let handle = self.handle(cache, config)?;
        let (cut, kept_next) = match self.locate(&handle, offset)? {
            Some((position, header)) => (position, header.base_offset),
            None => return Ok(()),
        };
        let tmp = self.paths.truncating_log();
        fs::write(&tmp, handle.slice(0, cut as usize)).map_err(Error::io("write truncated segment", &tmp))?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(Error::io("fsync truncated segment", &tmp))?;
        fs::rename(&tmp, &self.paths.log).map_err(Error::io("replace truncated segment", &self.paths.log))?;

        let offset_entries = handle.offset_index.count_below(self.offset_index_entries, kept_next);
        let time_entries = handle.time_index.count_below(self.time_index_entries, kept_next);
        drop(handle);
        cache.close(&self.slot);

        // Recompute what the removed batches may have contributed, from the kept headers.
        let was_active = self.active;
        let mut rebuilt = Segment::empty(self.paths.clone(), self.base_offset, true);
        rebuilt.slot = self.slot.clone();
        rebuilt.size = cut;
        rebuilt.offset_index_entries = offset_entries;
        rebuilt.time_index_entries = time_entries;
        rebuilt.rolling_timestamp_ms = self.rolling_timestamp_ms.filter(|_| cut > 0);
        let handle = rebuilt.handle(cache, config)?;
        let mut last_position = 0;
        for item in rebuilt.headers_from(&handle, 0) {
            let (position, header) = item?;
            if header.max_timestamp_ms > rebuilt.max_timestamp_ms {
                rebuilt.max_timestamp_ms = header.max_timestamp_ms;
                rebuilt.offset_of_max_timestamp = header.base_offset;
            }
            rebuilt.next_offset = header.next_offset();
            last_position = position;
        }
        rebuilt.refine_offset_of_max_timestamp(&handle);
        // Index entries after the last kept one resume from the next append.
        rebuilt.bytes_since_index_entry = cut.saturating_sub(last_position);
        debug_assert!(!was_active || rebuilt.next_offset <= self.next_offset);
        *self = rebuilt;
        Ok(())
    }
}

/// A sealed segment whose files still need to reach their final, durable form.
pub(crate) struct RolledSegment {
    handle: Arc<OpenSegment>,
    size: u64,
    offset_index_entries: usize,
    time_index_entries: usize,
}

impl RolledSegment {
    /// The log file cut to its committed size and fsynced, the indexes msynced and trimmed to
    /// their entries: the form a later open trusts. Cutting and trimming are safe with
    /// mappings alive, as no reader was ever handed a byte past them.
    pub fn make_durable(&self) -> Result<()> {
        let handle = &self.handle;
        handle.log.set_len(self.size).map_err(Error::io("trim segment", &handle.path))?;
        handle.sync_data().map_err(Error::io("fsync segment", &handle.path))?;
        handle.offset_index.file().flush()?;
        handle.time_index.file().flush()?;
        handle.offset_index.file().trim(self.offset_index_entries)?;
        handle.time_index.file().trim(self.time_index_entries)
    }
}

/// Iterator over (position, header) of the stored batches from a position to the committed
/// end. A header that fails its framing check is an error naming the file and position.
pub(crate) struct HeaderScan<'a> {
    handle: &'a OpenSegment,
    position: u64,
    end: u64,
}

impl Iterator for HeaderScan<'_> {
    type Item = Result<(u64, StoredHeader)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.position >= self.end {
            return None;
        }
        let position = self.position;
        let rest = self.handle.slice(position, (self.end - position) as usize);
        match format::read_stored_header(&rest) {
            Ok(header) => {
                self.position += header.size as u64;
                Some(Ok((position, header)))
            }
            Err(err) => {
                self.position = self.end;
                Some(Err(Error::CorruptSegment { path: self.handle.path.clone(), position, reason: err.to_string() }))
            }
        }
    }
}
