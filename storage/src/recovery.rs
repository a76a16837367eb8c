//! Loading a log directory at open, and recovery after an unclean stop. After a clean shutdown
//! segments are trusted (indexes are sanity-checked). Otherwise every segment from the one
//! holding the recovery point on is scanned: framing, CRC-32C and dense offsets are checked;
//! the first bad batch past the recovery point ends the log (the torn tail is cut and later
//! segments deleted); a bad batch below it was acknowledged durable, so it is an error.

use std::fs;
use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::format::{self, StoredHeader};
use crate::handle_cache::HandleCache;
use crate::segment::{OpenSegment, Segment, NO_TIMESTAMP};
use crate::segment_files::{self, SegmentPaths};

pub(crate) struct Loaded {
    pub segments: Vec<Segment>,
    /// Whether any segment had to be scanned (the shutdown was unclean).
    pub recovered: bool,
}

/// Base offsets of the segments in `dir`, sorted, after removing leftovers of interrupted
/// operations (temporary files, indexes without a log).
fn list_segments(dir: &Path) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    let mut index_files = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("list log directory", dir))? {
        let entry = entry.map_err(Error::io("list log directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if segment_files::is_leftover(name) {
            fs::remove_file(entry.path()).map_err(Error::io("remove leftover file", entry.path()))?;
            continue;
        }
        let Some((base, suffix)) = segment_files::parse_file_name(name) else { continue };
        match suffix {
            segment_files::LOG_SUFFIX => bases.push(base),
            segment_files::OFFSET_INDEX_SUFFIX | segment_files::TIME_INDEX_SUFFIX => {
                index_files.push((base, entry.path()))
            }
            _ => {}
        }
    }
    bases.sort_unstable();
    for (base, path) in index_files {
        if bases.binary_search(&base).is_err() {
            fs::remove_file(&path).map_err(Error::io("remove orphan index", &path))?;
        }
    }
    Ok(bases)
}

pub(crate) fn load(
    dir: &Path,
    config: &LogConfig,
    cache: &HandleCache,
    checkpoint: Option<Checkpoint>,
) -> Result<Loaded> {
    let bases = list_segments(dir)?;
    let clean = checkpoint.is_some_and(|c| c.clean_shutdown);
    let recovery_point = checkpoint.map_or(0, |c| c.recovery_point);
    if bases.is_empty() {
        let start = checkpoint.map_or(0, |c| c.log_start_offset.max(0));
        return Ok(Loaded { segments: vec![Segment::create_with(dir, start, config)?], recovered: false });
    }

    let mut segments = Vec::with_capacity(bases.len());
    let mut recovered = false;
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let last = next_base.is_none();
        let paths = SegmentPaths::new(dir, base);
        // Segments entirely below the recovery point were durable before the crash.
        let trusted = clean || next_base.is_some_and(|next| next <= recovery_point);
        if trusted {
            segments.push(load_trusted(paths, base, next_base, config, cache)?);
            continue;
        }
        recovered = true;
        let expected_start = segments.last().map_or(base, |s: &Segment| s.next_offset);
        let (segment, complete) = recover_segment(paths, base, expected_start, recovery_point, config, cache)?;
        let keep = segment.size > 0 || segments.is_empty() || last;
        if keep {
            segments.push(segment);
        } else {
            segment.delete(cache)?;
        }
        if !complete {
            // Everything after a torn or corrupt batch is gone, including later segments.
            for &later in &bases[i + 1..] {
                tracing::warn!(dir = %dir.display(), base_offset = later, "deleting segment after a truncated tail");
                Segment::empty(SegmentPaths::new(dir, later), later, false).delete(cache)?;
            }
            break;
        }
    }
    // The last segment is the active one.
    let count = segments.len();
    for (i, segment) in segments.iter_mut().enumerate() {
        if i + 1 == count && !segment.active {
            segment.active = true;
            cache.close(&segment.slot);
        } else if i + 1 < count && segment.active {
            segment.close(cache, config)?;
        }
    }
    Ok(Loaded { segments, recovered })
}

