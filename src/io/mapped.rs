//! A read-only memory map of a weight file, whose pages can be handed back once a tensor has
//! been copied out, so that loading a model peaks at about its size in memory, not twice that.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap reader we assume nobody truncates the
        // file while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops the whole pages inside `part` (a slice of [`Self::bytes`]) from this process's
    /// resident memory. They stay in the page cache and are read back if touched again.
    pub fn release(&self, part: &[u8]) {
        // 4 KiB pages (x86-64 Linux); where pages are larger the kernel refuses the unaligned
        // advice, which only costs memory.
        let page = 4096;
        let start = (part.as_ptr() as usize).saturating_sub(self.map.as_ptr() as usize);
        let end = (start + part.len()).min(self.map.len());
        let (first, last) = (start.div_ceil(page) * page, end / page * page);
        if last > first {
            // SAFETY: the map is shared, read-only and backed by the file, so MADV_DONTNEED
            // only unmaps clean pages: a later read of them faults the same bytes back in from
            // the file. No slice of the map ever sees different contents. A failure only
            // means the pages stay resident.
            #[cfg(unix)]
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
            };
        }
    }
}
