"""The output directory of nano_core.prepare and its manifest: what a rerun finds there, whether it may continue
it, and the manifest's life from a fresh start to complete.

OUT holds tokenizer/ (published whole by nano_io.dirs.atomic_dir), the shards and manifest.json. A rerun of the
same command continues an interrupted run; one with another tokenizer, other sources (or source files edited since)
or other shard options is refused in one line.
"""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from nano_core.data_dir import load_manifest
from nano_core.shards import shard_dtype
from nano_core.prepare_shards import write_json
from nano_io.dirs import atomic_dir
from nano_io.sources import changed_files, source_files

MANIFEST_FORMAT = 2  # 2: sources interleaved by size (1 read them one after another)


def train_tokens(manifest: dict) -> int:
    return sum(s["tokens"] for s in manifest.get("shards", []) if s["split"] == "train")


def open_out_dir(out: Path) -> dict | None:
    """Create OUT, clear what a killed run left half-written, and return the manifest of a previous run (or None)."""
    if out.exists() and not out.is_dir():  # mkdir would raise FileExistsError, a traceback in the CLI
        raise ValueError(f"--out {out} is a file, not a directory; pass a new or existing directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a parent of OUT is a file
        raise ValueError(f"--out {out}: a part of that path is a file, not a directory; pass another --out") from None
    except PermissionError:
        raise ValueError(f"--out {out} cannot be created (permission denied); pass a directory you can write") \
            from None
    prior = load_manifest(out) if (out / "manifest.json").exists() else None
    for stale in out.glob(".*.tmp"):  # atomic_path temp files (.NAME.XXXX.tmp) of a run killed mid-write
        stale.unlink()
    for stale in out.glob(".tokenizer.*"):  # a tokenizer directory save_tokenizer had not renamed yet
        shutil.rmtree(stale, ignore_errors=True)
    if prior is None and any(out.glob("shard_*.bin")):
        raise ValueError(f"{out} holds shard files but no manifest.json; delete them or use another --out")
    return prior


def check_resumable(prior: dict, out: Path, tok, options: dict) -> None:
    """A previous run in OUT may be continued only with the same tokenizer, sources and shard options."""
    if prior.get("format_version") != MANIFEST_FORMAT and not prior.get("complete"):
        raise ValueError(f"{out} holds an unfinished prepare from another nano version (manifest format "
                         f"{prior.get('format_version')}, this one {MANIFEST_FORMAT}); delete {out} and rerun")
    if prior["tokenizer_hash"] != tok.hash:
        raise ValueError(f"{out} already holds shards made with a different tokenizer (hash "
                         f"{prior['tokenizer_hash'][:12]}, vocab {prior['vocab_size']}; this one {tok.hash[:12]}, "
                         f"vocab {tok.vocab_size}). Use another --out or delete {out}")
    # The tokenizer in OUT was trained on the sources: those must match. The shard sizes must match only while
    # there are usable shards to continue (none yet, or a finished run without training tokens, are redone).
    redo = not prior["shards"] or (prior.get("complete") and train_tokens(prior) == 0)
    if not redo and prior.get("source_files") is not None:  # shards of the files as they were: not to be mixed
        changed = changed_files(prior["source_files"], source_files(options["sources"]))
        if changed:
            raise ValueError(f"{out} was prepared from the sources as they were: {len(changed)} of their files "
                             f"changed since (added, removed or edited; first {changed[0]}); delete {out} to "
                             "prepare again, or use another --out")
    keys = ("sources", "max_docs") if redo else ("sources", "max_docs", "shard_tokens", "val_tokens")
    changed = [k for k in keys if prior["options"].get(k) != options[k]]
    if changed:
        was = ", ".join(f"{k}={prior['options'].get(k)!r}" for k in changed)
        raise ValueError(f"{out} was prepared with different {', '.join(changed)} ({was}); "
                         "repeat those options or use another --out")


def start_manifest(out: Path, tok, specs: list[str], src, options: dict) -> dict:
    """A fresh run: save the tokenizer to OUT/tokenizer, write and return the empty manifest."""
    save_tokenizer(tok, out)
    dtype = shard_dtype(tok.vocab_size)
    manifest = {
        "format": "nano-shards", "format_version": MANIFEST_FORMAT,
        "shard_version": {"uint16": 1, "uint32": 2}[dtype], "dtype": dtype,
        "tokenizer_hash": tok.hash, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
        "sources": specs, "source_names": [x.name for x in src],
        "source_files": source_files(specs),  # read before the text: an edit during the run shows as a change
        "options": options, "shards": [], "resume": {"next_doc": 0, "next_offset": 0},
        "total_tokens": 0, "total_documents": 0, "text_bytes": 0, "complete": False,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def reset_manifest(out: Path, manifest: dict, options: dict) -> dict:
    """Back to no shards (keeping the tokenizer) with the given options: for an OUT whose shards are unusable
    (no training tokens) or that has none yet."""
    for stale in out.glob("shard_*.bin"):
        stale.unlink()
    for key in ("completed", "val_cut"):
        manifest.pop(key, None)
    manifest.update(format_version=MANIFEST_FORMAT, options=options, shards=[], complete=False, total_tokens=0,
                    source_files=source_files(options["sources"]),
                    total_documents=0, text_bytes=0, resume={"next_doc": 0, "next_offset": 0})
    write_json(out / "manifest.json", manifest)
    return manifest


def finish_manifest(out: Path, manifest: dict, text_bytes: int) -> None:
    """Mark the manifest complete (totals, timestamp, no resume point) and write it."""
    if train_tokens(manifest) == 0:  # _write_shards refuses this first; never write "complete" without them
        raise ValueError(f"{out}: no training tokens; not marking it complete")
    manifest["total_documents"] = sum(s["documents"] for s in manifest["shards"])
    manifest["text_bytes"] = text_bytes
    manifest["complete"] = True
    manifest["completed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.pop("resume", None)
    write_json(out / "manifest.json", manifest)


def save_tokenizer(tok, out: Path):
    """Save to a temp directory, then rename (nano_io.dirs.atomic_dir): OUT/tokenizer is either absent or complete.
    Its temp and set-aside names start with ".tokenizer.", which open_out_dir clears after a crash."""
    final = out / "tokenizer"
    with atomic_dir(final, prefix=".tokenizer.", aside=out / f".tokenizer.replaced-{os.getpid()}") as tmp:
        tok.save(tmp)