/// A segment from a clean shutdown (or wholly below the recovery point): sizes from the
/// files, maximum timestamp from the time index's last entry, and, for the last segment,
/// its end found by scanning from its last offset index entry.
fn load_trusted(
    paths: SegmentPaths,
    base: i64,
    next_base: Option<i64>,
    config: &LogConfig,
    cache: &HandleCache,
) -> Result<Segment> {
    let size = fs::metadata(&paths.log).map_err(Error::io("stat segment", &paths.log))?.len();
    let index_entries = |path: &Path, entry_size: usize| -> usize {
        fs::metadata(path).map(|m| m.len() as usize / entry_size).unwrap_or(0)
    };
    let mut segment = Segment::empty(paths.clone(), base, next_base.is_none());
    segment.size = size;
    segment.offset_index_entries = index_entries(&paths.offset_index, crate::index::OFFSET_ENTRY_SIZE);
    segment.time_index_entries = index_entries(&paths.time_index, crate::index::TIME_ENTRY_SIZE);
    let handle = segment.handle(cache, config)?;
    if !index_sane(&segment, &handle, next_base) {
        tracing::warn!(segment = %paths.log.display(), "index failed its sanity check; rebuilding it");
        drop(handle);
        return rebuild_from_scan(segment, base, config, cache, None).map(|(segment, _)| segment);
    }
    if let Some((ts, offset)) = segment.time_index_entries.checked_sub(1).and_then(|slot| handle.time_index.entry(slot))
    {
        segment.max_timestamp_ms = ts;
        segment.offset_of_max_timestamp = offset;
    }
    let (_, last_indexed_position) = segment
        .offset_index_entries
        .checked_sub(1)
        .and_then(|slot| handle.offset_index.entry(slot))
        .unwrap_or((base, 0));
    segment.next_offset = next_base.unwrap_or(base);
    let mut last_position = u64::from(last_indexed_position);
    let indexed_max = segment.max_timestamp_ms;
    if next_base.is_none() {
        for item in segment.headers_from(&handle, u64::from(last_indexed_position)) {
            let (position, header) = item?;
            segment.next_offset = header.next_offset();
            if header.max_timestamp_ms > segment.max_timestamp_ms {
                segment.max_timestamp_ms = header.max_timestamp_ms;
                segment.offset_of_max_timestamp = header.base_offset;
            }
            last_position = position;
        }
        if segment.max_timestamp_ms > indexed_max {
            segment.refine_offset_of_max_timestamp(&handle);
        }
    }
    segment.set_bytes_since_index_entry(size.saturating_sub(last_position));
    if size > 0 {
        segment.rolling_timestamp_ms = Some(first_timestamp(&segment, &handle)?);
    }
    Ok(segment)
}

fn first_timestamp(segment: &Segment, handle: &OpenSegment) -> Result<i64> {
    match segment.headers_from(handle, 0).next() {
        Some(item) => item.map(|(_, header)| header.max_timestamp_ms),
        None => Ok(NO_TIMESTAMP),
    }
}

/// Index entries must increase, stay inside the segment, and (for closed segments) stay below
/// the next segment's base offset.
fn index_sane(segment: &Segment, handle: &OpenSegment, next_base: Option<i64>) -> bool {
    let limit = next_base.unwrap_or(i64::MAX);
    let mut previous: Option<(i64, u32)> = None;
    for slot in 0..segment.offset_index_entries {
        let Some((offset, position)) = handle.offset_index.entry(slot) else { return false };
        if offset < segment.base_offset || offset >= limit || u64::from(position) >= segment.size.max(1) {
            return false;
        }
        if previous.is_some_and(|(o, p)| o >= offset || p >= position) {
            return false;
        }
        previous = Some((offset, position));
    }
    let mut previous_ts: Option<(i64, i64)> = None;
    for slot in 0..segment.time_index_entries {
        let Some((ts, offset)) = handle.time_index.entry(slot) else { return false };
        if offset < segment.base_offset || offset >= limit || previous_ts.is_some_and(|(t, o)| t >= ts || o > offset) {
            return false;
        }
        previous_ts = Some((ts, offset));
    }
    true
}

/// Scans a segment from its start, checking every batch, rebuilding its indexes, and
/// truncating it at the first bad batch. Returns the segment and whether it was intact.
fn recover_segment(
    paths: SegmentPaths,
    base: i64,
    expected_start: i64,
    recovery_point: i64,
    config: &LogConfig,
    cache: &HandleCache,
) -> Result<(Segment, bool)> {
    let size = fs::metadata(&paths.log).map_err(Error::io("stat segment", &paths.log))?.len();
    for index in [&paths.offset_index, &paths.time_index] {
        match fs::remove_file(index) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove index for rebuild", index)(err))
            }
            _ => {}
        }
    }
    let mut segment = Segment::empty(paths, base, true);
    segment.size = size;
    segment.next_offset = expected_start.max(base);
    let (segment, bad) = rebuild_from_scan(segment, base, config, cache, Some(recovery_point))?;
    let Some((position, reason)) = bad else { return Ok((segment, true)) };
    tracing::warn!(
        segment = %segment.paths.log.display(),
        position,
        next_offset = segment.next_offset,
        reason,
        "truncating the log's torn or corrupt tail"
    );
    cache.close(&segment.slot);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&segment.paths.log)
        .map_err(Error::io("open segment", &segment.paths.log))?;
    file.set_len(position).map_err(Error::io("truncate segment", &segment.paths.log))?;
    file.sync_all().map_err(Error::io("fsync segment", &segment.paths.log))?;
    Ok((segment, false))
}

