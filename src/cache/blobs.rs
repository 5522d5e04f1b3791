//! Content-addressed files: a file under `blobs/` exists only if its bytes
//! hash to its name, because the only way in is temp file → verify → rename.

use super::usage::{CacheUsage, Reservation};
use super::CacheError;
use crate::metrics::Metrics;
use crate::oci::Digest;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
    usage: Arc<CacheUsage>,
    /// The cache's byte budget: a blob larger than this is never stored.
    max_size: Option<u64>,
}

/// A download in progress: a uniquely named file under `tmp/`, shared by
/// the writer and by readers tailing it (readers use positioned reads, so
/// they never disturb the writer's offset). Dropping it without
/// [`BlobStore::commit`] deletes the file.
pub struct TempBlob {
    path: PathBuf,
    file: Arc<File>,
    committed: bool,
    /// The disk promised to this download, released when it ends.
    reservation: Option<Reservation>,
}

impl TempBlob {
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The most a blob whose length was never announced may grow to, budget or
/// not (the largest image layers seen are a few GiB): an endless body must
/// end before the disk does.
const MAX_UNANNOUNCED: u64 = 32 << 30;

impl BlobStore {
    /// Creates the directories. `tmp/` is left alone: only the process
    /// that owns the cache may empty it ([`BlobStore::clear_temp`]), and
    /// read-only commands must not.
    pub fn open(
        root: &Path,
        max_size: Option<u64>,
        metrics: Arc<Metrics>,
    ) -> io::Result<BlobStore> {
        let store = BlobStore {
            blobs: root.join("blobs").join("sha256"),
            tmp: root.join("tmp"),
            usage: Arc::new(CacheUsage::new(metrics)),
            max_size,
        };
        fs::create_dir_all(&store.blobs)?;
        fs::create_dir_all(&store.tmp)?;
        Ok(store)
    }

    /// Deletes everything under `tmp/` (downloads a previous process did
    /// not finish); returns how many entries there were. Call it only
    /// before any download of this process starts.
    pub fn clear_temp(&self, dry_run: bool) -> io::Result<u64> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.tmp)? {
            let entry = entry?;
            removed += 1;
            if dry_run {
                continue;
            }
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(removed)
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.path_of_hex(digest.hex())
    }

    fn path_of_hex(&self, hex: &str) -> PathBuf {
        self.blobs.join(hex.get(..2).unwrap_or("__")).join(hex)
    }

    pub fn usage(&self) -> &Arc<CacheUsage> {
        &self.usage
    }

    /// Deletes a complete blob; returns the bytes freed (0 if absent).
    /// Readers that have it open keep reading the same inode.
    pub fn remove(&self, hex: &str) -> io::Result<u64> {
        let path = self.path_of_hex(hex);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        fs::remove_file(&path)?;
        self.usage.removed(len);
        Ok(len)
    }

    /// Every file under `blobs/` as (shard dir name, file name, path,
    /// length). A file lying beside the shard directories comes with an
    /// empty shard name, so it can never pass for content.
    pub fn walk(&self) -> impl Iterator<Item = (String, String, PathBuf, u64)> {
        let entries: Vec<_> = fs::read_dir(&self.blobs)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        let (shards, loose): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        let loose = loose.into_iter().filter_map(|f| {
            let meta = f.metadata().ok()?;
            Some((
                String::new(),
                f.file_name().to_string_lossy().into_owned(),
                f.path(),
                meta.len(),
            ))
        });
        loose.chain(shards.into_iter().flat_map(|shard| {
            let shard_name = shard.file_name().to_string_lossy().into_owned();
            fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(move |f| {
                    let meta = f.metadata().ok()?;
                    meta.is_file().then(|| {
                        (
                            shard_name.clone(),
                            f.file_name().to_string_lossy().into_owned(),
                            f.path(),
                            meta.len(),
                        )
                    })
                })
        }))
    }

