//! The data directory's lock: one process at a time may open its logs, as Kafka's `.lock`
//! file ensures. Two brokers (or a broker and `sluice log dump`) writing the same segments
//! would corrupt them; the second one is refused with a clear message instead.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

pub const LOCK_FILE: &str = ".lock";

/// Held for as long as the process uses the directory; the lock goes with the descriptor.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Locks `data_dir` (creating it if needed) or explains who holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        // SAFETY: plain syscall on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(Error::DataDirInUse(format!(
                    "data directory {} is in use by another sluice process (a running broker?); stop it or choose another --data-dir",
                    data_dir.display()
                )));
            }
            return Err(err.into());
        }
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