/// Re-derives a segment's metadata and indexes from its batches. With a recovery point, every
/// batch's CRC is checked and the first bad one is returned as (position, reason) with the
/// segment cut just before it; a bad batch below the recovery point is an error. Without one
/// (an index rebuild of a trusted segment) only framing is checked and a bad batch is an error.
fn rebuild_from_scan(
    mut segment: Segment,
    base: i64,
    config: &LogConfig,
    cache: &HandleCache,
    recovery_point: Option<i64>,
) -> Result<(Segment, Option<(u64, String)>)> {
    let scanned_size = segment.size;
    let was_active = segment.active;
    segment.active = true; // indexes are written fresh, preallocated
    cache.close(&segment.slot);
    segment.offset_index_entries = 0;
    segment.time_index_entries = 0;
    segment.max_timestamp_ms = NO_TIMESTAMP;
    segment.offset_of_max_timestamp = base;
    segment.next_offset = segment.next_offset.max(base);
    segment.size = 0;
    let handle = segment.handle_covering(cache, config, scanned_size as usize)?;
    let bad = index_batches(&mut segment, &handle, config, scanned_size, recovery_point)?;
    segment.refine_offset_of_max_timestamp(&handle);
    drop(handle);
    if recovery_point.is_some() && bad.is_none() {
        // What recovery read back may still be only in the page cache; make it durable so the
        // recovery point can move past it.
        fs::File::open(&segment.paths.log)
            .and_then(|f| f.sync_data())
            .map_err(Error::io("fsync recovered segment", &segment.paths.log))?;
    }
    if !was_active {
        segment.close(cache, config)?;
    }
    Ok((segment, bad))
}

/// Indexes the batches of a segment being rebuilt, from its start up to `scanned_size`, each
/// checked first (its CRC too, with a recovery point). The first bad batch past the recovery
/// point is returned as (position, reason), with everything before it indexed.
fn index_batches(
    segment: &mut Segment,
    handle: &OpenSegment,
    config: &LogConfig,
    scanned_size: u64,
    recovery_point: Option<i64>,
) -> Result<Option<(u64, String)>> {
    let mut position = 0u64;
    while position < scanned_size {
        let rest = handle.slice(position, (scanned_size - position) as usize);
        let gaps = crate::checkpoint::was_compacted(segment.paths.log.parent().unwrap_or(Path::new(".")));
        let reason = match check_batch(&rest, segment.next_offset, recovery_point.is_some(), gaps) {
            Ok(header) => {
                segment.index_batch(
                    handle,
                    config,
                    position,
                    header.base_offset,
                    header.size,
                    header.max_timestamp_ms,
                    header.base_offset,
                );
                if segment.rolling_timestamp_ms.is_none() {
                    segment.rolling_timestamp_ms = Some(header.max_timestamp_ms);
                }
                segment.next_offset = header.next_offset();
                position += header.size as u64;
                segment.size = position;
                continue;
            }
            Err(reason) => reason,
        };
        return match recovery_point {
            Some(point) if segment.next_offset < point => Err(segment.corrupt(
                position,
                format!("{reason} (below the recovery point {point}, so this data was acknowledged as durable)"),
            )),
            Some(_) => Ok(Some((position, reason))),
            None => Err(segment.corrupt(position, reason)),
        };
    }
    Ok(None)
}

/// The header of the batch at the start of `rest` if the batch is sound (its framing, and
/// its CRC when `check_crc`) and starts at `expected_offset`; otherwise why it is not.
/// A compacted log (`gaps`) may skip offsets between batches, but never go back.
fn check_batch(
    rest: &[u8],
    expected_offset: i64,
    check_crc: bool,
    gaps: bool,
) -> std::result::Result<StoredHeader, String> {
    let checked = if check_crc { format::check_crc(rest) } else { format::check_framing(rest) };
    match checked.and_then(|_| format::read_stored_header(rest)) {
        // Offsets are dense unless the log was compacted: each batch starts where the last
        // ended.
        Ok(header) if header.base_offset != expected_offset && !(gaps && header.base_offset > expected_offset) => {
            Err(format!("batch base offset {} where offset {expected_offset} was expected", header.base_offset))
        }
        Ok(header) => Ok(header),
        Err(err) => Err(err.to_string()),
    }
}
