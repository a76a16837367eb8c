//! Sparse offset and time indexes: fixed-width entries in preallocated, memory-mapped files,
//! searched by binary search. Offset entry (8 bytes): relative offset u32, position u32.
//! Time entry (12 bytes): max timestamp so far i64, relative offset u32 where it appeared.
//!
//! Invariants: entries strictly increase in both fields; the segment owns the entry count and
//! bytes past it are ignored; a closed segment's index files are trimmed to their entries.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use parking_lot::Mutex;

use crate::error::{Error, Result};

pub(crate) const OFFSET_ENTRY_SIZE: usize = 8;
pub(crate) const TIME_ENTRY_SIZE: usize = 12;

/// One index file: its mapping and capacity. Entry counts live with the segment.
pub(crate) struct IndexFile {
    path: PathBuf,
    file: File,
    map: Mutex<Option<MmapMut>>,
    entry_size: usize,
    capacity: usize,
}

impl IndexFile {
    /// Opens (creating if needed) an index file. An active segment's index is preallocated to
    /// `max_bytes` so that appends never remap; a closed one is mapped at its length.
    pub fn open(path: &Path, entry_size: usize, max_bytes: usize, active: bool) -> Result<IndexFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::io("open index", path))?;
        let len = file.metadata().map_err(Error::io("stat index", path))?.len() as usize;
        let wanted = if active { max_bytes / entry_size * entry_size } else { len };
        if wanted > len {
            // Allocate the blocks now: a sparse file written through the mapping would turn a
            // full disk into SIGBUS at the first new page instead of an error here.
            // SAFETY: plain syscall on an open descriptor.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, wanted as libc::off_t) };
            if rc != 0 {
                return Err(Error::io("preallocate index", path)(std::io::Error::from_raw_os_error(rc)));
            }
        }
        let size = len.max(wanted);
        let map = if size == 0 {
            None
        } else {
            // SAFETY: the mapping covers exactly the file's current length. Sluice owns the
            // data directory; index files are only shrunk (trimmed) to lengths that still cover
            // every entry below the segment's entry count, which is all anyone reads.
            Some(unsafe { MmapMut::map_mut(&file) }.map_err(Error::io("map index", path))?)
        };
        Ok(IndexFile { path: path.to_path_buf(), file, map: Mutex::new(map), entry_size, capacity: size / entry_size })
    }

    fn write_entry(&self, slot: usize, bytes: &[u8]) {
        assert!(slot < self.capacity, "index slot {slot} past capacity {}", self.capacity);
        let mut map = self.map.lock();
        if let Some(map) = map.as_mut() {
            map[slot * self.entry_size..(slot + 1) * self.entry_size].copy_from_slice(bytes);
        }
    }

    fn read_entry<const N: usize>(&self, map: &MmapMut, slot: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&map[slot * self.entry_size..slot * self.entry_size + N]);
        out
    }

    /// Shrinks the file to `entries` entries (a segment being closed).
    pub fn trim(&self, entries: usize) -> Result<()> {
        self.file.set_len((entries * self.entry_size) as u64).map_err(Error::io("trim index", &self.path))
    }

    pub fn flush(&self) -> Result<()> {
        if let Some(map) = self.map.lock().as_ref() {
            map.flush().map_err(Error::io("flush index", &self.path))?;
        }
        Ok(())
    }

    /// How many of the first `entries` slots have a key <= `target` (< when `strict`), by the
    /// key `key_of` reads from a raw entry. Keys increase, so this is a binary search.
    fn partition_point<const N: usize>(
        &self,
        entries: usize,
        strict: bool,
        key_of: impl Fn([u8; N]) -> i64,
        target: i64,
    ) -> usize {
        let map = self.map.lock();
        let Some(map) = map.as_ref() else { return 0 };
        let (mut lo, mut hi) = (0usize, entries.min(self.capacity));
        // Invariant: slots < lo qualify, slots >= hi do not.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let key = key_of(self.read_entry::<N>(map, mid));
            if key < target || (!strict && key == target) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The last of the first `entries` slots whose key is <= `target` (< when `strict`).
    fn search<const N: usize>(
        &self,
        entries: usize,
        strict: bool,
        key_of: impl Fn([u8; N]) -> i64,
        target: i64,
    ) -> Option<[u8; N]> {
        let slot = self.partition_point(entries, strict, key_of, target).checked_sub(1)?;
        self.entry(slot)
    }

    fn entry<const N: usize>(&self, slot: usize) -> Option<[u8; N]> {
        let map = self.map.lock();
        let map = map.as_ref()?;
        (slot < self.capacity).then(|| self.read_entry::<N>(map, slot))
    }
}

/// Offset index: relative offset -> byte position of a batch in the log file.
pub(crate) struct OffsetIndex {
    file: IndexFile,
    base_offset: i64,
}

