//! Sparse offset and time indexes: fixed-width entries in memory-mapped files, searched by
//! binary search. Offset entry (8 bytes): relative offset u32, position u32. Time entry
//! (12 bytes): max timestamp so far i64, relative offset u32 where it appeared.
//!
//! An active segment's index may hold up to `segment.index.bytes`, but its file starts at one
//! page and doubles as entries arrive (each growth allocated with `posix_fallocate`, so a full
//! disk is an error here and never a SIGBUS through the mapping): an idle partition costs a
//! few KiB of disk, not the 20 MiB two full preallocations would.
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

/// What an active index file is allocated with before its first growth.
const INITIAL_INDEX_BYTES: usize = 4096;

/// The mapping of an index file and how many entries it covers.
struct Mapping {
    map: Option<MmapMut>,
    allocated: usize,
}

/// One index file: its mapping, grown on demand up to `max_entries`. Entry counts live with
/// the segment.
pub(crate) struct IndexFile {
    path: PathBuf,
    file: File,
    mapping: Mutex<Mapping>,
    entry_size: usize,
    max_entries: usize,
}

impl IndexFile {
    /// Opens (creating if needed) an index file. An active segment's index may grow to
    /// `max_bytes` and starts with one page allocated; a closed one is mapped at its length.
    pub fn open(path: &Path, entry_size: usize, max_bytes: usize, active: bool) -> Result<IndexFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::io("open index", path))?;
        let len = file.metadata().map_err(Error::io("stat index", path))?.len() as usize;
        let existing = len / entry_size;
        let max_entries = if active { (max_bytes / entry_size).max(existing) } else { existing };
        let index = IndexFile {
            path: path.to_path_buf(),
            file,
            mapping: Mutex::new(Mapping { map: None, allocated: 0 }),
            entry_size,
            max_entries,
        };
        let initial = if active { (INITIAL_INDEX_BYTES / entry_size).min(max_entries) } else { 0 };
        index.map_entries(&mut index.mapping.lock(), existing.max(initial))?;
        Ok(index)
    }

    /// Allocates the file to `entries` entries (never shrinking it) and maps all of it.
    fn map_entries(&self, mapping: &mut Mapping, entries: usize) -> Result<()> {
        let wanted = entries * self.entry_size;
        let len = self.file.metadata().map_err(Error::io("stat index", &self.path))?.len() as usize;
        if wanted > len {
            // SAFETY: plain syscall on an open descriptor.
            let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, wanted as libc::off_t) };
            if rc != 0 {
                return Err(Error::io("allocate index", &self.path)(std::io::Error::from_raw_os_error(rc)));
            }
        }
        let size = len.max(wanted);
        mapping.map = if size == 0 {
            None
        } else {
            // SAFETY: the mapping covers exactly the file's current length, all of it
            // allocated. Sluice owns the data directory; index files are only shrunk (trimmed)
            // to lengths that still cover every entry below the segment's entry count, which
            // is all anyone reads.
            Some(unsafe { MmapMut::map_mut(&self.file) }.map_err(Error::io("map index", &self.path))?)
        };
        mapping.allocated = size / self.entry_size;
        Ok(())
    }

    /// Writes the entry at `slot`, growing the file first if the slot is past its allocation.
    /// An error (a full disk) leaves the index as it was: indexes are sparse, so a missing
    /// entry only makes lookups scan a little further.
    fn write_entry(&self, slot: usize, bytes: &[u8]) -> Result<()> {
        assert!(slot < self.max_entries, "index slot {slot} past capacity {}", self.max_entries);
        let mut mapping = self.mapping.lock();
        if slot >= mapping.allocated {
            let grown = (mapping.allocated * 2).max(slot + 1).min(self.max_entries);
            self.map_entries(&mut mapping, grown)?;
        }
        if let Some(map) = mapping.map.as_mut() {
            map[slot * self.entry_size..(slot + 1) * self.entry_size].copy_from_slice(bytes);
        }
        Ok(())
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
        if let Some(map) = self.mapping.lock().map.as_ref() {
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
        let mapping = self.mapping.lock();
        let Some(map) = mapping.map.as_ref() else { return 0 };
        let (mut lo, mut hi) = (0usize, entries.min(mapping.allocated));
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
        let mapping = self.mapping.lock();
        let map = mapping.map.as_ref()?;
        (slot < mapping.allocated).then(|| self.read_entry::<N>(map, slot))
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

    /// The most entries this index may hold (`segment.index.bytes` when it was opened active).
    pub fn capacity(&self) -> usize {
        self.file.max_entries
    }

    pub fn append(&self, slot: usize, offset: i64, position: u32) -> Result<()> {
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
        self.file.write_entry(slot, &entry)
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

    /// The most entries this index may hold (`segment.index.bytes` when it was opened active).
    pub fn capacity(&self) -> usize {
        self.file.max_entries
    }

    pub fn append(&self, slot: usize, timestamp_ms: i64, offset: i64) -> Result<()> {
        debug_assert!(
            slot.checked_sub(1)
                .and_then(|previous| self.entry(previous))
                .is_none_or(|(ts, o)| ts < timestamp_ms && o <= offset),
            "time index entries must increase: ({timestamp_ms}, {offset}) after slot {slot}"
        );
        let mut entry = [0u8; TIME_ENTRY_SIZE];
        entry[..8].copy_from_slice(&timestamp_ms.to_be_bytes());
        entry[8..].copy_from_slice(&((offset - self.base_offset) as u32).to_be_bytes());
        self.file.write_entry(slot, &entry)
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
