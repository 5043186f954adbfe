"""Instruction data (nano_core/instruct_rows.py, instruct.py): template, loss mask, packing, split, resume, bad rows.

Rows are built from real text: TinyShakespeare lines as prompt/completion pairs, and multi-turn messages rows from
consecutive lines; the tokenizer is a small nano BPE trained here on TinyShakespeare."""
import json

import numpy as np
import pytest

from nano_core.instruct import InstructLoader, split_rows
from nano_core.instruct_rows import TEMPLATE, encode_row, encode_rows, render
from tokenizer import BPETokenizer

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def lines(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def tok(lines):
    return BPETokenizer.train(["\n".join(lines[:8000])], vocab_size=512, progress=False, num_workers=1)


def pc_rows(lines, n, start=0):
    """prompt = a line, completion = the next one (the speaker's name lines make real short prompts)."""
    return [{"prompt": lines[start + 2 * i], "completion": lines[start + 2 * i + 1]} for i in range(n)]


def chat_rows(lines, n, start=5000):
    rows = []
    for i in range(n):
        a = lines[start + 5 * i:start + 5 * i + 5]
        rows.append({"messages": [{"role": "system", "content": "Answer in verse."},
                                  {"role": "user", "content": a[0]}, {"role": "assistant", "content": a[1]},
                                  {"role": "user", "content": a[2]}, {"role": "assistant", "content": a[3]},
                                  {"role": "user", "content": a[4]}]})  # a trailing user turn: dropped
    return rows


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- the template
def test_template_and_render(lines):
    p, c = lines[0], lines[1]
    assert render({"prompt": p, "completion": c}) == [(f"User: {p}\n\nAssistant:", False), (" " + c, True)]
    # the one template: a prompt/completion row is the messages row [user, assistant]
    assert render({"prompt": p, "completion": c}) == render(
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]})
    row = chat_rows(lines, 1)[0]
    m = [x["content"] for x in row["messages"]]
    assert render(row) == [(f"System: {m[0]}\n\nUser: {m[1]}\n\nAssistant:", False), (" " + m[2], True),
                           (f"User: {m[3]}\n\nAssistant:", False), (" " + m[4], True)]
    # content that starts with whitespace keeps it instead of gaining a space
    assert render({"prompt": "Q", "completion": "\nA"})[1] == ("\nA", True)
    assert "User: {user}" in TEMPLATE and "Assistant:" in TEMPLATE


# ----------------------------------------------------------------------------------------------- the mask
def test_mask_is_exactly_the_completion_and_its_eot(lines, tok, tmp_path):
    rows = pc_rows(lines, 200)
    enc = encode_rows(write_jsonl(tmp_path / "pc.jsonl", rows), tok, seq_len=256)
    assert len(enc) == len(rows)
    for row, (ids, mask) in zip(rows, enc):
        assert ids.dtype == np.int32 and mask.dtype == bool and mask.shape == (len(ids) - 1,)
        assert ids[0] == tok.eot_id and ids[-1] == tok.eot_id
        targets = ids[1:]
        assert tok.decode(targets[mask]) == " " + row["completion"] + EOT
        # prompt tokens (and the row's leading eot) are never trained targets; the prompt is a prefix of the mask
        assert tok.decode(ids[:1 + int(np.argmax(mask))]) == EOT + f"User: {row['prompt']}\n\nAssistant:"
        assert not mask[:int(np.argmax(mask))].any() and mask[int(np.argmax(mask)):].all()
        assert tok.decode(ids) == EOT + f"User: {row['prompt']}\n\nAssistant: {row['completion']}" + EOT


def test_multi_turn_mask_trains_each_assistant_turn_and_its_eot(lines, tok, tmp_path):
    rows = chat_rows(lines, 50)
    enc = encode_rows(write_jsonl(tmp_path / "chat.jsonl", rows), tok, seq_len=512)
    for row, (ids, mask) in zip(rows, enc):
        m = [x["content"] for x in row["messages"]]
        assert tok.decode(ids[1:][mask]) == f" {m[2]}{EOT} {m[4]}{EOT}"
        assert tok.decode(ids[1:][~mask]) == f"System: {m[0]}\n\nUser: {m[1]}\n\nAssistant:User: {m[3]}\n\nAssistant:"
        # the whole row; the trailing user turn (m[5]) teaches nothing: dropped
        assert tok.decode(ids) == (f"{EOT}System: {m[0]}\n\nUser: {m[1]}\n\nAssistant: {m[2]}{EOT}"
                                   f"User: {m[3]}\n\nAssistant: {m[4]}{EOT}")
        # each trained span ends with a trained eot, after which the context is untrained again
        trained_eots = [i for i in range(len(mask)) if mask[i] and ids[i + 1] == tok.eot_id]
        assert len(trained_eots) == 2 and trained_eots[-1] == len(mask) - 1