    /// Opens a complete blob with its length, or `None` if not cached.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.path(digest)) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Some((file, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// A temp file with `len` bytes of disk reserved up front, so a full
    /// disk shows before the first byte is promised to anyone rather than
    /// in the middle of a download.
    pub fn create_temp_reserved(&self, len: Option<u64>) -> Result<TempBlob, CacheError> {
        if let (Some(len), Some(max)) = (len, self.max_size) {
            if len > max {
                return Err(CacheError::LargerThanBudget);
            }
        }
        let reservation = match len {
            Some(len) => Some(
                self.usage
                    .reserve_within(len, self.max_size)
                    .ok_or(CacheError::OverBudget)?,
            ),
            None => None,
        };
        let mut temp = self.create_temp()?;
        temp.reservation = reservation;
        if let Some(len) = len.filter(|&l| l > 0) {
            match rustix::fs::fallocate(&*temp.file, rustix::fs::FallocateFlags::empty(), 0, len) {
                Ok(()) => {}
                // Some filesystems (NFS, some FUSE) cannot preallocate: go
                // on without; a full disk then shows during the download.
                Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Ok(temp)
    }

    pub fn create_temp(&self) -> io::Result<TempBlob> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = self
            .tmp
            .join(format!("{}-{nanos:09}-{n}.partial", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempBlob {
            path,
            file: Arc::new(file),
            committed: false,
            reservation: None,
        })
    }

    /// Reserves `by` more bytes for a download whose length was not
    /// announced, as its bytes arrive.
    pub fn grow_reservation(&self, temp: &mut TempBlob, by: u64) -> Result<(), CacheError> {
        let cap = self
            .max_size
            .unwrap_or(MAX_UNANNOUNCED)
            .min(MAX_UNANNOUNCED);
        let reserved = temp.reservation.as_ref().map_or(0, Reservation::bytes);
        if reserved + by > cap {
            return Err(CacheError::LargerThanBudget);
        }
        let more = self
            .usage
            .reserve_within(by, self.max_size)
            .ok_or(CacheError::OverBudget)?;
        match &mut temp.reservation {
            Some(held) => held.absorb(more),
            None => temp.reservation = Some(more),
        }
        Ok(())
    }

    /// Makes a verified temp file durable and visible under its digest.
    /// The caller has checked the digest; this only moves bytes into place.
    pub fn commit(&self, mut temp: TempBlob, digest: &Digest) -> io::Result<()> {
        temp.file.sync_all()?;
        let dest = self.path(digest);
        let parent = dest.parent().unwrap_or(&self.blobs);
        fs::create_dir_all(parent)?;
        let len = temp.file.metadata()?.len();
        let replaced = dest.exists();
        fs::rename(&temp.path, &dest)?;
        temp.committed = true;
        if !replaced {
            self.usage.added(digest.hex(), len);
        }
        // Persist the rename itself, so a crash cannot lose a blob the
        // index already names.
        File::open(parent)?.sync_all()
    }

    /// Stores small content (manifests) already held in memory.
    pub fn write_verified(&self, bytes: &[u8], digest: &Digest) -> io::Result<()> {
        if Digest::of(bytes) != *digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "digest mismatch",
            ));
        }
        let temp = self.create_temp()?;
        (&*temp.file).write_all(bytes)?;
        self.commit(temp, digest)
    }

    pub fn read(&self, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(digest)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_vanish_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), None, Arc::default()).unwrap();
        let temp = store.create_temp().unwrap();
        (&**temp.file()).write_all(b"abc").unwrap();
        drop(temp);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        let digest = Digest::of(b"abc");
        let temp = store.create_temp().unwrap();
        (&**temp.file()).write_all(b"abc").unwrap();
        store.commit(temp, &digest).unwrap();
        assert_eq!(store.read(&digest).unwrap().unwrap(), b"abc");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn write_verified_refuses_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), None, Arc::default()).unwrap();
        let digest = Digest::of(b"right");
        assert!(store.write_verified(b"wrong", &digest).is_err());
        assert!(!store.contains(&digest));
        store.write_verified(b"right", &digest).unwrap();
        assert!(store.contains(&digest));
    }

    #[test]
    fn clear_temp_empties_leftovers_unless_dry() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp/sub")).unwrap();
        fs::write(dir.path().join("tmp/old.partial"), b"half").unwrap();
        let store = BlobStore::open(dir.path(), None, Arc::default()).unwrap();
        assert_eq!(store.clear_temp(true).unwrap(), 2);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 2);
        assert_eq!(store.clear_temp(false).unwrap(), 2);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