fn split_offset_entry(raw: [u8; 8]) -> (u32, u32) {
    (u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]), u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]))
}

impl OffsetIndex {
    pub fn open(path: &Path, base_offset: i64, max_bytes: usize, active: bool) -> Result<OffsetIndex> {
        Ok(OffsetIndex { file: IndexFile::open(path, OFFSET_ENTRY_SIZE, max_bytes, active)?, base_offset })
    }

    pub fn file(&self) -> &IndexFile {
        &self.file
    }

    pub fn capacity(&self) -> usize {
        self.file.capacity
    }

    pub fn append(&self, slot: usize, offset: i64, position: u32) {
        debug_assert!(
            slot.checked_sub(1)
                .and_then(|previous| self.entry(previous))
                .is_none_or(|(o, p)| o < offset && p < position),
            "offset index entries must increase: ({offset}, {position}) after slot {slot}"
        );
        let relative = (offset - self.base_offset) as u32;
        let mut entry = [0u8; OFFSET_ENTRY_SIZE];
        entry[..4].copy_from_slice(&relative.to_be_bytes());
        entry[4..].copy_from_slice(&position.to_be_bytes());
        self.file.write_entry(slot, &entry);
    }

    /// The entry at `slot` as (absolute offset, position).
    pub fn entry(&self, slot: usize) -> Option<(i64, u32)> {
        let (relative, position) = split_offset_entry(self.file.entry::<8>(slot)?);
        Some((self.base_offset + i64::from(relative), position))
    }

    /// The last indexed (offset, position) at or below `offset`; the segment start if none.
    pub fn lookup(&self, entries: usize, offset: i64) -> (i64, u32) {
        let target = offset - self.base_offset;
        self.file
            .search::<8>(entries, false, |raw| i64::from(split_offset_entry(raw).0), target)
            .map(|raw| {
                let (relative, position) = split_offset_entry(raw);
                (self.base_offset + i64::from(relative), position)
            })
            .unwrap_or((self.base_offset, 0))
    }

    /// Number of the first `entries` entries whose offset is below `offset`.
    pub fn count_below(&self, entries: usize, offset: i64) -> usize {
        self.file.partition_point::<8>(
            entries,
            true,
            |raw| i64::from(split_offset_entry(raw).0),
            offset - self.base_offset,
        )
    }
}

/// Time index: max timestamp so far -> relative offset where it first appeared.
pub(crate) struct TimeIndex {
    file: IndexFile,
    base_offset: i64,
}

fn split_time_entry(raw: [u8; 12]) -> (i64, u32) {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&raw[..8]);
    (i64::from_be_bytes(ts), u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]))
}

impl TimeIndex {
    pub fn open(path: &Path, base_offset: i64, max_bytes: usize, active: bool) -> Result<TimeIndex> {
        Ok(TimeIndex { file: IndexFile::open(path, TIME_ENTRY_SIZE, max_bytes, active)?, base_offset })
    }

    pub fn file(&self) -> &IndexFile {
        &self.file
    }

    pub fn capacity(&self) -> usize {
        self.file.capacity
    }

    pub fn append(&self, slot: usize, timestamp_ms: i64, offset: i64) {
        debug_assert!(
            slot.checked_sub(1)
                .and_then(|previous| self.entry(previous))
                .is_none_or(|(ts, o)| ts < timestamp_ms && o <= offset),
            "time index entries must increase: ({timestamp_ms}, {offset}) after slot {slot}"
        );
        let mut entry = [0u8; TIME_ENTRY_SIZE];
        entry[..8].copy_from_slice(&timestamp_ms.to_be_bytes());
        entry[8..].copy_from_slice(&((offset - self.base_offset) as u32).to_be_bytes());
        self.file.write_entry(slot, &entry);
    }

    /// The entry at `slot` as (timestamp, absolute offset).
    pub fn entry(&self, slot: usize) -> Option<(i64, i64)> {
        let (ts, relative) = split_time_entry(self.file.entry::<12>(slot)?);
        Some((ts, self.base_offset + i64::from(relative)))
    }

    /// The offset from which to scan for the first record with timestamp >= `timestamp_ms`:
    /// every record before the returned offset has a smaller timestamp.
    pub fn lookup(&self, entries: usize, timestamp_ms: i64) -> i64 {
        self.file
            .search::<12>(entries, true, |raw| split_time_entry(raw).0, timestamp_ms)
            .map(|raw| self.base_offset + i64::from(split_time_entry(raw).1))
            .unwrap_or(self.base_offset)
    }

    /// Number of the first `entries` entries whose offset is below `offset`.
    pub fn count_below(&self, entries: usize, offset: i64) -> usize {
        self.file.partition_point::<12>(
            entries,
            true,
            |raw| i64::from(split_time_entry(raw).1),
            offset - self.base_offset,
        )
    }
}
