//! Atomic writes: a file or directory is written under a temporary name, flushed to disk, then
//! renamed into place, so a reader (or a crash) sees either the old version or the new one.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A sibling path of `path` with a suffix that no other writer uses.
fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Flushes a directory entry (so a rename inside it survives a crash).
fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Creates (or truncates) `path`, lets `write` fill it through a buffer, and fsyncs it.
pub fn write_synced(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    write(&mut out)
        .and_then(|_| out.flush())
        .map_err(|e| Error::io(path, e))?;
    let file = out.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Writes the file `path` atomically.
pub fn write_file(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let result = write_synced(&tmp, write).and_then(|_| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes the directory `dir` atomically: `fill` writes its files into a fresh temporary
/// directory (with [`write_synced`]), which then replaces `dir`. An existing `dir` stays intact
/// until the new one is complete, and at every instant `dir` is the old directory or the new
/// one: on Linux the two are exchanged in one rename. Elsewhere (or on a file system without
/// that rename) the old one is moved aside first, and a crash between the two renames leaves
/// it as `.NAME.old-PID`, which [`recover_dir`] puts back.
pub fn write_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = fill(&tmp)
        .and_then(|_| sync_dir(&tmp))
        .and_then(|_| replace_dir(dir, &tmp))
        .and_then(|_| sync_dir(parent));
    // Now the old directory, or the incomplete new one.
    let _ = fs::remove_dir_all(&tmp);
    written
}

/// Puts the directory `tmp` at `dir`; the old `dir`, if any, ends up at `tmp` (to be removed).
fn replace_dir(dir: &Path, tmp: &Path) -> Result<()> {
    if !dir.exists() {
        return fs::rename(tmp, dir).map_err(|e| Error::io(dir, e));
    }
    exchange(tmp, dir).or_else(|_| swap_through_aside(dir, tmp))
}

/// [`replace_dir`] in two renames: `dir` to `.NAME.old-PID`, then `tmp` to `dir`.
fn swap_through_aside(dir: &Path, tmp: &Path) -> Result<()> {
    let old = sibling(dir, "old");
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    if let Err(e) = fs::rename(tmp, dir) {
        let _ = fs::rename(&old, dir);
        return Err(Error::io(dir, e));
    }
    if fs::rename(&old, tmp).is_err() {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Swaps the directories `a` and `b` in one step (Linux's `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let path = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (path(a)?, path(b)?);
    // SAFETY: both paths are NUL-terminated strings that live across the call.
    let status = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    match status {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// After a crash inside [`write_dir`]'s fallback swap, `dir` may be missing while its old
/// version waits as `.NAME.old-PID`: this moves that back to `dir`. Does nothing when `dir`
/// exists.
pub fn recover_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.old-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) && entry.path().is_dir() {
            fs::rename(entry.path(), dir).map_err(|e| Error::io(dir, e))?;
            return sync_dir(parent);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_directory_write_keeps_the_old_directory() {
        let root = std::env::temp_dir().join(format!("gpt2-atomic-{}", std::process::id()));
        let dir = root.join("ckpt");
        write_dir(&dir, |tmp| write_synced(&tmp.join("a.txt"), |w| w.write_all(b"first"))).unwrap();
        let failed = write_dir(&dir, |tmp| {
            write_synced(&tmp.join("a.txt"), |w| w.write_all(b"second"))?;
            Err(Error::Input("simulated crash".into()))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"first");
        write_dir(&dir, |tmp| write_synced(&tmp.join("a.txt"), |w| w.write_all(b"third"))).unwrap();
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"third");
        assert_eq!(
            fs::read_dir(&root).unwrap().count(),
            1,
            "no temporary directories left behind"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn both_ways_of_replacing_a_directory_leave_the_old_one_at_the_temporary_name() {
        let root = std::env::temp_dir().join(format!("gpt2-atomic-swap-{}", std::process::id()));
        let (dir, tmp) = (root.join("ckpt"), root.join("new"));
        let put = |path: &Path, text: &[u8]| {
            fs::create_dir_all(path).unwrap();
            fs::write(path.join("a.txt"), text).unwrap();
        };
        for swap in [replace_dir, swap_through_aside] {
            put(&dir, b"old");
            put(&tmp, b"new");
            swap(&dir, &tmp).unwrap();
            assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"new");
            assert_eq!(fs::read(tmp.join("a.txt")).unwrap(), b"old");
            fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn a_directory_left_aside_by_a_crash_is_put_back() {
        let root = std::env::temp_dir().join(format!("gpt2-atomic-recover-{}", std::process::id()));
        let dir = root.join("latest");
        let aside = root.join(".latest.old-4242"); // as a process killed mid-swap leaves it
        fs::create_dir_all(&aside).unwrap();
        fs::write(aside.join("a.txt"), b"good").unwrap();
        recover_dir(&dir).unwrap();
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"good");
        assert!(!aside.exists());
        recover_dir(&dir).unwrap(); // dir exists: nothing to do
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"good");
        fs::remove_dir_all(&root).unwrap();
    }
}
