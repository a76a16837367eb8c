//! Aborted transactions, as Kafka's `.txnindex` keeps them: one file per segment, holding an
//! entry for each abort marker in that segment (producer id, the transaction's first
//! offset, the marker's offset, and the last stable offset then), 34 bytes each. Fetches
//! for `read_committed` consumers list the aborted transactions their range overlaps, so the
//! client can drop those records.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::segment_files::{TMP_SUFFIX, TXN_INDEX_SUFFIX};

const ENTRY_SIZE: usize = 34;
const ENTRY_VERSION: i16 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The abort marker's offset.
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

fn encode(entry: &AbortedTxn) -> [u8; ENTRY_SIZE] {
    let mut out = [0u8; ENTRY_SIZE];
    out[0..2].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
    out[2..10].copy_from_slice(&entry.producer_id.to_be_bytes());
    out[10..18].copy_from_slice(&entry.first_offset.to_be_bytes());
    out[18..26].copy_from_slice(&entry.last_offset.to_be_bytes());
    out[26..34].copy_from_slice(&entry.last_stable_offset.to_be_bytes());
    out
}

fn i64_at(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// Appends one entry (not fsynced: the owner syncs before it relies on it).
pub(crate) fn append(path: &Path, entry: &AbortedTxn) -> Result<()> {
    let mut file =
        OpenOptions::new().create(true).append(true).open(path).map_err(Error::io("open txn index", path))?;
    file.write_all(&encode(entry)).map_err(Error::io("append to txn index", path))
}

/// The entries in a file, and whether it held whole entries only (false after a torn write:
/// the owner rewrites it, or later appends would be misaligned). A torn last entry (a crash
/// mid-write) is ignored, and so is an entry of an unknown version. A missing file has none.
pub(crate) fn read_checked(path: &Path) -> Result<(Vec<AbortedTxn>, bool)> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), true)),
        Err(err) => return Err(Error::io("read txn index", path)(err)),
    };
    let whole = bytes.len() % ENTRY_SIZE == 0;
    let entries = bytes
        .chunks_exact(ENTRY_SIZE)
        .filter(|chunk| i16::from_be_bytes([chunk[0], chunk[1]]) == ENTRY_VERSION)
        // A transaction's marker always follows its first record: an entry that says
        // otherwise is a zero-filled tail left by a crash, not an abort.
        .filter(|chunk| i64_at(chunk, 18) > i64_at(chunk, 10))
        .map(|chunk| AbortedTxn {
            producer_id: i64_at(chunk, 2),
            first_offset: i64_at(chunk, 10),
            last_offset: i64_at(chunk, 18),
            last_stable_offset: i64_at(chunk, 26),
        })
        .collect();
    Ok((entries, whole))
}

/// Replaces a file's entries (after a truncation); an empty list removes the file.
pub(crate) fn rewrite(path: &Path, entries: &[AbortedTxn]) -> Result<()> {
    if entries.is_empty() {
        return match fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove txn index", path)(err)),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension(format!("{TXN_INDEX_SUFFIX}.{TMP_SUFFIX}"));
    let mut bytes = Vec::with_capacity(entries.len() * ENTRY_SIZE);
    for entry in entries {
        bytes.extend_from_slice(&encode(entry));
    }
    let mut file = fs::File::create(&tmp).map_err(Error::io("create txn index", &tmp))?;
    file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(Error::io("write txn index", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("rename txn index", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment_files::SegmentPaths;
    use std::path::PathBuf;

    fn path(dir: &Path, base_offset: i64) -> PathBuf {
        SegmentPaths::new(dir, base_offset).txn_index
    }

    fn read(path: &Path) -> Result<Vec<AbortedTxn>> {
        read_checked(path).map(|(entries, _)| entries)
    }

    #[test]
    fn entries_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), 100);
        assert_eq!(read(&file).unwrap(), vec![]);
        let a = AbortedTxn { producer_id: 1, first_offset: 100, last_offset: 110, last_stable_offset: 100 };
        let b = AbortedTxn { producer_id: 2, first_offset: 105, last_offset: 120, last_stable_offset: 105 };
        append(&file, &a).unwrap();
        append(&file, &b).unwrap();
        assert_eq!(read(&file).unwrap(), vec![a, b]);
        let mut bytes = fs::read(&file).unwrap();
        bytes.truncate(bytes.len() - 5);
        fs::write(&file, &bytes).unwrap();
        assert_eq!(read(&file).unwrap(), vec![a]);
        rewrite(&file, &[b]).unwrap();
        assert_eq!(read(&file).unwrap(), vec![b]);
        rewrite(&file, &[]).unwrap();
        assert!(!file.exists());
    }
}