# ----------------------------------------------------------------------------------------------- packing
def split_window(ids, mask, eot):
    """Rows of a packed window: [(body ids, row mask)], checking the padding after the last row."""
    stops = np.flatnonzero(ids == eot)
    assert stops[0] == 0
    out, p = [], 0
    for q in stops[1:]:
        if q == p + 1:  # eot eot: padding from here on
            break
        out.append((tuple(ids[p + 1:q].tolist()), mask[p:q].astype(bool)))
        p = q
    assert (ids[p:] == eot).all() and not mask[p:].any()  # padding: eot ids, mask 0
    return out


def test_packing_never_splits_a_row_and_covers_each_train_row_once_per_epoch(lines, tok, tmp_path):
    T = 256
    path = write_jsonl(tmp_path / "pc.jsonl", pc_rows(lines, 300))
    loader = InstructLoader(path, tok, batch_size=1, seq_len=T, seed=3)
    by_body = {tuple(ids[1:-1].tolist()): mask for ids, mask in loader.rows}
    want = sorted(tuple(ids[1:-1].tolist()) for ids, _ in loader.rows)
    epochs = []
    for epoch in range(2):
        n = loader.windows_per_epoch
        assert n < len(loader.rows) // 4  # it packs: several rows per window, and few targets are padding
        assert loader.tokens - 1 > 0.8 * n * T
        seen = []
        for _ in range(n):
            ids, mask = loader.next_batch()
            assert ids.shape == (1, T + 1) and ids.dtype == np.int32
            assert mask.shape == (1, T) and mask.dtype == np.float32
            for body, m in split_window(ids[0], mask[0], tok.eot_id):
                assert body in by_body and np.array_equal(m, by_body[body])  # a whole row, with its own mask
                seen.append(body)
        assert sorted(seen) == want  # every train row exactly once
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert loader.epoch == 1


def test_pack_false_is_one_row_per_window(lines, tok, tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", pc_rows(lines, 40))
    loader = InstructLoader(path, tok, batch_size=4, seq_len=128, pack=False)
    assert loader.windows_per_epoch == len(loader.rows)
    for _ in range(loader.batches_per_epoch):
        ids, mask = loader.next_batch()
        for b in range(4):
            assert len(split_window(ids[b], mask[b], tok.eot_id)) == 1


# ----------------------------------------------------------------------------------------------- split, resume
def test_split_is_by_row_deterministic_and_independent_of_seed(lines, tok, tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", pc_rows(lines, 95))
    enc = encode_rows(path, tok, 128)
    tr = InstructLoader(enc, tok, 2, 128, "train", seed=1, val_frac=0.1)
    va = InstructLoader(enc, tok, 2, 128, "val", seed=7, val_frac=0.1)
    assert len(va.rows) == 10 and len(tr.rows) == 85  # ceil(95 * 0.1)
    assert set(tr.row_index).isdisjoint(va.row_index) and set(tr.row_index) | set(va.row_index) == set(range(95))
    assert np.array_equal(InstructLoader(path, tok, 2, 128, "val", seed=0).row_index, va.row_index)
    assert np.array_equal(split_rows(95, 0.1)[1], va.row_index)
    # val is in file order, the same every epoch
    first = [va.next_batch()[0] for _ in range(va.windows_per_epoch // 2 + 1)]
    va2 = InstructLoader(enc, tok, 2, 128, "val", seed=99)
    assert all(np.array_equal(a, va2.next_batch()[0]) for a in first)


def test_resume_gives_the_same_batches(lines, tok, tmp_path):
    path = write_jsonl(tmp_path / "mix.jsonl", pc_rows(lines, 120) + chat_rows(lines, 30))
    a = InstructLoader(path, tok, batch_size=3, seq_len=256, seed=5)
    steps = a.batches_per_epoch + 2  # past an epoch boundary
    for _ in range(steps - 3):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # it is what goes into meta.json
    rest = [a.next_batch() for _ in range(a.batches_per_epoch + 3)]
    b = InstructLoader(path, tok, batch_size=3, seq_len=256, seed=5)
    b.load_state_dict(state)
    for (i1, m1), (i2, m2) in zip(rest, [b.next_batch() for _ in range(len(rest))]):
        assert np.array_equal(i1, i2) and np.array_equal(m1, m2)
    for kwargs, what in [({"seed": 6}, "seed=5"), ({"seq_len": 160}, "seq_len=256")]:
        other = InstructLoader(path, tok, **{"batch_size": 3, "seq_len": 256, "seed": 5, **kwargs})
        with pytest.raises(ValueError, match=what):
            other.load_state_dict(state)
    write_jsonl(path, pc_rows(lines, 121) + chat_rows(lines, 30))
    with pytest.raises(ValueError, match="different rows"):
        InstructLoader(path, tok, batch_size=3, seq_len=256, seed=5).load_state_dict(state)


# ----------------------------------------------------------------------------------------------- bad rows
BAD = [
    ("not JSON", '{"prompt": "To be", "completion": ', "not JSON"),
    ("not an object", '["To be", "or not"]', "not an object"),
    ("missing completion", '{"prompt": "To be"}', 'no "completion"'),
    ("no fields", '{"text": "To be"}', 'neither "prompt"'),
    ("wrong type", '{"prompt": "To be", "completion": 3}', '"completion" must be a string'),
    ("content type", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null}]}',
     r"messages\[1\].content must be a string"),
    ("missing role", '{"messages": [{"content": "hi"}]}', r'messages\[0\] has no "role"'),
    ("unknown role", '{"messages": [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
     "role is 'narrator'; allowed: system, user, assistant"),
    ("no assistant", '{"messages": [{"role": "user", "content": "hi"}]}', "no message has role"),
    ("empty completion", '{"prompt": "To be", "completion": "  "}', '"completion" is empty'),
    ("not utf-8", b'{"prompt": "\xff", "completion": "x"}', "not UTF-8"),
    ("lone surrogate", '{"prompt": "To be", "completion": "\\ud800"}', "lone surrogate"),
    ("both kinds", '{"prompt": "a", "completion": "b", "messages": []}', 'both "messages" and "prompt"'),
    ("messages type", '{"messages": "hi"}', '"messages" must be a list, got str'),
    ("message type", '{"messages": ["hi"]}', r"messages\[0\] must be an object"),
]


@pytest.mark.parametrize("name,line,match", BAD, ids=[b[0] for b in BAD])
def test_each_bad_row_is_a_one_line_error_naming_file_and_line(lines, tok, tmp_path, name, line, match):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps(r).encode() for r in pc_rows(lines, 3)]
    path.write_bytes(b"\n".join(good[:2] + [line if isinstance(line, bytes) else line.encode()] + good[2:]) + b"\n")
    with pytest.raises(ValueError, match=f"^{path}:3: .*{match}") as e:
        encode_rows(path, tok, 128)
    assert "\n" not in str(e.value)


