"""A file blob's name is a plain file name however the blob was built: constructed, or unpickled
from bytes a worker (or anyone on the way) sent back. publish_round writes ``workdir / blob.name``."""

from __future__ import annotations

import pickle
import pickletools

import pytest

from autopipe.transfer import FileBlob

BAD_NAMES = ["../escape", "/etc/passwd", "sub/dir.yaml", "..", ".", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_blob_with_a_path_for_a_name_cannot_be_constructed(name):
    good = FileBlob.of(b"x", "x")
    with pytest.raises(ValueError, match="plain file name"):
        FileBlob(name, good.sha256, good.size, good.data)
    with pytest.raises(ValueError, match="plain file name"):
        FileBlob.of(b"x", name)


def _crafted(blob: FileBlob, name: str) -> bytes:
    """``blob`` pickled by the standard machinery, its name swapped for ``name`` in the bytes
    (what a hostile or broken worker could return: no constructor runs on the steering side)."""
    raw = pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"potential.yace" in raw
    raw = raw.replace(pickle.SHORT_BINUNICODE + bytes([len("potential.yace")]) + b"potential.yace",
                      pickle.BINUNICODE + len(name.encode()).to_bytes(4, "little") + name.encode())
    pickletools.dis(raw, out=open("/dev/null", "w"))  # still a well-formed pickle
    return raw


@pytest.mark.parametrize("name", ["../../escape.yace", "/tmp/owned.yace"])
def test_an_unpickled_blob_with_a_crafted_name_is_refused(tmp_path, name):
    blob = FileBlob.of(b"elements: [Ar]\n", "potential.yace")
    assert pickle.loads(pickle.dumps(blob)) == blob  # the honest round trip still works
    with pytest.raises(ValueError, match="plain file name"):
        pickle.loads(_crafted(blob, name))


def test_an_unpickled_blob_never_writes_outside_the_directory(tmp_path):
    """What publish_round does with a returned blob, on a crafted one: nothing lands outside."""
    blob = FileBlob.of(b"owned\n", "potential.yace")
    workdir = tmp_path / "train" / "v0002"
    try:
        crafted = pickle.loads(_crafted(blob, "../../outside.yace"))
        crafted.write(workdir / crafted.name)
    except ValueError:
        pass
    assert not (tmp_path / "outside.yace").exists()
