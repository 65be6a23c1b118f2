//! OpenAI's GPT-2 checkpoints, read without TensorFlow: a directory with `hparams.json` and a
//! TensorFlow tensor bundle (`model.ckpt.index` + `model.ckpt.data-00000-of-00001`).
//!
//! The bundle (tensorflow/core/util/tensor_bundle): the `.index` file is a table
//! ([`super::sstable`]) from tensor name to a `BundleEntryProto`; the entry with the empty key
//! is the `BundleHeaderProto`. Tensor bytes lie raw, little-endian, in the data files
//! `{prefix}.data-{shard:05}-of-{num_shards:05}`. Protobuf field numbers:
//!
//! ```text
//! BundleHeaderProto  1 num_shards, 2 endianness (0 little, 1 big),
//!                    3 version: VersionDef {1 producer, 2 min_consumer, 3 bad_consumers}
//! BundleEntryProto   1 dtype (DataType: 1 float32, 14 bfloat16, 19 float16),
//!                    2 shape: TensorShapeProto {2 dim: {1 size, 2 name}, 3 unknown_rank},
//!                    3 shard_id, 4 offset, 5 size (bytes), 6 crc32c (fixed32, masked),
//!                    7 slices (of a partitioned variable)
//! ```
//!
//! OpenAI's variable names (openai/gpt-2 src/model.py) map onto ours one to one:
//! `model/wte`, `model/wpe`, `model/h{i}/ln_1/{g,b}`, `model/h{i}/attn/c_attn/{w,b}`,
//! `model/h{i}/attn/c_proj/{w,b}`, `model/h{i}/ln_2/{g,b}`, `model/h{i}/mlp/c_fc/{w,b}`,
//! `model/h{i}/mlp/c_proj/{w,b}`, `model/ln_f/{g,b}`. Their conv1d weights are [1, in, out]:
//! our Conv1D layout with a leading 1.

use super::crc32c::{crc32c, unmask};
use super::mapped::MappedFile;
use super::param_buffer::{check_shape, ParamBuffer};
use super::protobuf::{for_each_field, Value};
use super::sstable::read_table;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::files;
use crate::model::Gpt;
use crate::ops::lowp::WeightDtype;
use rayon::prelude::*;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where one tensor lies in the data files, and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleEntry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    shard: usize,
    offset: u64,
    size: u64,
    masked_crc32c: u32,
}

/// An open tensor bundle: its entries by name, and its data files memory-mapped.
pub struct Bundle {
    index_path: PathBuf,
    entries: BTreeMap<String, BundleEntry>,
    shards: Vec<MappedFile>,
}

