"""Fuzzing every command with bad input (issue 23): random invalid values for its numeric flags (0, negative, NaN,
inf, huge, the wrong type) and random bytes for its file arguments. Each case must end with a non-zero exit, one
error line on stderr naming the flag or the file, no traceback, and nothing left behind: the directory the case
runs in holds exactly what it held before.

The commands' main(argv) run in-process (each raises SystemExit), so the default suite stays within a minute; a
few subprocess runs prove the real entry points say the same. `-m slow` runs many more examples.

argparse's own refusals (a value of the wrong type) print its usage block before the error line: the usage lines
are allowed, the error line must still be the only one and name the flag."""
import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
MICRO = {"n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 32}
QUICK = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
MANY = settings(max_examples=int(os.environ.get("NANO_FUZZ_EXAMPLES", 300)), deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

# -- values that no flag of that kind may take ---------------------------------------------------------------------
WRONG_TYPE = st.sampled_from(["abc", "", "1,5", "0x10", "[]", "--", "1e", "None", "true"])
NAN_INF = st.sampled_from(["nan", "NaN", "inf", "-inf", "+inf", "1e999", "-1e999"])
NEGATIVE_INT = st.integers(max_value=-1).map(str)
NEGATIVE_FLOAT = st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False).map(repr)
NOT_AN_INT = st.one_of(WRONG_TYPE, NAN_INF, st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: x != int(x)).map(repr))


def bad(kind: str, huge: int | None = None):
    """Invalid values for a flag of `kind`: pos_int (>= 1), nat_int (>= 0), pos_float (> 0), nonneg_float (>= 0),
    unit (in [0, 1]), unit_open (in [0, 1)), prob (in (0, 1]); `huge`: the first integer too big for it."""
    parts = {
        "pos_int": [NOT_AN_INT, NEGATIVE_INT, st.just("0")],
        "nat_int": [NOT_AN_INT, NEGATIVE_INT],
        "pos_float": [WRONG_TYPE, NAN_INF, NEGATIVE_FLOAT, st.sampled_from(["0", "-0.0"])],
        "nonneg_float": [WRONG_TYPE, NAN_INF, NEGATIVE_FLOAT],
        "unit": [WRONG_TYPE, NAN_INF, NEGATIVE_FLOAT, st.floats(min_value=1.0001, allow_infinity=False).map(repr)],
        "unit_open": [WRONG_TYPE, NAN_INF, NEGATIVE_FLOAT, st.floats(min_value=1.0, allow_infinity=False).map(repr)],
        "prob": [WRONG_TYPE, NAN_INF, NEGATIVE_FLOAT, st.just("0"),
                 st.floats(min_value=1.0001, allow_infinity=False).map(repr)],
    }[kind]
    if huge is not None:
        parts.append(st.integers(min_value=huge, max_value=huge * 10**6).map(str))
    return st.one_of(*parts)


# random bytes that are not text (a NUL in the first bytes, as any binary file has) or nothing at all
BINARY = st.one_of(st.just(b""), st.binary(min_size=1, max_size=4096).map(lambda b: b[:7] + b"\0" + b[7:]))


# -- the world the commands run in ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(shared_data, tmp_path_factory) -> dict:
    """Good inputs every command starts from: a text, a tokenizer, shards, a model config, a checkpoint."""
    from nano_core import checkpoint as ck
    from nano_core.config import ModelConfig
    from nano_core.init import init_weights
    from nano_core.prepare import prepare

    root = tmp_path_factory.mktemp("fuzz-world")
    text = root / "ts.txt"
    text.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:60_000])
    prepare([text], root / "shards", vocab_size=260, num_workers=1, progress=False)
    (root / "micro.json").write_text(json.dumps(MICRO))
    cfg = ModelConfig(vocab_size=260, **MICRO).validate()
    meta = {"model_config": cfg.to_dict(), "train_config": {}, "loader_state": {}, "backend": "torch"}
    ckpt = ck.save_checkpoint(root / "run", 1, init_weights(cfg, 0), {}, meta,
                              tokenizer_dir=root / "shards" / "tokenizer")
    return {"text": text, "tok": root / "shards" / "tokenizer", "shards": root / "shards",
            "config": root / "micro.json", "ckpt": ckpt}


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind and size: what a case must leave as it found it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = ("dir", 0) if p.is_dir() else ("file", p.stat().st_size)
    return out


