"""The artifact dataset's contents, shared by the SDK writer script and the tests."""

FILES = {
    ("data", 0): {"a.txt": b"alpha\n", "nested/deep/b.bin": bytes(range(256)) * 40, "empty.txt": b""},
    ("data", 1): {"a.txt": b"alpha\n", "nested/deep/b.bin": bytes(range(255, -1, -1)) * 40,
                  "c/notes.md": "# ünïcode\n".encode()},
    ("data", 2): {"a.txt": b"alpha v2\n", "empty.txt": b""},
    ("model", 0): {"weights.bin": b"\x00\x01" * 5000},
}
DESCRIPTIONS = {("data", 0): "first cut", ("data", 1): "second cut", ("model", 0): "the model"}
METADATA = {("data", 0): {"rows": 2, "nested": {"k": [1, 2]}}, ("data", 2): {"rows": 3}}
