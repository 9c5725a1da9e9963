//! In-memory tar archives on the `tar` crate: regular files and directories only, owned by
//! 0:0, one mtime for every entry, parent directories added automatically (0755). Used for the
//! Docker engine's archive API (workspace config files), image build contexts and plugin
//! downloads. Paths too long for a ustar header go out as GNU long names, which the engine
//! (Go's `archive/tar`) and GNU tar read.

use std::collections::BTreeSet;

/// Why an entry could not be added.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0} is both a file and a directory")]
    FileAndDirectory(String),
    #[error("cannot add {path} to the archive: {source}")]
    Entry {
        path: String,
        source: std::io::Error,
    },
}

/// Builds a tar archive in memory ([`TarBuilder::finish`] returns its bytes).
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
    mtime: u64,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl TarBuilder {
    /// An empty archive whose entries all carry `mtime` (seconds since the epoch).
    pub fn new(mtime: u64) -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
            mtime,
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    /// Adds a directory entry (and its parents); `path` is relative, without trailing "/".
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), ArchiveError> {
        if self.dirs.contains(path) {
            return Ok(());
        }
        if self.files.contains(path) {
            return Err(ArchiveError::FileAndDirectory(path.to_string()));
        }
        self.parents_of(path)?;
        self.entry(&format!("{path}/"), tar::EntryType::Directory, mode, &[])?;
        self.dirs.insert(path.to_string());
        Ok(())
    }

    /// Adds a regular file (and its parent directories).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), ArchiveError> {
        if self.dirs.contains(path) {
            return Err(ArchiveError::FileAndDirectory(path.to_string()));
        }
        self.parents_of(path)?;
        self.entry(path, tar::EntryType::Regular, mode, data)?;
        self.files.insert(path.to_string());
        Ok(())
    }

    /// The archive's bytes, with the two zero blocks that end it.
    pub fn finish(self) -> Vec<u8> {
        // Writing into a Vec cannot fail.
        self.builder.into_inner().unwrap_or_default()
    }

    fn parents_of(&mut self, path: &str) -> Result<(), ArchiveError> {
        match path.rsplit_once('/') {
            Some((parent, _)) => self.dir(parent, 0o755),
            None => Ok(()),
        }
    }

    fn entry(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        data: &[u8],
    ) -> Result<(), ArchiveError> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode & 0o7777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header.set_size(data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .map_err(|source| ArchiveError::Entry {
                path: path.to_string(),
                source,
            })
    }
}

/// One entry as read back: (path as stored, typeflag, mode, content).
#[cfg(test)]
pub(crate) type Entry = (String, u8, u32, Vec<u8>);

/// Every entry of `bytes`, in order (for tests).
#[cfg(test)]
pub(crate) fn read_entries(bytes: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).expect("content");
        let header = entry.header();
        out.push((
            String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            header.entry_type().as_byte(),
            header.mode().expect("mode"),
            content,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_long_paths_survive() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let longer = vec!["x".repeat(200); 5].join("/");
        let mut tar = TarBuilder::new(1_700_000_000);
        tar.file("a/b/c.txt", 0o640, b"hello").expect("file");
        tar.file("a/d", 0o100_755, b"").expect("file");
        tar.file(&long, 0o644, b"split").expect("long");
        tar.file(&longer, 0o644, b"gnu").expect("longer");
        let bytes = tar.finish();
        assert_eq!(bytes.len() % 512, 0);
        let got = read_entries(&bytes);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).take(4).collect();
        assert_eq!(names, ["a/", "a/b/", "a/b/c.txt", "a/d"]);
        assert_eq!(got[0].1, b'5');
        assert_eq!((got[2].1, got[2].2), (b'0', 0o640));
        assert_eq!(got[3].2, 0o755, "only permission bits are kept");
        let find = |p: &str| got.iter().find(|e| e.0 == p).map(|e| e.3.clone());
        assert_eq!(find(&long), Some(b"split".to_vec()));
        assert_eq!(find(&longer), Some(b"gnu".to_vec()));
        let mut archive = tar::Archive::new(&bytes[..]);
        let first = archive.entries().expect("entries").next().expect("one");
        let header = first.expect("entry").header().clone();
        assert_eq!(header.mtime().expect("mtime"), 1_700_000_000);
        assert_eq!(
            (header.uid().expect("uid"), header.gid().expect("gid")),
            (0, 0)
        );
    }

    #[test]
    fn a_path_is_a_file_or_a_directory_never_both() {
        let mut tar = TarBuilder::new(0);
        tar.file("a", 0o644, b"").expect("file");
        assert!(matches!(
            tar.file("a/b", 0o644, b""),
            Err(ArchiveError::FileAndDirectory(p)) if p == "a"
        ));
        let mut tar = TarBuilder::new(0);
        tar.file("a/b", 0o644, b"").expect("file");
        assert!(tar.file("a", 0o644, b"").is_err());
        assert!(TarBuilder::new(0).file("../x", 0o644, b"").is_err());
    }
}
