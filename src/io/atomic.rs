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
/// until the new one is complete.
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
    if let Err(e) = fill(&tmp).and_then(|_| sync_dir(&tmp)) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Swap: move the old directory aside, move the new one in, then delete the old one.
    let old = sibling(dir, "old");
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = fs::rename(&tmp, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        return Err(Error::io(dir, e));
    }
    sync_dir(parent)?;
    if had_old {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
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
}
