//! Durability: the one place in walden that fsyncs or renames.
//!
//! Rules, in the order they are applied:
//! - a file's data is fsynced before the file is renamed into its final name;
//! - the rename is followed by an fsync of the directory holding the new name (and of the old
//!   one when it differs), so the name itself survives a crash;
//! - a newly created directory is made durable by fsyncing its parent;
//! - a whole-file replacement goes through `<name>.tmp` in the same directory, so a reader sees
//!   the old bytes or the new ones, never a mixture. Temporary names are fixed, not random:
//!   only the holder of a cluster's lock writes, and a temporary file left by a crash is simply
//!   overwritten next time (or removed when the cluster is next opened for writing).
//! - a file made by a process that does not hold the lock ([`create_file_atomic`]) uses a
//!   temporary name unique to the call and a hard link, so it never replaces anything.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{Result, StoreError};

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary name used while writing `path`: `<path>.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".tmp");
    PathBuf::from(s)
}

/// Fsyncs a directory, making the names in it durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(|e| StoreError::io("open directory", path, e))?;
    dir.sync_all()
        .map_err(|e| StoreError::io("fsync directory", path, e))
}

/// Fsyncs an open file's data and metadata (`fsync`).
pub fn sync_file(file: &File, path: &Path) -> Result<()> {
    file.sync_all()
        .map_err(|e| StoreError::io("fsync", path, e))
}

/// Fsyncs an open file's data and the metadata needed to read it back (`fdatasync`).
pub fn sync_data(file: &File, path: &Path) -> Result<()> {
    file.sync_data()
        .map_err(|e| StoreError::io("fdatasync", path, e))
}

/// Fsyncs `from`, renames it to `to` (replacing `to` if it exists), then fsyncs the
/// directory of `to` (and of `from` if different).
pub fn durable_rename(from: &Path, to: &Path) -> Result<()> {
    let file = File::open(from).map_err(|e| StoreError::io("open", from, e))?;
    sync_file(&file, from)?;
    drop(file);
    rename_synced(from, to)
}

/// [`durable_rename`] for a file the caller has just fsynced through its own handle: renames,
/// then fsyncs the directory of `to` (and of `from` if different).
pub fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| StoreError::io("rename into place", to, e))?;
    let to_dir = parent_of(to);
    sync_dir(to_dir)?;
    let from_dir = parent_of(from);
    if from_dir != to_dir {
        sync_dir(from_dir)?;
    }
    Ok(())
}

/// Renames `from` to `to` with no fsync at all: atomic (a reader sees the old name or the
/// whole new file) but not durable. Only for copies whose loss in a crash is harmless because
/// they are made again: `wal-fetch`'s delivery into `pg_wal` (see `restore::wal_fetch`).
pub fn rename_unsynced(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| StoreError::io("rename into place", to, e))
}

/// Replaces `path` with `bytes` atomically and durably: writes `<path>.tmp`, fsyncs it and
/// renames it over `path`.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    write_synced(&tmp, bytes)?;
    rename_synced(&tmp, path)
}

/// Creates `path` holding `bytes`, atomically and durably, unless it exists: `Ok(true)` if we
/// created it, `Ok(false)` if it was already there (it is left alone). Safe without the
/// cluster's lock: the bytes go to `<path>.<pid>-<n>.tmp`, and the final name is made with a
/// hard link, which never replaces a file (so the filesystem must support hard links).
pub fn create_file_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    loop {
        let mut name = OsString::from(path.as_os_str());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        name.push(format!(".{}-{n}.tmp", std::process::id()));
        let tmp = PathBuf::from(name);
        write_synced(&tmp, bytes)?;
        let linked = fs::hard_link(&tmp, path);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &tmp, e)),
        }
        match linked {
            Ok(()) => {
                sync_dir(parent_of(path))?;
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            // The lock holder removes `*.tmp` files when it opens the cluster, and may have
            // taken ours between the write and the link: write it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
            Err(e) => return Err(StoreError::io("create", path, e)),
        }
    }
}

/// [`write_file_atomic`] with the file's permission bits set to `mode` (e.g. 0o600).
pub fn write_file_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = temp_path(path);
    write_synced_mode(&tmp, bytes, Some(mode))?;
    rename_synced(&tmp, path)
}

/// Appends `bytes` to `path` (created with permission bits `mode` if missing) and fsyncs it,
/// and its directory when the file was created. Not atomic: a crash may leave part of
/// `bytes` at the end of the file.
pub fn append_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))?;
    file.write_all(bytes)
        .map_err(|e| StoreError::io("append to", path, e))?;
    sync_file(&file, path)?;
    if !existed {
        sync_dir(parent_of(path))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` (created or truncated) and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    write_synced_mode(path, bytes, None)
}

