//! The per-partition checkpoint file: recovery point, log start offset, high watermark and the
//! clean-shutdown marker, in one small file replaced atomically (write, fsync, rename, fsync
//! the directory) and guarded by a CRC-32 so a torn or foreign file is never trusted.
//!
//! Format (big-endian): magic "SLCK", version u8 = 1, clean u8, recovery point i64,
//! log start offset i64, high watermark i64, CRC-32 (zlib) u32 of everything before it.
//! Also the compaction clean point, in its own small file (`cleaner-checkpoint`).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const FILE_NAME: &str = "checkpoint";
const MAGIC: &[u8; 4] = b"SLCK";
const VERSION: u8 = 1;
const SIZE: usize = 4 + 1 + 1 + 8 * 3 + 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log was closed cleanly: every segment and index on disk is complete.
    pub clean_shutdown: bool,
    /// Everything below this offset is known to be on stable storage.
    pub recovery_point: i64,
    pub log_start_offset: i64,
    pub high_watermark: i64,
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> [u8; SIZE] {
        let mut out = [0u8; SIZE];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = u8::from(self.clean_shutdown);
        out[6..14].copy_from_slice(&self.recovery_point.to_be_bytes());
        out[14..22].copy_from_slice(&self.log_start_offset.to_be_bytes());
        out[22..30].copy_from_slice(&self.high_watermark.to_be_bytes());
        let crc = crc32fast::hash(&out[..30]);
        out[30..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() != SIZE || &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return None;
        }
        let crc = u32::from_be_bytes([bytes[30], bytes[31], bytes[32], bytes[33]]);
        if crc32fast::hash(&bytes[..30]) != crc {
            return None;
        }
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(b)
        };
        Some(Checkpoint {
            clean_shutdown: bytes[5] == 1,
            recovery_point: i64_at(6),
            log_start_offset: i64_at(14),
            high_watermark: i64_at(22),
        })
    }
}

/// Reads the checkpoint in `dir`. A missing file is `Ok(None)`; an unreadable or corrupt one is
/// also `None` (logged), which makes the log recover fully: safe, only slower.
pub fn read(dir: &Path) -> Result<Option<Checkpoint>> {
    let path = dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => {
            let checkpoint = Checkpoint::decode(&bytes);
            if checkpoint.is_none() {
                tracing::warn!(path = %path.display(), "ignoring unreadable checkpoint; the log will be fully recovered");
            }
            Ok(checkpoint)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::Io { action: "read checkpoint", path, source: err }),
    }
}

/// Atomically replaces the checkpoint in `dir`.
pub(crate) fn write(dir: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut file = File::create(&tmp).map_err(Error::io("create checkpoint", &tmp))?;
    file.write_all(&checkpoint.encode()).map_err(Error::io("write checkpoint", &tmp))?;
    file.sync_all().map_err(Error::io("fsync checkpoint", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("rename checkpoint", &path))?;
    sync_dir(dir)
}

/// fsyncs a directory so that created, renamed or deleted entries in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("fsync directory", PathBuf::from(dir)))
}

/// The offset below which compaction has cleaned a log, kept across restarts; its presence
/// also says the log has been compacted (so its offsets may have gaps).
const CLEANER_CHECKPOINT: &str = "cleaner-checkpoint";

/// Persists a log's clean point: written whole and renamed into place.
pub(crate) fn write_clean_point(dir: &Path, offset: i64) -> Result<()> {
    let path = dir.join(CLEANER_CHECKPOINT);
    let tmp = dir.join(format!("{CLEANER_CHECKPOINT}.{}", crate::segment_files::TMP_SUFFIX));
    fs::write(&tmp, format!("{offset}\n")).map_err(Error::io("write cleaner checkpoint", &tmp))?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(Error::io("fsync cleaner checkpoint", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("rename cleaner checkpoint", &path))?;
    sync_dir(dir)
}

/// The persisted clean point of the log in `dir` (0 if it was never cleaned).
pub(crate) fn read_clean_point(dir: &Path) -> i64 {
    fs::read_to_string(dir.join(CLEANER_CHECKPOINT)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Whether the log in `dir` has been compacted (its offsets may have gaps).
pub(crate) fn was_compacted(dir: &Path) -> bool {
    dir.join(CLEANER_CHECKPOINT).exists()
}
