"""nano_io.sources on the real files in ../shared/data: encodings, formats, errors, splitting."""
import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nano_io.sources import BLANK_LINES, Source, hub_reachable, open_sources
from nano_io.text import decode_bytes, read_text


def docs_of(specs, **kw):
    return [d for s in open_sources(specs, **kw) for d in s.documents()]


def fineweb_rows(shared_data, n=None):
    lines = (shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


@pytest.mark.full_data("the three whole cp1252 Gutenberg novels")
def test_latin1_gutenberg_novels_decode_as_cp1252_with_a_notice(shared_data, capsys):
    for name in ["141.txt", "471-0.txt", "6944-0.txt"]:
        raw = (shared_data / "gutenberg" / name).read_bytes()
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        text = read_text(shared_data / "gutenberg" / name)
        assert "\r" not in text and len(text) > 100_000
        assert "notice" in capsys.readouterr().err
    # 141.txt (Mansfield Park) has accented letters that cp1252 maps to real characters, not replacement marks.
    text = read_text(shared_data / "gutenberg" / "141.txt")
    assert "\ufffd" not in text and any(ord(c) > 127 for c in text)


def test_bom_and_crlf_are_removed_from_utf8_gutenberg_files(shared_data):
    bom_files = [p for p in sorted((shared_data / "gutenberg").glob("*.txt"))
                 if p.read_bytes()[:3] == b"\xef\xbb\xbf"]
    assert bom_files, "expected some BOM files in the shared Gutenberg set"
    for p in bom_files[:3]:
        assert b"\r\n" in p.read_bytes()
        text = read_text(p)
        assert not text.startswith("\ufeff") and "\r" not in text
        assert text == p.read_bytes()[3:].decode("utf-8").replace("\r\n", "\n")


def test_decode_never_fails_on_cp1252_undefined_bytes():
    assert decode_bytes(b"caf\xe9 \x81\x9d ok", notice=False) == "café \x81\x9d ok"


@pytest.mark.full_data("all 281 FineWeb-Edu documents in both forms")
def test_txt_one_document_per_file_or_split_on_blank_lines(shared_data):
    path = shared_data / "fineweb_edu" / "sample-10BT-281docs.txt"
    assert len(docs_of([path])) == 1
    docs = docs_of([path], doc_separator=BLANK_LINES)
    assert len(docs) == 281
    assert docs == [r["text"] for r in fineweb_rows(shared_data)]  # the same documents as the jsonl file


@pytest.mark.full_data("all 64 Gutenberg novels")
def test_directory_source_reads_every_novel(shared_data):
    (src,) = open_sources([shared_data / "gutenberg"])
    assert len(src.items) == 64 and src.kind == "txt"


def test_jsonl_and_parquet_in_fineweb_schema(shared_data, tmp_path):
    rows = fineweb_rows(shared_data, 40)
    jsonl = tmp_path / "part.jsonl"
    jsonl.write_text("".join(json.dumps({"text": r["text"], "id": i, "score": 3.1}) + "\n"
                             for i, r in enumerate(rows)), encoding="utf-8")
    parquet = tmp_path / "part.parquet"
    pq.write_table(pa.table({"id": list(range(40)), "text": [r["text"] for r in rows]}), parquet, row_group_size=7)
    expect = [r["text"] for r in rows]
    assert docs_of([jsonl]) == expect
    assert docs_of([parquet]) == expect
    assert docs_of([parquet], max_docs=5) == expect[:5]
    # a directory with both kinds -> one source per kind
    assert sorted(s.kind for s in open_sources([tmp_path])) == ["jsonl", "parquet"]


def test_missing_text_column_is_a_one_line_error_naming_the_file(shared_data, tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps({"content": "hello"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: no 'text' field") as e:
        docs_of([jsonl])
    assert "\n" not in str(e.value)
    parquet = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"content": ["hello"]}), parquet)
    with pytest.raises(ValueError, match=r"bad\.parquet: no 'text' column \(columns: content\)"):
        docs_of([parquet])


def test_empty_and_missing_and_unreadable_sources_fail_with_one_line_errors(tmp_path, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt: empty file"):
        open_sources([empty])
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(ValueError, match="blank.jsonl: no documents"):
        docs_of([blank])
    with pytest.raises(FileNotFoundError, match="nope.txt: no such file"):
        open_sources([tmp_path / "nope.txt"])
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ValueError, match="no .txt, .jsonl or .parquet files"):
        open_sources([tmp_path / "emptydir"])
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(ValueError, match="cannot read .*corrupt.parquet as parquet"):
        docs_of([corrupt])
    # Permission denied (root can read anything, so simulate the OS refusing the read).
    locked = tmp_path / "locked.txt"
    locked.write_text("secret")
    real_read_bytes = type(locked).read_bytes

    def deny(self):
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)
    monkeypatch.setattr(type(locked), "read_bytes", deny)
    with pytest.raises(ValueError, match="cannot read .*locked.txt: Permission denied"):
        docs_of([locked])


def test_builtin_source_is_cpython_documentation():
    docs = docs_of(["builtin"])
    assert 70 <= len(docs) <= 90
    assert 400_000 < sum(map(len, docs)) < 600_000


@pytest.mark.parametrize("spec", ["gutenberg", "fineweb_edu/sample-10BT-281docs.jsonl", "builtin"])
def test_split_parts_are_disjoint_picklable_and_cover_all_documents(shared_data, spec):
    (src,) = open_sources([spec if spec == "builtin" else shared_data / spec])
    if spec == "gutenberg":  # keep it quick: 6 novels
        src = Source(src.name, src.kind, src.items[:6])
    everything = list(src.documents())
    for n in (2, 3):
        parts = [pickle.loads(pickle.dumps(p)) for p in src.split(n)]
        got = [list(p.documents()) for p in parts]
        assert all(got), "every part gets some documents"
        assert sorted(d for g in got for d in g) == sorted(everything)
        assert sum(map(len, got)) == len(everything)
    # nested splits still cover everything once
    nested = [d for p in src.split(2) for q in p.split(2) for d in q.documents()]
    assert sorted(nested) == sorted(everything)


def test_hub_helpers_are_offline_safe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable(timeout=0.5) is False
    (src,) = open_sources(["fineweb-edu:sample-10BT"], max_docs=3)
    assert src.kind == "hub" and src.items == ("sample-10BT",)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises((ConnectionError, ValueError)) as e:
        next(src.documents())
    assert "\n" not in str(e.value) and "fineweb-edu" in str(e.value)


def test_sources_module_imports_no_backend():
    import subprocess
    import sys
    code = "import sys, nano_io.sources; print('torch' in sys.modules or 'mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
