//! LevelDB's sorted string table, as TensorFlow writes it for a checkpoint's `.index` file
//! (tensorflow/core/lib/io/{format,block,table}.cc). Read whole: an index holds one small entry
//! per tensor.
//!
//! ```text
//! file     data block, ..., data block, meta-index block, index block, footer
//! footer   the last 48 bytes: meta-index handle, index handle (a handle is two varints,
//!          offset and size), zero padding to 40 bytes, magic 0xdb4775248b80fb57 (fixed64 LE)
//! trailer  5 bytes after each block: compression type (0 = none, 1 = snappy) and the masked
//!          crc32c of the block's bytes followed by the type byte
//! block    entries, then the restart offsets (fixed32 each), then their count (fixed32)
//! entry    shared (varint), unshared (varint), value length (varint), key suffix, value;
//!          key = the previous key's first `shared` bytes + the suffix; shared = 0 at each
//!          restart point
//! index    one entry per data block: key >= the block's last key, value = the block's handle
//! ```

use super::crc32c::{crc32c, unmask};
use super::protobuf::read_varint;

/// The last 8 bytes of every table.
pub const MAGIC: u64 = 0xdb47_7524_8b80_fb57;
const FOOTER_LEN: usize = 48;
const TRAILER_LEN: usize = 5;

/// A table's (key, value) pairs.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Whether `file` ends like a table (the format is recognised by its magic number).
pub fn has_magic(file: &[u8]) -> bool {
    file.len() >= FOOTER_LEN && file[file.len() - 8..] == MAGIC.to_le_bytes()
}

/// (offset, size) of a block.
fn read_handle(buf: &[u8], pos: &mut usize) -> Result<(u64, u64), String> {
    Ok((read_varint(buf, pos)?, read_varint(buf, pos)?))
}

/// The contents of the block at `handle`, after checking its trailer.
fn read_block(file: &[u8], (offset, size): (u64, u64)) -> Result<&[u8], String> {
    let range = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(size).ok())
        .and_then(|(o, s)| Some(o..o.checked_add(s)?))
        .filter(|r| r.end.checked_add(TRAILER_LEN).is_some_and(|end| end <= file.len()))
        .ok_or_else(|| {
            format!(
                "block at offset {offset} ({size} bytes) runs past the end of the {}-byte file: truncated?",
                file.len()
            )
        })?;
    let end = range.end;
    let compression = file[end];
    let stored = u32::from_le_bytes(file[end + 1..end + 5].try_into().expect("4 bytes"));
    if unmask(stored) != crc32c(&file[range.start..=end]) {
        return Err(format!(
            "block at offset {offset}: crc32c mismatch (the file is corrupt)"
        ));
    }
    if compression != 0 {
        return Err(format!(
            "block at offset {offset} is compressed (type {compression}); TensorFlow writes checkpoint indexes uncompressed"
        ));
    }
    Ok(&file[range])
}

/// The (key, value) entries of a block, keys rebuilt from their shared prefixes. `budget`: the
/// bytes of keys and values still allowed (each entry stores only the end of its key, so a
/// crafted table could otherwise rebuild gigabytes of keys from kilobytes).
fn block_entries(block: &[u8], out: &mut Entries, budget: &mut usize) -> Result<(), String> {
    let fixed32 = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes")) as usize;
    if block.len() < 4 {
        return Err("block shorter than its restart count".into());
    }
    let num_restarts = fixed32(block.len() - 4);
    let entries_end = num_restarts
        .checked_mul(4)
        .and_then(|n| (block.len() - 4).checked_sub(n))
        .ok_or("restart array larger than the block")?;
    let restarts: Vec<usize> = (0..num_restarts).map(|i| fixed32(entries_end + 4 * i)).collect();

    let mut key: Vec<u8> = Vec::new();
    let mut next_restart = 0;
    let mut pos = 0;
    while pos < entries_end {
        let at_restart = restarts.get(next_restart) == Some(&pos);
        let shared = read_varint(block, &mut pos)? as usize;
        let unshared = read_varint(block, &mut pos)? as usize;
        let value_len = read_varint(block, &mut pos)? as usize;
        if at_restart {
            next_restart += 1;
            if shared != 0 {
                return Err(format!("entry at restart point {pos} shares a key prefix"));
            }
        }
        if shared > key.len() {
            return Err(format!(
                "entry shares {shared} key bytes, the previous key has {}",
                key.len()
            ));
        }
        let suffix_end = pos.checked_add(unshared).ok_or("entry too long")?;
        let value_end = suffix_end.checked_add(value_len).ok_or("entry too long")?;
        if value_end > entries_end {
            return Err("entry runs into the restart array".into());
        }
        *budget = budget
            .checked_sub(shared + unshared + value_len)
            .ok_or("its entries rebuild to many times the size of the file: not a TensorFlow index")?;
        key.truncate(shared);
        key.extend_from_slice(&block[pos..suffix_end]);
        out.push((key.clone(), block[suffix_end..value_end].to_vec()));
        pos = value_end;
    }
    if next_restart != restarts.len() && entries_end > 0 {
        return Err("restart offsets do not point at entries".into());
    }
    Ok(())
}

