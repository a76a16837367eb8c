//! The names of a segment's files, as Kafka spells them: `<base offset>.log`, `.index`,
//! `.timeindex` and `.txnindex`, the base offset written in 20 digits so that names sort as
//! offsets do. Every path to a segment file is built here, and recovery reads base offsets
//! back from file names here; nothing else spells a suffix.

use std::path::{Path, PathBuf};

pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const OFFSET_INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";
pub(crate) const TXN_INDEX_SUFFIX: &str = "txnindex";
/// A truncation writes the kept prefix of a log file under this extra suffix, then renames
/// it over the original.
const TRUNCATING_SUFFIX: &str = "truncating";
/// A segment retention deleted under `file.delete.delay.ms` waits under this extra suffix.
const DELETED_SUFFIX: &str = "deleted";
/// Files written whole and renamed into place (txn indexes, the checkpoint, the producer
/// snapshot) are written under this extra suffix first.
pub(crate) const TMP_SUFFIX: &str = "tmp";

pub(crate) fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

/// The base offset and suffix a segment file's name holds: twenty digits, a dot, a suffix.
pub(crate) fn parse_file_name(name: &str) -> Option<(i64, &str)> {
    let (stem, suffix) = name.split_once('.')?;
    let base_offset = stem.parse::<i64>().ok()?;
    (stem.len() == 20 && base_offset >= 0).then_some((base_offset, suffix))
}

/// Whether `name` is a file an interrupted operation left behind: a truncated copy of a log
/// file not yet renamed over it, a file written whole not yet renamed into place, or a
/// deleted segment's file whose delay had not run out.
pub(crate) fn is_leftover(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, suffix)| suffix == TRUNCATING_SUFFIX || suffix == TMP_SUFFIX || suffix == DELETED_SUFFIX)
}

/// Where a segment file waits out `file.delete.delay.ms` once retention deleted it.
pub(crate) fn deleted(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(DELETED_SUFFIX);
    PathBuf::from(name)
}

#[derive(Clone, Debug)]
pub(crate) struct SegmentPaths {
    pub log: PathBuf,
    pub offset_index: PathBuf,
    pub time_index: PathBuf,
    /// Aborted transactions whose abort marker is in this segment (only if there are any).
    pub txn_index: PathBuf,
}

impl SegmentPaths {
    pub fn new(dir: &Path, base_offset: i64) -> SegmentPaths {
        SegmentPaths {
            log: dir.join(file_name(base_offset, LOG_SUFFIX)),
            offset_index: dir.join(file_name(base_offset, OFFSET_INDEX_SUFFIX)),
            time_index: dir.join(file_name(base_offset, TIME_INDEX_SUFFIX)),
            txn_index: dir.join(file_name(base_offset, TXN_INDEX_SUFFIX)),
        }
    }

    /// Where a truncation writes the kept prefix of the log file before renaming it over.
    pub fn truncating_log(&self) -> PathBuf {
        self.log.with_extension(format!("{LOG_SUFFIX}.{TRUNCATING_SUFFIX}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_into_base_offset_and_suffix() {
        let paths = SegmentPaths::new(Path::new("/data/clicks-0"), 42);
        assert_eq!(paths.log, Path::new("/data/clicks-0/00000000000000000042.log"));
        assert_eq!(paths.txn_index, Path::new("/data/clicks-0/00000000000000000042.txnindex"));
        assert_eq!(parse_file_name("00000000000000000042.timeindex"), Some((42, TIME_INDEX_SUFFIX)));
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("checkpoint"), None);
        let truncating = paths.truncating_log();
        assert_eq!(truncating, Path::new("/data/clicks-0/00000000000000000042.log.truncating"));
        assert!(is_leftover(truncating.file_name().unwrap().to_str().unwrap()));
        assert!(is_leftover("00000000000000000042.txnindex.tmp") && is_leftover("checkpoint.tmp"));
        assert!(!is_leftover("00000000000000000042.log"));
        let deleted = deleted(&paths.log);
        assert_eq!(deleted, Path::new("/data/clicks-0/00000000000000000042.log.deleted"));
        assert!(is_leftover(deleted.file_name().unwrap().to_str().unwrap()));
    }
}
