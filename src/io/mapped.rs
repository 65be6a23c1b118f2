//! A read-only memory map of a weight file, whose pages can be handed back once a tensor has
//! been copied out, so that loading a model peaks at about its size in memory, not twice that.

use super::dtype::{dtype_width, to_f32};
use crate::error::{Error, Result};
use crate::files;
use rayon::prelude::*;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// Tensors are copied out in chunks of this many bytes, spread over the threads.
const CHUNK_BYTES: usize = 4 << 20;

pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = files::open(path)?;
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

    /// Converts `data` (a tensor inside this map, stored as `dtype`) into `out`, chunk by chunk
    /// on all threads, handing each chunk's pages back once it is copied: a load holds only a
    /// few chunks of the file at a time.
    pub fn read_f32(&self, dtype: Dtype, data: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
        let width = dtype_width(dtype)?;
        if data.len() != out.len() * width {
            return Err(format!("holds {} bytes, expected {}", data.len(), out.len() * width));
        }
        let per_chunk = CHUNK_BYTES / width;
        out.par_chunks_mut(per_chunk)
            .zip(data.par_chunks(per_chunk * width))
            .try_for_each(|(out, data)| {
                to_f32(dtype, data, out)?;
                self.release(data);
                Ok(())
            })
    }
}
