"""Finding and loading checkpoints: the newest one of a run dir that verifies, a named one, its tokenizer.

`latest_checkpoint` / `resolve_checkpoint` of a run dir skip bad checkpoints, newest first, with one notice per
skip. meta.json's tokenizer_dir is never followed (a checkpoint without its own tokenizer/ is refused, saying how
to give it one).
"""
from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.numpy import load_file

from nano_core.checkpoint.layout import (CKPT_RE, MANIFEST_FILE, META_FILE, MODEL_FILE, OPTIM_FILE, TOKENIZER_DIR,
                                         CheckpointError, emit, list_checkpoints)
from nano_core.checkpoint.retain import orphaned_temp_dirs
from nano_core.checkpoint.verify import check_contained, read_meta, verify_checkpoint


def latest_checkpoint(run_dir, notices=None) -> Path | None:
    """The newest checkpoint in `run_dir` that verifies, or None. Each newer one that does not is skipped with a
    notice `skipping checkpoint PATH: what is wrong`; temp dirs of interrupted saves are ignored with a notice."""
    for orphan in orphaned_temp_dirs(run_dir):
        emit(notices, f"ignoring {orphan}: left by an interrupted checkpoint save (the next save removes it)")
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            emit(notices, f"skipping {e}")
    return None


def _looks_like_checkpoint(path: Path) -> bool:
    return bool(CKPT_RE.match(path.name)) or any((path / n).exists() for n in (META_FILE, MODEL_FILE,
                                                                               MANIFEST_FILE))


def resolve_checkpoint(spec, run_dir=None, notices=None) -> Path:
    """A verified checkpoint dir from `spec`: a checkpoint dir (CheckpointError if it does not verify), a run dir
    or "latest" (in `run_dir`): its newest checkpoint that verifies, skipping bad ones with a notice each."""
    if spec == "latest":
        if run_dir is None:
            raise ValueError("--resume latest needs --out RUN_DIR to look in")
        where = Path(run_dir)
    else:
        where = Path(spec)
        if not where.exists():
            raise FileNotFoundError(f"{where} does not exist")
        if _looks_like_checkpoint(where):
            try:
                verify_checkpoint(where)
            except CheckpointError as e:
                raise CheckpointError(e.path, f"{e.reason}; name the run dir instead to use its newest good "
                                              f"checkpoint") from None
            return where
    skipped = []
    found = latest_checkpoint(where, lambda msg: (skipped.append(msg), emit(notices, msg)))
    if found is not None:
        return found
    bad = sum(m.startswith("skipping") for m in skipped)
    if spec == "latest":
        if bad:
            raise FileNotFoundError(f"no checkpoint in {where} verifies ({bad} skipped as damaged); drop --resume "
                                    f"to start fresh")
        raise FileNotFoundError(f"no checkpoint in {where} to resume from; drop --resume to start fresh")
    if bad:
        raise FileNotFoundError(f"no checkpoint in {where} verifies ({bad} skipped as damaged)")
    raise FileNotFoundError(f"{where} is neither a checkpoint directory nor a run dir holding one")


def load_checkpoint(path, notices=None) -> tuple[dict, dict, dict]:
    """(weights, optim_state, meta): numpy dicts under canonical names; optim_state also holds the scalars.
    `path` goes through resolve_checkpoint (so it is verified first); CheckpointError (a ValueError, one line)
    if it cannot be used."""
    path = resolve_checkpoint(path, notices=notices)
    meta = read_meta(path)
    try:  # resolve_checkpoint verified that both names stay inside the checkpoint
        weights = load_file(str(path / MODEL_FILE))
        optim_state = load_file(str(path / OPTIM_FILE)) if (path / OPTIM_FILE).is_file() else {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(path, f"cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    optim_state.update(meta.get("optimizer", {}))
    meta["path"] = str(path)
    return weights, optim_state, meta


def checkpoint_tokenizer_dir(path) -> Path:
    """Where the tokenizer of a checkpoint lives: its own copy, tokenizer/ (checked to stay inside it, symlinks
    included). meta.json's `tokenizer_dir` (the data's tokenizer when it was trained) is never followed: it is a
    path out of the checkpoint that anyone who hands one over could point anywhere. A checkpoint without its own
    copy is refused in one line that says how to give it one."""
    path = Path(path)
    check_contained(path)
    if (path / TOKENIZER_DIR).is_dir():
        return path / TOKENIZER_DIR
    recorded = read_meta(path).get("tokenizer_dir")
    also = f" (meta.json names {recorded}, outside it, which nano does not read)" if recorded else ""
    raise CheckpointError(path, f"carries no {TOKENIZER_DIR}/{also}; copy the tokenizer/ directory of the data it "
                                f"was trained on into it")
