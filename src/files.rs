//! Opening input files: model, tokenizer and corpus files are read only when they are regular
//! files (after following links), so that a FIFO is an error instead of a read that blocks
//! forever, and a device such as /dev/zero an error instead of a read that never ends; small
//! files (settings, indexes) are read only up to a bound for their kind.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The most bytes a settings file (config.json, hparams.json, a safetensors index) may have:
/// they hold a few kB.
pub const SETTINGS_MAX_BYTES: u64 = 16 << 20;

/// The size of `path`, a regular file; an error naming what it is otherwise.
pub fn regular(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let kind = if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file (a FIFO, socket or device)"
    };
    Err(Error::io(
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{kind}, not a file to read")),
    ))
}

/// `path`, opened for reading once it is known to be a regular file.
pub fn open(path: &Path) -> Result<File> {
    regular(path)?;
    File::open(path).map_err(|e| Error::io(path, e))
}

/// The bytes of the regular file `path`, which must not be larger than `max` bytes.
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>> {
    let len = regular(path)?;
    if len > max {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{len} bytes, more than such a file can be ({max} at most)"),
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The bound holds even if the file grows after its size was read.
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    file.take(max).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// The UTF-8 text of the regular file `path`, at most `max` bytes.
pub fn read_to_string(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read(path, max)?).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text: byte {} is invalid", e.utf8_error().valid_up_to()),
            ),
        )
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("gpt2-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let zero = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        for path in [&fifo, &zero] {
            let err = read(path, 1 << 20).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
            assert!(open(path).is_err());
        }
        assert!(regular(&dir).unwrap_err().to_string().contains("a directory"));
        let small = dir.join("small.json");
        std::fs::write(&small, "{}").unwrap();
        assert_eq!(read_to_string(&small, 2).unwrap(), "{}");
        assert!(read(&small, 1).unwrap_err().to_string().contains("2 bytes, more than"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