def run_main(main, argv) -> tuple[object, str, str]:
    """(exit code, stdout, stderr) of main(argv) in this process; an exception escaping it is a traceback."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:  # what a user would see as a traceback
            err.write(traceback.format_exc())
            code = "traceback"
    if isinstance(code, str) and code != "traceback":
        err.write(code + "\n")
        code = 1
    return code, out.getvalue(), err.getvalue()


def error_line(stderr: str) -> str:
    """The one error line of a refusal: argparse's usage block and notices aside, exactly one line is left."""
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    if lines and lines[0].startswith("usage:"):
        lines = [ln for ln in lines if not (ln.startswith("usage:") or ln.startswith(" "))]
    lines = [ln for ln in lines if not ln.startswith("notice:")]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


# A training start refused after its run dir was claimed once left `--out` holding `.lock` (issue 23 item 4): now
# nano_core.rundir.undo_start removes what the refused start created, so a train case may leave nothing.
TRAIN_START_LEAVES = frozenset()


def check_refused(main, argv, names, where: Path, mentions=(), may_leave=frozenset()):
    """main(argv) exits non-zero with one error line naming one of `names`, and leaves `where` unchanged (but for
    the paths in `may_leave`)."""
    before = tree(where)
    code, _, err = run_main(main, [str(a) for a in argv])
    assert code not in (0, None), f"{argv}: accepted\n{err}"
    line = error_line(err)
    assert any(str(n) in line for n in names), f"{argv}: the error names none of {names}: {line}"
    for m in mentions:
        assert m in line, line
    after = {k: v for k, v in tree(where).items() if k not in may_leave or k in before}
    assert after == before, f"{argv}: left behind {sorted(set(after) - set(before))}, changed " \
                            f"{sorted(k for k in before if k in after and after[k] != before[k])}"


# -- the commands: their main, a good argv, and their flags with the invalid values they must refuse -------------
def entry(module: str):
    """The main(argv) of `python -m module`, imported when first called (the backends load only if fuzzed)."""
    return lambda argv: importlib.import_module(module).main(argv)


prepare_main, tokenizer_main = entry("nano_core.prepare"), entry("tokenizer.train")
torch_train, mlx_train = entry("nano_torch.train"), entry("nano_mlx.train")
generate_main, eval_main = entry("nano_torch.generate"), entry("nano_torch.eval")
export_main, fuse_main = entry("nano_core.export"), entry("nano_core.fuse")


PREPARE_FLAGS = {"--vocab-size": bad("pos_int", huge=2**32), "--shard-tokens": bad("pos_int", huge=2**31),
                 "--val-tokens": bad("pos_int", huge=2**30), "--workers": bad("pos_int", huge=10**4),
                 "--max-docs": bad("pos_int")}
TOKENIZER_FLAGS = {"--vocab-size": bad("pos_int", huge=2**32), "--max-chars": bad("pos_int"),
                   "--max-chars-per-doc": bad("pos_int"), "--workers": bad("pos_int", huge=10**4)}
TRAIN_FLAGS = {"--max-steps": bad("pos_int"), "--batch-size": bad("pos_int"), "--eval-steps": bad("pos_int"),
               "--sample-tokens": bad("pos_int"), "--log-every": bad("pos_int"), "--seq-len": bad("pos_int"),
               "--eval-every": bad("nat_int"), "--sample-every": bad("nat_int"), "--ckpt-every": bad("nat_int"),
               "--keep": bad("nat_int"), "--warmup-steps": bad("nat_int"), "--seed": bad("nat_int"),
               "--lr": bad("pos_float"), "--eps": bad("pos_float"), "--max-time": bad("pos_float"),
               "--min-lr-frac": bad("unit"), "--decay-frac": bad("unit"), "--beta1": bad("unit_open"),
               "--beta2": bad("unit_open"), "--weight-decay": bad("nonneg_float"),
               "--grad-clip": bad("nonneg_float"), "--epochs": bad("pos_float"),
               "--model.n_layer": bad("pos_int"), "--model.dropout_attn": bad("unit_open"),
               "--model.rope_theta": bad("pos_float")}
