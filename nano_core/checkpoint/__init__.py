"""Checkpoints that both backends read and write: safetensors (numpy) + a JSON meta file, written atomically and
verified on read.

    layout   the directory's files, CheckpointError / WriteError, notices, list_checkpoints
    write    save_checkpoint: everything into a temp dir, published by nano_io.dirs.atomic_dir
    verify   read_meta, verify_checkpoint: checksums, sizes, paths that stay inside the checkpoint
    retain   keep the newest good checkpoints; temp dirs of killed saves (orphans)
    load     latest_checkpoint, resolve_checkpoint, load_checkpoint, checkpoint_tokenizer_dir

The names other modules use are gathered here, so `from nano_core.checkpoint import load_checkpoint` reads as one
interface.
"""
from nano_core.checkpoint.layout import (CKPT_RE, MANIFEST_FILE, META_FILE, MODEL_FILE, OPTIM_FILE, ORPHAN_AGE_S,
                                         REQUIRED_META, TMP_PREFIX, TMP_RE, TOKENIZER_DIR, CheckpointError,
                                         WriteError, code_version, emit, list_checkpoints)
from nano_core.checkpoint.load import checkpoint_tokenizer_dir, latest_checkpoint, load_checkpoint, resolve_checkpoint
from nano_core.checkpoint.retain import orphaned_temp_dirs, remove_orphans
from nano_core.checkpoint.verify import read_meta, verify_checkpoint
from nano_core.checkpoint.write import save_checkpoint, write_manifest

__all__ = ["CKPT_RE", "MANIFEST_FILE", "META_FILE", "MODEL_FILE", "OPTIM_FILE", "ORPHAN_AGE_S", "REQUIRED_META",
           "TMP_PREFIX", "TMP_RE", "TOKENIZER_DIR", "CheckpointError", "WriteError", "code_version", "emit",
           "list_checkpoints", "checkpoint_tokenizer_dir", "latest_checkpoint", "load_checkpoint",
           "resolve_checkpoint", "orphaned_temp_dirs", "remove_orphans", "read_meta", "verify_checkpoint",
           "save_checkpoint", "write_manifest"]