/// The number of shards in the header entry, after checking that we can read the bundle.
fn parse_header(value: &[u8]) -> std::result::Result<usize, String> {
    // Absent fields are 0, as in any proto3 message.
    let (mut num_shards, mut endianness, mut min_consumer) = (0, 0, 0);
    for_each_field(value, |field, v| {
        match field {
            1 => num_shards = v.as_u64()?,
            2 => endianness = v.as_u64()?,
            3 => for_each_field(v.as_bytes()?, |field, v| {
                if field == 2 {
                    min_consumer = v.as_u64()?;
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    if endianness != 0 {
        return Err("the bundle is big-endian; only little-endian bundles are read".into());
    }
    // Our reader implements format version 1, TensorFlow's current one.
    if min_consumer > 1 {
        return Err(format!(
            "the bundle needs a reader of version {min_consumer} (this one is 1)"
        ));
    }
    match num_shards {
        1..=10_000 => Ok(num_shards as usize),
        n => Err(format!("implausible number of data shards: {n}")),
    }
}

fn parse_shape(value: &[u8]) -> std::result::Result<Vec<usize>, String> {
    let mut shape = Vec::new();
    for_each_field(value, |field, v| {
        match field {
            2 => {
                let mut size = 0;
                for_each_field(v.as_bytes()?, |field, v| {
                    if field == 1 {
                        size = v.as_u64()?;
                    }
                    Ok(())
                })?;
                // int64 on the wire: -1 (an unknown dimension) reads as a huge u64.
                shape.push(
                    usize::try_from(size)
                        .ok()
                        .filter(|&s| s < 1 << 48)
                        .ok_or("unknown or negative dimension")?,
                );
            }
            3 if v == Value::Varint(1) => return Err("unknown rank".into()),
            _ => {}
        }
        Ok(())
    })?;
    Ok(shape)
}

fn parse_entry(value: &[u8]) -> std::result::Result<BundleEntry, String> {
    let mut entry = BundleEntry {
        dtype: Dtype::F32,
        shape: Vec::new(),
        shard: 0,
        offset: 0,
        size: 0,
        masked_crc32c: 0,
    };
    let mut dtype = 0;
    for_each_field(value, |field, v| {
        match field {
            1 => dtype = v.as_u64()?,
            2 => entry.shape = parse_shape(v.as_bytes()?)?,
            3 => entry.shard = v.as_u64()? as usize,
            4 => entry.offset = v.as_u64()?,
            5 => entry.size = v.as_u64()?,
            6 => entry.masked_crc32c = v.as_u64()? as u32,
            7 => return Err("a slice of a partitioned variable; only whole tensors are read".into()),
            _ => {}
        }
        Ok(())
    })?;
    entry.dtype = match dtype {
        1 => Dtype::F32,
        14 => Dtype::BF16,
        19 => Dtype::F16,
        other => {
            return Err(format!(
                "TensorFlow dtype {other} (only float32, bfloat16 and float16 are read)"
            ))
        }
    };
    let width = if entry.dtype == Dtype::F32 { 4 } else { 2 };
    let expected = entry
        .shape
        .iter()
        .try_fold(width as u64, |n, &d| n.checked_mul(d as u64));
    if expected != Some(entry.size) {
        return Err(format!(
            "holds {} bytes, but shape {:?} of {:?} needs {}",
            entry.size,
            entry.shape,
            entry.dtype,
            expected.map_or("more than 2^64".into(), |n| n.to_string())
        ));
    }
    Ok(entry)
}

/// The most bytes an index may have: GPT-2 XL's holds about 20 kB.
const INDEX_MAX_BYTES: u64 = 64 << 20;

impl Bundle {
    /// Opens the bundle `{prefix}.index` + `{prefix}.data-*`, parsing and checking the index.
    pub fn open(prefix: &Path) -> Result<Bundle> {
        let mut index_path = prefix.as_os_str().to_owned();
        index_path.push(".index");
        let index_path = PathBuf::from(index_path);
        let index = files::read(&index_path, INDEX_MAX_BYTES)?;
        let bad = |msg: String| Error::weights(&index_path, msg);
        let table = read_table(&index).map_err(bad)?;
        let Some((b"", header)) = table.first().map(|(k, v)| (k.as_slice(), v)) else {
            return Err(bad("no bundle header (the entry with the empty key)".into()));
        };
        let num_shards = parse_header(header).map_err(|e| bad(format!("bundle header: {e}")))?;
        let mut entries = BTreeMap::new();
        for (key, value) in &table[1..] {
            let name = String::from_utf8_lossy(key).into_owned();
            let entry = parse_entry(value).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
            if entry.shard >= num_shards {
                return Err(bad(format!(
                    "tensor '{name}' is in shard {} of {num_shards}",
                    entry.shard
                )));
            }
            entries.insert(name, entry);
        }
        let shards = (0..num_shards)
            .map(|i| {
                let mut path = prefix.as_os_str().to_owned();
                path.push(format!(".data-{i:05}-of-{num_shards:05}"));
                MappedFile::open(Path::new(&path))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bundle {
            index_path,
            entries,
            shards,
        })
    }

    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// The tensors by name.
    pub fn entries(&self) -> &BTreeMap<String, BundleEntry> {
        &self.entries
    }

    /// The bytes of a tensor, after checking that they are all there and match their crc32c.
    pub fn data(&self, name: &str, entry: &BundleEntry) -> Result<&[u8]> {
        let shard = &self.shards[entry.shard];
        let file = shard.bytes();
        let range = usize::try_from(entry.offset)
            .ok()
            .zip(usize::try_from(entry.size).ok())
            .and_then(|(o, s)| Some(o..o.checked_add(s)?))
            .filter(|r| r.end <= file.len())
            .ok_or_else(|| {
                Error::weights(
                    shard.path(),
                    format!(
                        "tensor '{name}' needs bytes {}..{}, but the file holds {} bytes (truncated?)",
                        entry.offset,
                        entry.offset.saturating_add(entry.size),
                        file.len()
                    ),
                )
            })?;
        let data = &file[range];
        if crc32c(data) != unmask(entry.masked_crc32c) {
            return Err(Error::weights(
                shard.path(),
                format!("tensor '{name}': crc32c mismatch, the data file is corrupt"),
            ));
        }
        Ok(data)
    }

    /// Reads a tensor into `out` as f32, after checking its crc32c.
    pub fn read_f32(&self, name: &str, entry: &BundleEntry, out: &mut [f32]) -> Result<()> {
        let data = self.data(name, entry)?;
        self.shards[entry.shard]
            .read_f32(entry.dtype, data, out)
            .map_err(|msg| Error::weights(&self.index_path, format!("tensor '{name}': {msg}")))
    }

    /// Checks every tensor's bytes against its crc32c (in parallel), handing the pages back.
    pub fn verify(&self) -> Result<()> {
        self.entries.par_iter().try_for_each(|(name, entry)| {
            let data = self.data(name, entry)?;
            self.shards[entry.shard].release(data);
            Ok(())
        })
    }
}

/// OpenAI's name for one of our parameters: `h.3.attn.c_attn.weight` is
/// `model/h3/attn/c_attn/w`, `h.3.ln_1.weight` is `model/h3/ln_1/g`, `wte.weight` is `model/wte`.
pub fn openai_name(name: &str) -> String {
    let (path, leaf) = name.rsplit_once('.').expect("parameter names end in .weight or .bias");
    let path = match path.strip_prefix("h.").and_then(|rest| rest.split_once('.')) {
        Some((layer, rest)) => format!("h{layer}/{rest}"),
        None => path.to_string(),
    }
    .replace('.', "/");
    let is_norm = path.rsplit('/').next().is_some_and(|p| p.starts_with("ln_"));
    match (path.as_str(), leaf) {
        ("wte" | "wpe", _) => format!("model/{path}"),
        (_, "weight") if is_norm => format!("model/{path}/g"),
        (_, "weight") => format!("model/{path}/w"),
        _ => format!("model/{path}/b"),
    }
}

/// Reads `hparams.json`: `{"n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"}`.
pub fn read_hparams(path: &Path) -> Result<Config> {
    let text = files::read_to_string(path, files::SETTINGS_MAX_BYTES)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::weights(path, format!("invalid JSON: {e}")))?;
    let int = |key: &str| {
        json.get(key)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::weights(path, format!("missing or non-integer '{key}'")))
    };
    let config = Config::new(
        int("n_vocab")?,
        int("n_ctx")?,
        int("n_embd")?,
        int("n_layer")?,
        int("n_head")?,
    );
    config.validate().map_err(|e| Error::weights(path, e.to_string()))?;
    Ok(config)
}

/// The checkpoint prefix in a directory: the one `*.index` file, without its extension.
pub fn find_prefix(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut indexes = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "index") {
            indexes.push(path.with_extension(""));
        }
    }
    match indexes.len() {
        1 => Ok(indexes.pop().expect("one")),
        0 => Err(Error::weights(
            dir,
            "no TensorFlow checkpoint (*.index file) in this directory",
        )),
        _ => Err(Error::weights(
            dir,
            format!("several checkpoints in this directory: {indexes:?}"),
        )),
    }
}

/// Loads an OpenAI GPT-2 checkpoint directory, verifying every tensor's crc32c.
pub fn load_openai_dir(dir: &Path) -> Result<Gpt> {
    load_openai_dir_as(dir, WeightDtype::F32)
}

/// [`load_openai_dir`] with the weight matrices stored in `dtype` as they are read.
pub fn load_openai_dir_as(dir: &Path, dtype: WeightDtype) -> Result<Gpt> {
    let hparams = dir.join("hparams.json");
    let config = read_hparams(&hparams)?;
    let bundle = Bundle::open(&find_prefix(dir)?)?;
    let data_bytes = bundle.shards.iter().map(|s| s.bytes().len() as u64).sum();
    let mut buf = ParamBuffer::new(&config, dir, data_bytes, dtype)?;
    let ours: BTreeMap<String, usize> = buf
        .specs()
        .iter()
        .enumerate()
        .map(|(i, s)| (openai_name(&s.name), i))
        .collect();
    let index = bundle.index_path();
    for (name, entry) in bundle.entries() {
        let Some(&i) = ours.get(name) else {
            if name.starts_with("model/") {
                return Err(Error::weights(
                    index,
                    format!("unexpected tensor '{name}': not part of a GPT-2 with this hparams.json"),
                ));
            }
            continue; // not a model variable (an optimizer slot, a step counter)
        };
        let spec = &buf.specs()[i];
        let expected: Vec<usize> = match spec.shape.len() {
            2 if spec.name.starts_with("h.") => [1].iter().chain(&spec.shape).copied().collect(),
            _ => spec.shape.clone(),
        };
        check_shape(index, name, &entry.shape, &expected, "hparams.json")?;
        bundle.read_f32(name, entry, buf.slot(i, index, name)?)?;
    }
    buf.finish(index, openai_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_names() {
        for (ours, theirs) in [
            ("wte.weight", "model/wte"),
            ("wpe.weight", "model/wpe"),
            ("h.0.ln_1.weight", "model/h0/ln_1/g"),
            ("h.11.ln_2.bias", "model/h11/ln_2/b"),
            ("h.3.attn.c_attn.weight", "model/h3/attn/c_attn/w"),
            ("h.3.attn.c_proj.bias", "model/h3/attn/c_proj/b"),
            ("h.47.mlp.c_fc.weight", "model/h47/mlp/c_fc/w"),
            ("h.1.mlp.c_proj.weight", "model/h1/mlp/c_proj/w"),
            ("ln_f.weight", "model/ln_f/g"),
            ("ln_f.bias", "model/ln_f/b"),
        ] {
            assert_eq!(openai_name(ours), theirs);
        }
    }
}
