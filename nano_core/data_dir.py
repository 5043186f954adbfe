"""A prepared data directory (nano_core/prepare.py writes one): its manifest, its train and val shards, and where
nano caches the shards it prepares from --source.

A prepared directory holds shard_00000.bin (validation), shard_00001.bin.. (training), manifest.json (tokenizer
hash, vocab size, documents and tokens per shard) and tokenizer/. llm.c and modded-nanogpt directories (no
manifest) and single shard files or globs are read too.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from nano_io.sources import changed_files, source_files


def load_manifest(data_dir) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m nano_core.prepare --source ... --out {data_dir}`")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not text (overwritten or damaged); delete it and re-run prepare") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); delete it and re-run prepare") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: holds a {type(manifest).__name__}, not a shard manifest; delete it and re-run "
                         "prepare")
    return manifest


def default_data_dir(source_name: str, vocab_size: int) -> Path:
    """Where prepared shards live by default: $NANO_CACHE/data/{name}-v{vocab} ($NANO_CACHE = ~/.cache/nano)."""
    root = Path(os.environ.get("NANO_CACHE") or Path.home() / ".cache" / "nano").expanduser()
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(source_name)).strip("-.") or "data"
    return root / "data" / f"{name}-v{vocab_size}"


def drop_stale_cache(out, log=print) -> bool:
    """For a cache of --source shards (a directory nano made, never a --data directory: this deletes it): when the
    files of its sources changed since it was made (added, removed, or another size or mtime than manifest.json
    records), say so in one line and remove the cache so that it is prepared again; return whether it did. A cache
    made before manifests recorded the files is prepared again too (its data cannot be vouched for)."""
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):  # none, or unreadable: the caller prepares or reports it as before
        return False
    specs = [str(s) for s in manifest.get("sources", [])]
    now = source_files(specs)
    recorded = manifest.get("source_files")
    if recorded is None:
        if not now:  # named sources only (builtin, the hub): nothing on disk to compare
            return False
        log(f"data: {out} was made before nano recorded its source files' sizes and times: preparing again")
    else:
        changed = changed_files(recorded, now)
        if not changed:
            return False
        where = [s for s in specs if any(f == s or f.startswith(s.rstrip(os.sep) + os.sep) for f in changed)]
        log(f"data: {' + '.join(where or specs)} changed since the cache was made ({len(changed)} "
            f"file{'s' * (len(changed) != 1)}): preparing again")
    shutil.rmtree(out)
    return True


def _split_files(data_dir: Path, manifest: dict | None) -> dict[str, list[Path]]:
    """Shard files by split. With a manifest its list is the truth; without one (llm.c/modded-nanogpt output)
    names containing "val"/"train" decide, and failing that shard 0 is validation (our convention)."""
    if manifest is not None:
        splits = {"train": [], "val": []}
        for s in manifest.get("shards", []):
            splits[s["split"]].append(data_dir / s["file"])
        return splits
    files = sorted(data_dir.glob("*.bin"))
    named = {"val": [f for f in files if "val" in f.name], "train": [f for f in files if "train" in f.name]}
    if named["val"] or named["train"]:
        return named
    return {"val": files[:1], "train": files[1:]}


def find_shards(data, split: str) -> tuple[Path, list[Path], dict | None]:
    """data is a prepared directory, an llm.c directory, one shard file, or a glob ("dir/fineweb_train_*.bin").
    A file or a glob is used as given, whatever the split."""
    text = str(data)
    if any(c in text for c in "*?["):
        pattern = Path(text).expanduser()
        files = sorted(pattern.parent.glob(pattern.name))
        if not files:
            raise FileNotFoundError(f"no shard matches {text}")
        return pattern.parent, files, None
    path = Path(text).expanduser()
    if path.is_file():
        return path.parent, [path], None
    if not path.is_dir():
        raise FileNotFoundError(f"data directory {path} not found: run `python -m nano_core.prepare --out {path} ...`")
    manifest = load_manifest(path) if (path / "manifest.json").is_file() else None
    if manifest is not None and not manifest.get("complete", True):
        raise ValueError(f"{path}: prepare did not finish (manifest says incomplete); re-run the same prepare command")
    files = _split_files(path, manifest)[split]
    if not files:
        fix = ("re-run the same `python -m nano_core.prepare` command (it redoes data without training tokens)"
               if manifest is not None and split == "train" else
               "shard_00000.bin is validation, shard_00001.bin.. training")
        raise ValueError(f"{path}: no {split} shards; {fix}")
    return path, files, manifest
