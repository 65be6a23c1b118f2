//! Atomic writes: a file or directory is written under a temporary name, flushed to disk, then
//! renamed into place, so a reader (or a crash) sees either the old version or the new one.
//! Also what guards a destination before it is replaced ([`check_replaceable`]), and the removal
//! of the temporary entries that killed writers leave behind ([`remove_stale_temps`]).

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The tag of the temporary name a file or directory is written under: `.NAME.tmp-PID`.
const TMP: &str = "tmp";

/// A sibling path of `path` with a suffix that no other writer uses: `.NAME.TAG-PID`.
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
    let tmp = sibling(path, TMP);
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
    let tmp = sibling(dir, TMP);
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
    let Some(old) = aside(dir) else {
        return Ok(());
    };
    fs::rename(&old, dir).map_err(|e| Error::io(dir, e))?;
    sync_dir(old.parent().unwrap_or(Path::new(".")))
}

/// Whether `dir` exists, or [`recover_dir`] would put it back.
pub fn exists_or_recoverable(dir: &Path) -> bool {
    dir.exists() || aside(dir).is_some()
}

/// The old version of `dir` that [`write_dir`]'s fallback swap moved aside, if one is there.
fn aside(dir: &Path) -> Option<PathBuf> {
    let (parent, name) = (dir.parent()?, dir.file_name()?);
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.old-", name.to_string_lossy());
    fs::read_dir(parent)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix) && e.path().is_dir())
        .map(|e| e.path())
}

/// What the directory entry `meta` describes (from [`fs::symlink_metadata`]), for messages.
pub fn entry_kind(meta: &fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        match () {
            _ if kind.is_fifo() => return "a FIFO (named pipe)",
            _ if kind.is_char_device() => return "a character device",
            _ if kind.is_block_device() => return "a block device",
            _ if kind.is_socket() => return "a socket",
            _ => {}
        }
    }
    match () {
        _ if kind.is_symlink() => "a symbolic link",
        _ if kind.is_dir() => "a directory",
        _ if kind.is_file() => "a regular file",
        _ => "a special file",
    }
}

/// Checks that `path` may be replaced by a new file or directory of `kind` ("an llm.c
/// checkpoint"): it is missing, or a regular file or directory that `is_kind` recognises as
/// one. Anything else there (a symbolic link, a FIFO, a device, an unrelated file or
/// directory) is the user's, which a rename would destroy, or replace instead of writing
/// through: an error names what it is.
pub fn check_replaceable(path: &Path, kind: &str, is_kind: impl FnOnce(&Path) -> bool) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    // symlink_metadata: a link is neither a file nor a directory here.
    if (meta.is_file() || meta.is_dir()) && is_kind(path) {
        return Ok(());
    }
    let what = match meta.is_file() {
        true => "a file of another kind",
        false => entry_kind(&meta),
    };
    Err(Error::Input(format!(
        "{} exists and is {what}, not {kind}: refusing to replace it (move it away first, or write elsewhere)",
        path.display()
    )))
}

/// Removes the temporary entries (`.NAME.tmp-PID`, files or directories) that writers killed
/// mid-write left in `dir`: those of processes no longer alive, never this process's or a
/// running one's. A killed checkpoint write can leave a whole old checkpoint there. Best
/// effort: an entry that cannot be removed stays (it is only wasted space).
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = temp_owner(&name.to_string_lossy()) else {
            continue;
        };
        if pid == std::process::id() || process_is_alive(pid) {
            continue;
        }
        let path = entry.path();
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
    }
}

/// The PID in a temporary name made by [`sibling`] with [`TMP`], `.NAME.tmp-PID`.
fn temp_owner(name: &str) -> Option<u32> {
    let (stem, pid) = name.rsplit_once(&format!(".{TMP}-"))?;
    let named = stem.len() > 1 && stem.starts_with('.');
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    (named && digits).then(|| pid.parse().ok()).flatten()
}

/// Whether a process with this PID exists (one of another user's counts). Unknown: alive.
#[cfg(unix)]
fn process_is_alive(pid: u32) -> bool {
    // PID 0 and negative PIDs would name process groups.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_is_alive(_pid: u32) -> bool {
    true
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

    #[test]
    fn only_temporaries_of_dead_processes_are_removed() {
        assert_eq!(temp_owner(".latest.tmp-123"), Some(123));
        assert_eq!(temp_owner(".abc.tokens.tmp-7"), Some(7));
        for name in [
            "latest.tmp-1",
            ".tmp-1",
            ".x.tmp-",
            ".x.tmp-12a",
            ".x.old-1",
            "notes.tmp-1",
        ] {
            assert_eq!(temp_owner(name), None, "{name}");
        }
        let root = std::env::temp_dir().join(format!("gpt2-atomic-stale-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        #[cfg(unix)]
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            child.wait().unwrap();
            child.id()
        };
        #[cfg(not(unix))]
        let dead = u32::MAX;
        let ours = std::process::id();
        let (dead_dir, dead_file) = (
            root.join(format!(".best.tmp-{dead}")),
            root.join(format!(".loss.png.tmp-{dead}")),
        );
        fs::create_dir_all(&dead_dir).unwrap();
        fs::write(dead_dir.join("model.safetensors"), b"old").unwrap();
        fs::write(&dead_file, b"half").unwrap();
        let kept = [
            format!(".latest.tmp-{ours}"),
            "notes.tmp-1".to_string(),
            ".x.old-1".to_string(),
        ];
        for name in &kept {
            fs::write(root.join(name), b"keep").unwrap();
        }
        remove_stale_temps(&root);
        #[cfg(unix)]
        assert!(
            !dead_dir.exists() && !dead_file.exists(),
            "a dead process's are removed"
        );
        for name in &kept {
            assert!(root.join(name).exists(), "{name} is kept");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn only_a_missing_path_or_one_of_the_kind_is_replaceable() {
        let root = std::env::temp_dir().join(format!("gpt2-atomic-replace-{}", std::process::id()));
        fs::create_dir_all(root.join("dir")).unwrap();
        fs::write(root.join("ours"), b"ours").unwrap();
        fs::write(root.join("theirs"), b"theirs").unwrap();
        let ours = |p: &Path| fs::read(p).is_ok_and(|b| b == b"ours");
        check_replaceable(&root.join("missing"), "a test file", ours).unwrap();
        check_replaceable(&root.join("ours"), "a test file", ours).unwrap();
        let err = |name: &str| {
            check_replaceable(&root.join(name), "a test file", ours)
                .unwrap_err()
                .to_string()
        };
        assert!(err("theirs")
            .contains("theirs exists and is a file of another kind, not a test file: refusing to replace it"));
        assert!(err("dir").contains("dir exists and is a directory, not a test file"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("ours"), root.join("link")).unwrap();
            assert!(
                err("link").contains("link exists and is a symbolic link"),
                "not followed"
            );
        }
        fs::remove_dir_all(&root).unwrap();
    }
}
