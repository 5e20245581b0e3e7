//! Sparkplug B births kept on disk, one file per edge node, so that after a restart the agent
//! reads a node's data by the aliases its births named, the data the local broker kept for
//! the agent meanwhile included.
//!
//! A file holds [`KeptBirths`]: the node's last `NBIRTH` and the `DBIRTH` of each device born
//! since. It is replaced whole (written beside, flushed, renamed, the directory flushed) at
//! every birth and at every death that takes effect, before the message is acknowledged; a
//! node's death removes it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use model::sparkplug::KeptBirths;

/// The birth files of one source, in a directory sources may share.
#[derive(Debug, Clone)]
pub struct BirthFiles {
    dir: PathBuf,
    /// The source's name, hex-encoded.
    source: String,
}

impl BirthFiles {
    pub fn new(dir: impl Into<PathBuf>, source: &str) -> Self {
        Self {
            dir: dir.into(),
            source: hex(source),
        }
    }

    /// `<source>.<group id>.<edge node id>.births`, each hex-encoded: any name or id becomes
    /// a file name, and none can step out of the directory.
    fn path(&self, group: &str, node: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.{}.{}.births",
            self.source,
            hex(group),
            hex(node)
        ))
    }

    /// The births kept for the node, `None` when there are none.
    pub fn load(&self, group: &str, node: &str) -> io::Result<Option<KeptBirths>> {
        let path = self.path(group, node);
        match fs::read(&path) {
            Ok(bytes) => KeptBirths::decode(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a births file: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the node's file with `kept`, or removes it when `None`. Durable on return.
    pub fn save(&self, group: &str, node: &str, kept: Option<&KeptBirths>) -> io::Result<()> {
        let path = self.path(group, node);
        match kept {
            None => match fs::remove_file(&path) {
                Ok(()) => sync_dir(&self.dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
            Some(kept) => {
                fs::create_dir_all(&self.dir)?;
                let beside = path.with_extension("births.new");
                let mut file = File::create(&beside)?;
                file.write_all(&kept.encode())?;
                file.sync_all()?;
                fs::rename(&beside, &path)?;
                sync_dir(&self.dir)
            }
        }
    }
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn births_are_kept_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let files = BirthFiles::new(dir.path().join("sparkplug"), "../floor");
        assert_eq!(files.load("plant/1", "node a").unwrap(), None);
        let mut kept = KeptBirths {
            node: b"node birth".to_vec(),
            ..KeptBirths::default()
        };
        files.save("plant/1", "node a", Some(&kept)).unwrap();
        kept.devices.insert("pump".into(), b"pump birth".to_vec());
        files.save("plant/1", "node a", Some(&kept)).unwrap();
        assert_eq!(files.load("plant/1", "node a").unwrap(), Some(kept));
        assert_eq!(files.load("plant/1", "node b").unwrap(), None);
        let other = BirthFiles::new(dir.path().join("sparkplug"), "roof");
        assert_eq!(
            other.load("plant/1", "node a").unwrap(),
            None,
            "another source's"
        );
        let names: Vec<_> = fs::read_dir(dir.path().join("sparkplug"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "written beside, then renamed: {names:?}");
        files.save("plant/1", "node a", None).unwrap();
        files.save("plant/1", "node a", None).unwrap();
        assert_eq!(files.load("plant/1", "node a").unwrap(), None);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = BirthFiles::new(dir.path(), "floor");
        fs::write(files.path("g", "n"), b"\xff\xff\xff").unwrap();
        let e = files.load("g", "n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(".births"), "{e}");
    }
}
