"""Which shards a run trains on: --data as given, or --source prepared once into nano's cache and reused.

With no --source, the FineWeb-Edu hub when it is reachable (a download sized for one pass of the run's time budget
at the speed expected on this machine), else the small builtin text with a notice.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from nano_core.cli import TrainConfig
from nano_core.config import ModelConfig
from nano_core.data_dir import default_data_dir, drop_stale_cache
from nano_core.metrics import expected_tokens_per_s
from nano_core.prepare import prepare
from nano_core.settings import requested_model_config
from nano_io.sources import hub_reachable, open_sources
from tokenizer import CharTokenizer, load_tokenizer

# The no-argument FineWeb-Edu download is sized for one pass over the time budget at the expected speed (hub_documents):
# a smaller corpus would end the run early at its DEFAULT_EPOCHS passes (nano_core/plan.py). Bounds: at least
# HUB_MIN_DOCS, at most HUB_MAX_DOCS; counts are rounded up to HUB_DOCS_STEP so that runs on one machine share one
# cache entry.
HUB_MIN_DOCS, HUB_MAX_DOCS, HUB_DOCS_STEP = 20_000, 500_000, 10_000
HUB_TOKENS_PER_DOC = 1_050  # the mean FineWeb-Edu document at a vocabulary of 8192 (docs/mac.md: how it was measured)
BUILTIN_NOTICE = ("notice: the FineWeb-Edu hub is not reachable, so training on the small builtin text; point it at "
                  "real data with --source (text files, dirs, .jsonl, .parquet), e.g. "
                  "--source ../shared/data/fineweb_edu/sample-10BT-281docs.jsonl --source ../shared/data/gutenberg")


def _source_cache_dir(specs: list[str], vocab_size: int) -> Path:
    # Key the cache on what the shards depend on: the sources (resolved, in order) and the vocabulary. The
    # well-known single sources keep their plain name (fineweb-edu-v8192, builtin-v8192).
    if len(specs) == 1 and not Path(specs[0]).exists():
        return default_data_dir(specs[0], vocab_size)
    resolved = [str(Path(s).resolve()) if Path(s).exists() else s for s in specs]
    key = hashlib.sha256(json.dumps(resolved).encode()).hexdigest()[:8]
    slug = "+".join(Path(s).name or s for s in specs)[:60]
    return default_data_dir(f"{slug}-{key}", vocab_size)


def _usable_cache(out: Path, log=print) -> bool:
    """A cache entry that prepare finished and that holds training tokens (older versions could mark a single-
    document corpus complete with none: such an entry is prepared again), made from its source files as they are."""
    if drop_stale_cache(out, log) or not (out / "manifest.json").is_file():
        return False
    manifest = json.loads((out / "manifest.json").read_text())
    return bool(manifest.get("complete", True)) and any(
        s.get("split") == "train" and s.get("tokens", 0) > 0 for s in manifest.get("shards", []))


def hub_documents(budget_s: float | None, tokens_per_s: float | None) -> int:
    """FineWeb-Edu documents to download for a run of `budget_s` seconds at `tokens_per_s`: one pass of fresh text
    (so even a rate estimate 3x too low still fills the budget within the plan's DEFAULT_EPOCHS passes), within the
    bounds."""
    if not budget_s or not tokens_per_s:
        return HUB_MIN_DOCS
    docs = math.ceil(budget_s * tokens_per_s / HUB_TOKENS_PER_DOC / HUB_DOCS_STEP) * HUB_DOCS_STEP
    return int(min(max(docs, HUB_MIN_DOCS), HUB_MAX_DOCS))


def hub_download_size(config: TrainConfig, peak_flops) -> int:
    """hub_documents for this run: its --max-time, and the speed of its model on this machine (`peak_flops`: a
    callable that measures the matmul peak, called only here, when a download is planned)."""
    if getattr(config, "max_time", None) is None or peak_flops is None:
        return HUB_MIN_DOCS
    model_config = resolve_model_config(config, config.vocab_size)
    return hub_documents(config.max_time, expected_tokens_per_s(model_config.estimate_flops(), peak_flops()))


def resolve_data(config: TrainConfig, log=print, tokenizer=None, peak_flops=None) -> Path:
    """A shard directory to train on: --data as given, or --source prepared once into a cache directory (with
    `tokenizer` when the model brings its own, else a new one: BPE of --vocab-size, or --tokenizer char). The hub
    source with no --source is sized by hub_download_size (`peak_flops` measures the machine)."""
    data_dir = _shards(config, log, tokenizer, peak_flops)
    if getattr(config, "sample_prompt", None) is not None and (data_dir / "tokenizer").is_dir():
        check_sample_prompt(config, data_dir)
    return data_dir


def _shards(config: TrainConfig, log, tokenizer, peak_flops) -> Path:
    if config.data is not None:
        data = Path(config.data)
        if not (data / "manifest.json").is_file():
            raise FileNotFoundError(f"--data {data} holds no manifest.json; prepare shards with "
                                    f"`python -m nano_core.prepare` or pass --source instead")
        return data
    specs = config.source
    if not specs:
        specs = ["fineweb-edu"] if hub_reachable() else ["builtin"]
        if specs == ["builtin"]:
            log(BUILTIN_NOTICE)
    max_docs = None
    # (benchmark scripts pass a namespace of the data flags alone: no --tokenizer there means BPE)
    char = tokenizer is None and getattr(config, "tokenizer", "bpe") == "char"
    key = "char" if char else config.vocab_size if tokenizer is None else f"tok-{tokenizer.hash[:12]}"
    out = _source_cache_dir(specs, key)
    if specs == ["fineweb-edu"]:  # the download's size is part of the cache key
        max_docs = hub_download_size(config, peak_flops) if tokenizer is None else HUB_MIN_DOCS
        out = out.with_name(out.name.replace("fineweb-edu", f"fineweb-edu-{max_docs // 1000}k", 1))
        log(f"data: {max_docs:,} FineWeb-Edu documents, about {max_docs * HUB_TOKENS_PER_DOC / 1e6:,.0f}M tokens "
            f"(one pass of the time budget at the expected speed, within {HUB_MIN_DOCS:,}-{HUB_MAX_DOCS:,})")
    if _usable_cache(out, log):
        log(f"data: cached shards {out}")
        return out
    if char:  # the alphabet of the very documents prepare encodes (the hub's: its first max_docs)
        tokenizer = CharTokenizer.train(open_sources(list(specs), max_docs=max_docs))
        what = f"characters, vocab {tokenizer.vocab_size}"
    elif tokenizer is None:
        what = f"vocab {config.vocab_size}"
    else:
        what = f"the starting model's tokenizer, vocab {tokenizer.vocab_size}"
    log(f"data: preparing {' + '.join(specs)} ({what}) into {out}")
    prepare(sources=specs, out_dir=out, vocab_size=None if tokenizer else config.vocab_size, tokenizer=tokenizer,
            progress=True, max_docs=max_docs)
    return out


def check_sample_prompt(config: TrainConfig, data_dir: Path) -> None:
    """The samples' prompt must be text the data's tokenizer can encode (a character tokenizer knows only the
    characters of its training text): a one-line error now, not at the first sample."""
    try:
        load_tokenizer(Path(data_dir) / "tokenizer").encode(config.sample_prompt)
    except ValueError as e:
        raise ValueError(f"--sample-prompt {config.sample_prompt!r}: {e}; give a prompt in characters of the "
                         f"training text") from None


def resolve_model_config(config: TrainConfig, vocab_size: int) -> ModelConfig:
    """The model a fresh run asks for, on the data's vocabulary (nano_core.settings.requested_model_config)."""
    return requested_model_config(config, vocab_size)