/// Every (key, value) of the table, in key order, with every block checksum verified.
pub fn read_table(file: &[u8]) -> Result<Entries, String> {
    if !has_magic(file) {
        return Err(format!(
            "not a LevelDB/TensorFlow table: no magic number in the last 8 of its {} bytes (truncated?)",
            file.len()
        ));
    }
    let footer = &file[file.len() - FOOTER_LEN..];
    let mut pos = 0;
    let _meta_index = read_handle(footer, &mut pos)?;
    let index_handle = read_handle(footer, &mut pos)?;

    // Keys share prefixes: a real table's entries rebuild to about 2x its size.
    let mut budget = file.len().saturating_mul(16).saturating_add(1 << 20);
    let mut index = Vec::new();
    block_entries(read_block(file, index_handle)?, &mut index, &mut budget)?;
    let mut entries = Vec::new();
    for (_, handle) in &index {
        let mut pos = 0;
        let handle = read_handle(handle, &mut pos)?;
        block_entries(read_block(file, handle)?, &mut entries, &mut budget)?;
    }
    if let Some(w) = entries.windows(2).find(|w| w[0].0 >= w[1].0) {
        let shown = |key: &[u8]| String::from_utf8_lossy(&key[..key.len().min(80)]).into_owned();
        return Err(format!(
            "keys out of order: '{}' before '{}'",
            shown(&w[0].0),
            shown(&w[1].0)
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::crc32c::mask;

    const INDEX: &[u8] = include_bytes!("../../tests/fixtures/tiny_openai/model.ckpt.index");

    #[test]
    fn reads_tensorflows_index_in_key_order() {
        let entries = read_table(INDEX).unwrap();
        let keys: Vec<String> = entries.iter().map(|(k, _)| String::from_utf8_lossy(k).into()).collect();
        // The bundle header (empty key) first, then 2 + 2 * 12 + 2 tensors, prefix-compressed.
        assert_eq!(keys.len(), 1 + 28);
        assert_eq!(keys[0], "");
        assert!(keys.contains(&"model/h1/mlp/c_proj/w".to_string()));
    }

    #[test]
    fn a_compressed_block_is_refused_even_with_a_valid_checksum() {
        let mut file = INDEX.to_vec();
        let footer = file.len() - FOOTER_LEN;
        let mut pos = footer;
        read_handle(&file, &mut pos).unwrap();
        let (offset, size) = read_handle(&file, &mut pos).unwrap();
        let end = (offset + size) as usize;
        file[end] = 1; // snappy
        let crc = mask(crc32c(&file[offset as usize..=end]));
        file[end + 1..end + 5].copy_from_slice(&crc.to_le_bytes());
        let err = read_table(&file).unwrap_err();
        assert!(err.contains("compressed (type 1)"), "{err}");
    }

    /// A table of one data block holding `entries` (shared prefix length, key suffix, value).
    fn table(entries: &[(usize, &[u8], &[u8])]) -> Vec<u8> {
        fn varint(mut n: usize, out: &mut Vec<u8>) {
            while n >= 0x80 {
                out.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        fn block(entries: &[(usize, &[u8], &[u8])], file: &mut Vec<u8>) -> (usize, usize) {
            let start = file.len();
            for (shared, suffix, value) in entries {
                for n in [*shared, suffix.len(), value.len()] {
                    varint(n, file);
                }
                file.extend_from_slice(suffix);
                file.extend_from_slice(value);
            }
            file.extend_from_slice(&0u32.to_le_bytes()); // restart offsets: the first entry
            file.extend_from_slice(&1u32.to_le_bytes()); // one restart
            let size = file.len() - start;
            file.push(0); // uncompressed
            let crc = mask(crc32c(&file[start..]));
            file.extend_from_slice(&crc.to_le_bytes());
            (start, size)
        }
        let mut file = Vec::new();
        let (data_offset, data_size) = block(entries, &mut file);
        let mut handle = Vec::new();
        varint(data_offset, &mut handle);
        varint(data_size, &mut handle);
        let (index_offset, index_size) = block(&[(0, b"z", &handle)], &mut file);
        let mut footer = vec![0, 0]; // no meta-index block
        varint(index_offset, &mut footer);
        varint(index_size, &mut footer);
        footer.resize(FOOTER_LEN - 8, 0);
        footer.extend_from_slice(&MAGIC.to_le_bytes());
        file.extend_from_slice(&footer);
        file
    }

    #[test]
    fn keys_rebuilt_from_shared_prefixes_cannot_outgrow_the_file() {
        let long_key = vec![b'a'; 100_000];
        let ok = table(&[(0, b"ab", b"1"), (1, b"c", b"2")]);
        let keys: Vec<Vec<u8>> = read_table(&ok).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [b"ab".to_vec(), b"ac".to_vec()]);
        // 10,000 entries of 3 bytes, each repeating the whole 100 kB key: 1 GB to rebuild.
        let mut entries: Vec<(usize, &[u8], &[u8])> = vec![(0, &long_key, b"")];
        entries.extend(std::iter::repeat_n((long_key.len(), &b""[..], &b""[..]), 10_000));
        let bomb = table(&entries);
        assert!(bomb.len() < 200_000);
        let err = read_table(&bomb).unwrap_err();
        assert!(err.contains("many times the size of the file"), "{err}");
    }
}
