"""Reading raw text: the encoding policy, the binary-file test, and the one-line notices every reader prints.

Encoding policy for text and jsonl files (real-world files are messy; the three Latin-1 Gutenberg novels are why):
  a UTF-8 BOM is stripped; strict UTF-8 is tried first; if that fails the file is decoded as cp1252 (Windows
  Latin-1, the usual culprit), and bytes cp1252 leaves undefined fall back to latin-1 - with a one-line notice on
  stderr. This never raises. CRLF and lone CR line endings are normalised to LF.

Binary files (a file is "binary" when its first 8 KiB hold a NUL byte, or when more than 30% of its first 64 KiB
is control bytes or invalid UTF-8 - UTF-16 text counts as binary: save it as UTF-8): `read_text` refuses one in a
one-line ValueError naming it; nano_io.sources decides when a file inside a directory is skipped instead.
NUL characters inside an otherwise textual document are removed by `NulStrip`, with one notice per file counting
them and naming the first line/row: NUL is never text, and a tokenizer would learn it as an ordinary byte.

Notices go to stderr through `notice()`. Tokenizer-training workers collect theirs and send them back
(`collect_notices`), and `notices_once()` (nano_core.prepare wraps a whole run in it) prints each one once,
however many processes or passes read the same file.
"""
from __future__ import annotations

import codecs
import contextlib
import sys
from pathlib import Path

from tqdm import tqdm

NUL_SNIFF_BYTES = 8192              # a NUL byte in this much of the start of a file: binary
SNIFF_BYTES = 1 << 16               # the share of control bytes / invalid UTF-8 is measured on this much
BINARY_SHARE = 0.30                 # ... and above this share the file is binary
# C0 control bytes that never occur in text (tab, LF, VT, FF, CR and ESC do), and DEL
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 27), *range(28, 32), 127])


# ----------------------------------------------------------------------------------------------------------------
# notices: one line on stderr each, printed once per notices_once() scope, collected in worker processes

_seen: set | None = None    # keys already printed in the current notices_once() scope (None: no scope, print all)
_sink: list | None = None   # set inside collect_notices(): notices are appended here instead of printed


def notice(key, message: str) -> None:
    """Print `notice: message` to stderr (or hand it to the collector of this process); `key` identifies it for
    notices_once() (e.g. ("nul", path)), so a file read twice in one run is reported once."""
    if _sink is not None:
        _sink.append((key, message))
        return
    if _seen is not None:
        if key in _seen:
            return
        _seen.add(key)
    tqdm.write(f"notice: {message}", file=sys.stderr)  # print() would land in the middle of a progress bar
    sys.stderr.flush()


_notice = notice  # for decode_bytes, whose `notice` parameter shadows the function


@contextlib.contextmanager
def notices_once():
    """Within this block each notice key is printed at most once (nested blocks share the outer scope)."""
    global _seen
    outer = _seen
    if outer is None:
        _seen = set()
    try:
        yield
    finally:
        if outer is None:
            _seen = None


@contextlib.contextmanager
def collect_notices():
    """Collect this process's notices into the yielded list instead of printing them (worker processes)."""
    global _sink
    outer, _sink = _sink, []
    try:
        yield _sink
    finally:
        _sink = outer


def binary_reason(head: bytes) -> str | None:
    """Why the start of a file (its first SNIFF_BYTES bytes) is not text, or None when it looks like text."""
    nul = head[:NUL_SNIFF_BYTES].count(0)
    if nul:
        utf16 = head[:2] in (b"\xff\xfe", b"\xfe\xff") or nul > len(head[:NUL_SNIFF_BYTES]) // 4
        return "NUL bytes in its first 8 KiB" + ("; if it is UTF-16 text, save it as UTF-8" if utf16 else "")
    if not head:
        return None
    control = len(head) - len(head.translate(None, _CONTROL_BYTES))
    try:
        head.decode("utf-8")
        invalid = 0
    except UnicodeDecodeError:  # count invalid sequences (a character cut at the end of `head` costs 1-3)
        invalid = head.decode("utf-8", errors="replace").count("\ufffd") - head.count("\ufffd".encode())
    share = (control + invalid) / len(head)
    if share > BINARY_SHARE:
        return f"{share:.0%} of its first {max(1, len(head) // 1024)} KiB is control bytes or invalid UTF-8"
    return None


def sniff(path) -> str | None:
    """binary_reason() of the start of the file at `path`."""
    with open(path, "rb") as f:
        return binary_reason(f.read(SNIFF_BYTES))


def not_text_error(path, reason: str) -> ValueError:
    """The one-line error for a file that is not text (`reason`: what binary_reason found)."""
    return ValueError(f"{path} is not a text file ({reason}); give UTF-8 or cp1252 text, .jsonl or .parquet")


class NulStrip:
    """Removes NUL characters from the documents of one file and reports them once, when the file is done."""

    def __init__(self, path):
        self.path, self.chars, self.docs, self.first = path, 0, 0, None

    def __call__(self, text: str, where) -> str:
        if "\0" not in text:
            return text
        self.chars += text.count("\0")
        self.docs += 1
        self.first = self.first or where
        return text.replace("\0", "")

    def report(self):
        if self.chars:
            notice(("nul", str(self.path)), f"{self.path}: removed {self.chars:,} NUL character"
                   f"{'s' * (self.chars != 1)} from {self.docs:,} document{'s' * (self.docs != 1)} (first at "
                   f"{self.first}); NUL is not text")


# ----------------------------------------------------------------------------------------------------------------
# decoding

def decode_bytes(data: bytes, name: str = "<bytes>", notice: bool = True) -> str:
    """Bytes -> str by the policy above (BOM stripped, UTF-8 then cp1252/latin-1, line endings -> LF)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if notice:
            _notice(("cp1252", name), f"{name} is not valid UTF-8 (byte {e.start}); decoding it as cp1252")
        # cp1252 leaves 5 bytes undefined (0x81 0x8d 0x8f 0x90 0x9d); map those like latin-1 so this never fails.
        text = data.decode("cp1252", errors="latin1_fallback")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _latin1_fallback(err: UnicodeDecodeError):
    return err.object[err.start:err.end].decode("latin-1"), err.end


codecs.register_error("latin1_fallback", _latin1_fallback)


def read_text(path: str | Path) -> str:
    """Read one text file by the encoding policy; unreadable and binary files are a one-line error naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    reason = binary_reason(data[:SNIFF_BYTES])
    if reason is not None:
        raise not_text_error(path, reason)
    return decode_bytes(data, str(path))
