"""nano's bottom layer: what every other package needs and none of it is about tokenizing or training.

files    atomic file writes, fsync that reaches the drive (F_FULLFSYNC on macOS), the user's umask
dirs     the one atomic directory publisher (checkpoints, exports, a prepared tokenizer dir)
text     reading raw text: encoding policy, the binary-file test, one-line notices
sources  text sources: files, directories, jsonl/parquet, builtin, the fineweb-edu hub stream
pool     worker pools that leave Ctrl-C to the main process

It imports no other nano package (tests/test_layout.py checks it).
"""