GENERATE_FLAGS = {"--max-new-tokens": bad("nat_int", huge=10**6 + 1), "--temperature": bad("nonneg_float"),
                  "--top-k": bad("nat_int"), "--top-p": bad("prob"), "--seed": bad("nat_int"),
                  "--num-samples": bad("pos_int", huge=1025)}
EVAL_FLAGS = {"--limit": bad("pos_int"), "--batch-size": bad("pos_int"), "--stride": bad("pos_int")}




def base_argv(command: str, world: dict, here: Path) -> tuple[object, list]:
    """The command's main and an argv that would run (into `here`) without the flag under test."""
    out = here / "out"
    if command == "prepare":
        return prepare_main, ["--source", world["text"], "--out", out, "--tokenizer", world["tok"], "--quiet",
                              "--encoder", "python"]
    if command == "tokenizer":
        return tokenizer_main, ["--input", world["text"], "--out", out, "--vocab-size", "270", "--no-progress"]
    if command in ("torch-train", "mlx-train"):
        return (torch_train if command == "torch-train" else mlx_train), [
            "--data", world["shards"], "--config", world["config"], "--out", out, "--max-steps", "1",
            "--dtype", "fp32", "--device", "cpu", "--eval-every", "0", "--sample-every", "0", "--eval-steps", "1"]
    if command == "generate":
        return generate_main, ["--ckpt", world["ckpt"], "--max-new-tokens", "2", "--device", "cpu"]
    if command == "eval":
        return eval_main, ["--ckpt", world["ckpt"], "--tasks", "bpb", "--bpb-source", world["text"],
                           "--limit", "1", "--device", "cpu", "--out", out]
    if command == "export":
        return export_main, ["--ckpt", world["ckpt"], "--out", out]
    return fuse_main, ["--ckpt", world["ckpt"], "--out", out]


def numeric_case(command: str, flags: dict):
    return st.sampled_from(sorted(flags)).flatmap(lambda f: st.tuples(st.just(command), st.just(f), flags[f]))


NUMERIC = st.one_of(numeric_case("prepare", PREPARE_FLAGS), numeric_case("tokenizer", TOKENIZER_FLAGS),
                    numeric_case("generate", GENERATE_FLAGS), numeric_case("eval", EVAL_FLAGS),
                    numeric_case("torch-train", TRAIN_FLAGS), numeric_case("mlx-train", TRAIN_FLAGS))


def check_numeric(world, here: Path, case):
    command, flag, value = case
    main, argv = base_argv(command, world, here)
    check_refused(main, [*argv, flag, value], [flag], here)


def fresh(tmp_path: Path) -> Path:
    """An empty directory for one example (hypothesis reuses the test's tmp_path across its examples)."""
    here = tmp_path / "case"
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir()
    return here


@QUICK
@given(case=NUMERIC)
def test_every_bad_numeric_flag_is_one_line_naming_it_and_leaves_nothing(world, tmp_path, case):
    check_numeric(world, fresh(tmp_path), case)


@pytest.mark.slow
@MANY
@given(case=NUMERIC)
def test_many_bad_numeric_flags(world, tmp_path, case):
    check_numeric(world, fresh(tmp_path), case)


@pytest.mark.parametrize("flag", ["--lr", "--eps", "--max-time", "--decay-frac", "--beta1", "--beta2",
                                  "--weight-decay", "--grad-clip", "--seed", "--seq-len"])
def test_train_numbers_check_config_once_let_through_are_one_line_naming_the_flag(world, tmp_path, flag):
    """--lr nan and its kind reached PyTorch (its own 'Invalid learning rate: nan') or ModelConfig before
    settings.check_config ran nano_core.checks.check_train_numbers."""
    values = {"--seed": "-1", "--seq-len": "0"}
    check_numeric(world, fresh(tmp_path), ("torch-train", flag, values.get(flag, "nan")))