/// [`write_synced`], setting the permission bits to `mode` when given.
fn write_synced_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if let Some(mode) = mode {
        options.mode(mode);
    }
    let mut file = options
        .open(path)
        .map_err(|e| StoreError::io("create", path, e))?;
    if let Some(mode) = mode {
        // A file left by a crash keeps its old bits: set them.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::io("set permissions of", path, e))?;
    }
    file.write_all(bytes)
        .map_err(|e| StoreError::io("write", path, e))?;
    sync_file(&file, path)
}

/// Fsyncs every regular file and directory under `dir`, each directory after its contents,
/// and `dir` last. Symbolic links are not followed.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| StoreError::io("look at", &path, e))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            let file = File::open(&path).map_err(|e| StoreError::io("open", &path, e))?;
            sync_file(&file, &path)?;
        }
    }
    sync_dir(dir)
}

/// Removes a directory and everything in it, then fsyncs its parent.
pub fn remove_dir_all_durable(path: &Path) -> Result<()> {
    fs::remove_dir_all(path).map_err(|e| StoreError::io("remove", path, e))?;
    sync_dir(parent_of(path))
}

/// Removes a file and fsyncs its directory.
pub fn remove_file_durable(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|e| StoreError::io("remove", path, e))?;
    sync_dir(parent_of(path))
}

/// Creates `path` and any missing ancestors, fsyncing the parent of each directory created.
pub fn create_dir_all_durable(path: &Path) -> Result<()> {
    let mut missing = Vec::new();
    for dir in path.ancestors() {
        if dir.as_os_str().is_empty() {
            break;
        }
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(StoreError::io(
                    "create directory",
                    dir,
                    io::Error::new(io::ErrorKind::NotADirectory, "a file is in the way"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(dir),
            Err(e) => return Err(StoreError::io("look at", dir, e)),
        }
    }
    for dir in missing.into_iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => {}
            // Someone else made it in between: it still needs its name made durable.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io("create directory", dir, e)),
        }
        sync_dir(parent_of(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_file_atomic(&p, b"one").unwrap();
        write_file_atomic(&p, b"two!").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two!");
        assert!(!temp_path(&p).exists());
        // A stale temp file from a crash is overwritten, not appended to.
        fs::write(temp_path(&p), b"garbage from a crash, longer than the data").unwrap();
        write_file_atomic(&p, b"3").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"3");
        assert!(!temp_path(&p).exists());
    }

    #[test]
    fn dirs_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).unwrap();
        let f = dir.path().join("a/x");
        fs::write(&f, b"x").unwrap();
        assert!(create_dir_all_durable(&f.join("y")).is_err());
        durable_rename(&f, &deep.join("x")).unwrap();
        assert!(!f.exists());
        assert_eq!(fs::read(deep.join("x")).unwrap(), b"x");
        remove_file_durable(&deep.join("x")).unwrap();
        assert!(!deep.join("x").exists());
        let err = durable_rename(&f, &deep.join("z")).unwrap_err().to_string();
        assert!(err.contains("a/x"), "{err}");
    }

    #[test]
    fn create_never_replaces_and_trees_are_synced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.json");
        assert!(create_file_atomic(&p, b"first").unwrap());
        assert!(!create_file_atomic(&p, b"second").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cluster.json"], "no temporary file is left");

        let tree = dir.path().join("t");
        create_dir_all_durable(&tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        fs::write(tree.join("g"), b"y").unwrap();
        sync_tree(&tree).unwrap();
        assert!(sync_tree(&dir.path().join("missing")).is_err());
        remove_dir_all_durable(&tree).unwrap();
        assert!(!tree.exists());
        assert!(remove_dir_all_durable(&tree).is_err());
    }

    #[test]
    fn disk_full_has_its_own_error() {
        // /dev/full answers every write with ENOSPC: a real errno through the real mapping.
        let mut full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let e = full
            .write_all(b"x")
            .and_then(|()| full.flush())
            .unwrap_err();
        let err = StoreError::io("write", Path::new("/dev/full"), e);
        assert!(matches!(err, StoreError::NoSpace { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("disk full: cannot write /dev/full")
        );
    }
}
