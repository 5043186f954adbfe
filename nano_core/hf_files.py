"""Reading Hugging Face weight files without torch: one safetensors file (any float dtype, bf16 included) or the
shards a model.safetensors.index.json names. Used by nano_core/hf.py's import."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
_ST_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """A safetensors file as float32 numpy arrays (F32, F16, BF16, F64; bf16 widened exactly). Written here so
    nano_core needs no torch: safetensors.numpy cannot read bf16, the dtype most Hub models are stored in."""
    path = Path(path)
    out = {}
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                dt = info["dtype"]
                if dt not in _ST_DTYPES:
                    raise ValueError(f"{path}: tensor {name} is {dt}; nano imports float weights (F32, F16, BF16, "
                                     f"F64), not quantized ones")
                start, end = info["data_offsets"]
                f.seek(8 + n + start)
                buf = f.read(end - start)
                if len(buf) != end - start:
                    raise ValueError(f"{path} is truncated (tensor {name} runs past the end of the file)")
                a = np.frombuffer(buf, dtype=_ST_DTYPES[dt]).reshape(info["shape"])
                out[name] = (a.astype(np.uint32) << 16).view(np.float32) if dt == "BF16" else a.astype(np.float32)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a safetensors file ({type(e).__name__}: {e})") from None
    return out


def read_hf_weights(directory) -> dict[str, np.ndarray]:
    """All tensors of an HF model directory: model.safetensors, or the shards its model.safetensors.index.json
    names. FileNotFoundError (one line) when there are none (a pytorch_model.bin-only model included)."""
    directory = Path(directory)
    if (directory / INDEX_FILE).is_file():
        index = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))
        files = sorted(set((index.get("weight_map") or {}).values()))
        if not files:
            raise ValueError(f"{directory / INDEX_FILE} names no shard files")
        out = {}
        for name in files:
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing (named in {INDEX_FILE})")
            out.update(read_safetensors(directory / name))
        return out
    if (directory / WEIGHTS_FILE).is_file():
        return read_safetensors(directory / WEIGHTS_FILE)
    bins = [p.name for p in directory.glob("*.bin")]
    hint = (f" (it has {bins[0]}: re-save it with save_pretrained(..., safe_serialization=True))" if bins else "")
    raise FileNotFoundError(f"{directory} holds no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