# -- random bytes where a file goes ----------------------------------------------------------------------------------
def crafted_checkpoint(world, here: Path, victim: str, data: bytes) -> Path:
    """A copy of the good checkpoint with one of its files replaced by `data`."""
    ckpt = here / "given" / "ckpt_0000001"
    shutil.copytree(world["ckpt"], ckpt)
    (ckpt / victim).write_bytes(data)
    return ckpt


CKPT_FILES = st.sampled_from(["meta.json", "checksums.json", "model.safetensors", "tokenizer/nano_tokenizer.json"])
FILE_CASES = st.one_of(
    st.tuples(st.sampled_from(["prepare --source", "tokenizer --input", "tokenizer --val", "train --config",
                               "eval --wikitext2", "eval --hellaswag", "prepare --tokenizer",
                               "train --data"]), st.just(""), BINARY),
    st.tuples(st.sampled_from(["generate --ckpt", "eval --ckpt", "export --ckpt", "fuse --ckpt",
                               "train --resume"]), CKPT_FILES, BINARY))


def check_file(world, here: Path, case):
    what, victim, data = case
    command, flag = what.split()
    given_dir = here / "given"
    given_dir.mkdir()
    path = given_dir / "input.bin"
    path.write_bytes(data)
    if flag in ("--tokenizer", "--data"):  # a directory whose main file holds the bytes
        path = given_dir / "dir"
        path.mkdir()
        (path / ("nano_tokenizer.json" if flag == "--tokenizer" else "manifest.json")).write_bytes(data)
    if victim:
        shutil.rmtree(given_dir)
        path = crafted_checkpoint(world, here, victim, data)
    command = {"train": "torch-train"}.get(command, command)
    main, argv = base_argv(command, world, here)
    if flag in argv:  # replace the good value
        i = argv.index(flag)
        argv = argv[:i + 1] + [path] + argv[i + 2:]
    else:
        argv = [*argv, flag, path]
        if flag in ("--wikitext2", "--hellaswag"):
            argv[argv.index("--tasks") + 1] = flag[2:]
        if flag == "--resume":
            argv = [*argv, "--max-steps", "2"]
    names = [path, path.parent if victim else path, flag]  # a crafted checkpoint: its directory is what is named
    check_refused(main, argv, names, here, may_leave=TRAIN_START_LEAVES if command.endswith("train") else ())


@QUICK
@given(case=FILE_CASES)
def test_random_bytes_for_every_file_argument_are_one_line_naming_it_and_leave_nothing(world, tmp_path, case):
    check_file(world, fresh(tmp_path), case)


@pytest.mark.slow
@MANY
@given(case=FILE_CASES)
def test_many_random_files(world, tmp_path, case):
    check_file(world, fresh(tmp_path), case)


# -- the real entry points say the same ----------------------------------------------------------------------------
@pytest.mark.parametrize("module,flag,value", [
    ("nano_core.prepare", "--val-tokens", "nan"), ("tokenizer.train", "--vocab-size", "-5"),
    ("nano_torch.train", "--batch-size", "0"), ("nano_mlx.generate", "--top-p", "inf"),
    ("nano_torch.eval", "--limit", "0"), ("nano_core.export", "--ckpt", "BINARY"),
    ("nano_core.fuse", "--ckpt", "BINARY")])
def test_the_entry_points_refuse_in_one_line_as_main_does(world, tmp_path, module, flag, value):
    command = {"nano_core.prepare": "prepare", "tokenizer.train": "tokenizer", "nano_torch.train": "torch-train",
               "nano_mlx.generate": "generate", "nano_torch.eval": "eval", "nano_core.export": "export",
               "nano_core.fuse": "fuse"}[module]
    _, argv = base_argv(command, world, tmp_path)
    if value == "BINARY":
        value = crafted_checkpoint(world, tmp_path, "model.safetensors", b"\0" * 64)
        argv = argv[2:]
    before = tree(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", module, *map(str, argv), flag, str(value)], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode != 0
    line = error_line(r.stderr)
    assert flag in line or str(value) in line, line
    assert tree(tmp_path) == before
