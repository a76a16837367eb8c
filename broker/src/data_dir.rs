//! The data directory's lock and identity. One process at a time may open its logs, as
//! Kafka's `.lock` file ensures: two brokers (or a broker and `sluice log dump`) writing the
//! same segments would corrupt them; the second one is refused with a clear message instead.
//! `meta.properties` names the node and the cluster the directory belongs to, as in Kafka, so
//! a directory is never opened by another node id or joined to another cluster.

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

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content, never a
/// mix: written to a temporary file, fsynced, renamed over, and the directory fsynced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub const META_PROPERTIES: &str = "meta.properties";

/// What `meta.properties` says: the node id and, once the quorum has named it, the cluster id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaProperties {
    pub node_id: Option<i32>,
    pub cluster_id: Option<String>,
    /// The incarnation of the last process that opened the directory: a new process (which
    /// holds the lock) names it to replace that registration at once, even after a crash.
    pub incarnation: Option<uuid::Uuid>,
}

impl MetaProperties {
    pub fn read(data_dir: &Path) -> Result<MetaProperties> {
        let path = data_dir.join(META_PROPERTIES);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(MetaProperties::default()),
            Err(err) => return Err(err.into()),
        };
        let mut meta = MetaProperties::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key.trim() {
                "node.id" => {
                    meta.node_id = Some(value.trim().parse().map_err(|_| {
                        Error::Config(format!("{} has an unreadable node.id \"{value}\"", path.display()))
                    })?)
                }
                "cluster.id" => meta.cluster_id = Some(value.trim().to_string()),
                "incarnation.id" => meta.incarnation = value.trim().parse().ok(),
                _ => {}
            }
        }
        Ok(meta)
    }

    pub fn write(&self, data_dir: &Path) -> Result<()> {
        let mut text = String::from("version=1\n");
        if let Some(node_id) = self.node_id {
            text.push_str(&format!("node.id={node_id}\n"));
        }
        if let Some(cluster_id) = &self.cluster_id {
            text.push_str(&format!("cluster.id={cluster_id}\n"));
        }
        if let Some(incarnation) = &self.incarnation {
            text.push_str(&format!("incarnation.id={incarnation}\n"));
        }
        Ok(write_durably(&data_dir.join(META_PROPERTIES), text.as_bytes())?)
    }

    /// Checks that the directory is this node's and records the node id and this process's
    /// `incarnation`; returns what it said before.
    pub fn claim(data_dir: &Path, node_id: i32, incarnation: uuid::Uuid) -> Result<MetaProperties> {
        let mut meta = MetaProperties::read(data_dir)?;
        match meta.node_id {
            Some(stored) if stored != node_id => {
                return Err(Error::Config(format!(
                    "node.id is {node_id}, but log.dirs {} belongs to node {stored} (its {META_PROPERTIES} says so); \
                     start it with node.id={stored} or use another directory",
                    data_dir.display()
                )))
            }
            _ => {}
        }
        let previous = meta.clone();
        meta.node_id = Some(node_id);
        meta.incarnation = Some(incarnation);
        meta.write(data_dir)?;
        Ok(previous)
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

    #[test]
    fn a_directory_belongs_to_one_node() {
        let dir = tempfile::tempdir().unwrap();
        let first = uuid::Uuid::new_v4();
        MetaProperties::claim(dir.path(), 2, first).unwrap();
        assert_eq!(MetaProperties::claim(dir.path(), 2, uuid::Uuid::new_v4()).unwrap().incarnation, Some(first));
        let err = MetaProperties::claim(dir.path(), 3, first).unwrap_err().to_string();
        assert!(err.contains("node.id") && err.contains("node 2"), "{err}");
    }
}