def test_a_row_longer_than_the_context_is_refused_or_skipped(lines, tok, tmp_path):
    long = {"prompt": lines[10], "completion": " ".join(lines[11:40])}
    path = write_jsonl(tmp_path / "long.jsonl", pc_rows(lines, 4) + [long])
    n = len(encode_row(long, tok)[0])
    with pytest.raises(ValueError, match=rf"^{path}:5: row is {n} tokens, longer than the context "
                                         r"\(seq_len \+ 1 = 65 tokens\)") as e:
        InstructLoader(path, tok, batch_size=2, seq_len=64, val_frac=0.2)
    assert "\n" not in str(e.value)
    notes = []
    loader = InstructLoader(path, tok, batch_size=2, seq_len=64, val_frac=0.2, skip_bad_rows=True, log=notes.append)
    assert notes == [f"notice: {path}: skipped 1 bad row of 5 (too long 1); first at line 5: row is {n} tokens, "
                     "longer than the context (seq_len + 1 = 65 tokens); shorten it, raise --seq-len, or pass "
                     "--skip-bad-rows"]
    assert len(loader.rows) == 3  # 4 good rows, 1 of them val
    # pre-encoded rows are checked against the context too
    with pytest.raises(ValueError, match="row 0: .* longer than the context"):
        InstructLoader([encode_row(long, tok)], tok, 1, 64, val_frac=0)


def test_skip_bad_rows_counts_them_in_one_notice(lines, tok, tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = [json.dumps(r).encode() for r in pc_rows(lines, 20)]
    bad = [b[1] if isinstance(b[1], bytes) else b[1].encode() for b in BAD]
    body = []
    for i, g in enumerate(good):
        body += [g] + ([bad[i]] if i < len(bad) else [])
    path.write_bytes(b"\n".join(body) + b"\n\n")  # a trailing blank line is not a row
    notes = []
    enc = encode_rows(path, tok, 128, skip_bad_rows=True, log=notes.append)
    assert len(enc) == 20 and len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith(f"notice: {path}: skipped {len(BAD)} bad rows of {20 + len(BAD)} (")
    assert "first at line 2: not JSON" in notes[0]
    assert [tok.decode(ids) for ids, _ in enc] == [
        tok.decode(encode_row(r, tok)[0]) for r in pc_rows(lines, 20)]


def test_file_level_errors(lines, tok, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=f"^{empty}: empty file"):
        encode_rows(empty, tok, 64)
    allbad = write_jsonl(tmp_path / "allbad.jsonl", ['{"prompt": "a"}', "nope"])
    with pytest.raises(ValueError, match=f"^{allbad}: no trainable rows: all 2 rows are bad"):
        InstructLoader(allbad, tok, 1, 64, skip_bad_rows=True, log=lambda s: None)
    one = write_jsonl(tmp_path / "one.jsonl", pc_rows(lines, 1))
    with pytest.raises(ValueError, match="val_frac=0.1 leaves no train rows of 1"):
        InstructLoader(one, tok, 1, 64)
    with pytest.raises(ValueError, match="val_frac=0 leaves no val rows"):
        InstructLoader(one, tok, 1, 64, split="val", val_frac=0)
    assert len(InstructLoader(one, tok, 1, 64, val_frac=0).rows) == 1  # train only: allowed
    with pytest.raises(ValueError, match=r"val_frac must be in \[0, 1\)"):
        InstructLoader(one, tok, 1, 64, val_frac=1.0)
