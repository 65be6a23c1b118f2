//! An advisory lock on a directory, so that one process at a time writes it: `flock` on a lock
//! file inside it, which holds the PID of the holder for the message of the next one. The
//! system releases the lock when the holder exits, however it exits, so a killed holder never
//! leaves the directory locked.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::Path;

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct DirLock {
    /// The open lock file: the lock lives as long as it stays open.
    #[cfg_attr(not(unix), allow(dead_code))]
    file: File,
}

impl DirLock {
    /// Locks the directory `dir` through its file `name` (created if missing). If another
    /// process holds it, an error says that `dir` is in use by that `holder` ("training run")
    /// and names its PID.
    pub fn take(dir: &Path, name: &str, holder: &str) -> Result<DirLock> {
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path);
        if meta.as_ref().is_ok_and(|m| !m.file_type().is_file()) {
            return Err(Error::Input(format!(
                "{} exists and is {}, not a lock file: refusing to use it (remove it first)",
                path.display(),
                super::atomic::entry_kind(meta.as_ref().expect("checked"))
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let lock = DirLock { file };
        lock.acquire(&path, dir, holder)?;
        Ok(lock)
    }

    /// Takes the lock without waiting, then records this process's PID in the lock file.
    #[cfg(unix)]
    fn acquire(&self, path: &Path, dir: &Path, holder: &str) -> Result<()> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor that stays open for the call.
        if unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(Error::io(path, err));
            }
            let mut text = String::new();
            let _ = (&self.file).read_to_string(&mut text);
            let pid = match text.trim() {
                pid if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => format!("PID {pid}"),
                _ => "PID not yet recorded".to_string(),
            };
            return Err(Error::Input(format!(
                "{} is in use by another {holder} (process {pid}): wait for it to finish, or stop it first",
                dir.display()
            )));
        }
        let mut file = &self.file;
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| Error::io(path, e))
    }

    /// Advisory locks are only taken on Unix; elsewhere the directory is left unlocked.
    #[cfg(not(unix))]
    fn acquire(&self, _path: &Path, _dir: &Path, _holder: &str) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = std::env::temp_dir().join(format!("gpt2-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = DirLock::take(&dir, ".lock", "test").unwrap();
        let err = DirLock::take(&dir, ".lock", "test").unwrap_err().to_string();
        assert!(
            err.contains("in use by another test") && err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        drop(first);
        let again = DirLock::take(&dir, ".lock", "test");
        assert!(again.is_ok(), "released when dropped");
        drop(again);
        std::fs::remove_file(dir.join(".lock")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.join(".lock")).unwrap();
        let err = DirLock::take(&dir, ".lock", "test").unwrap_err().to_string();
        assert!(err.contains("a symbolic link, not a lock file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
