"""Files by value, the worker's cache keyed by checksum, the scratch directory, size bounds."""

from __future__ import annotations

import os

import pytest

from autopipe.errors import AutopipeError
from autopipe.transfer import MB, FileBlob, FileSet, PayloadTooLarge, Scratch, check_size


def test_blob_round_trip_and_damage_is_caught(tmp_path):
    src = tmp_path / "potential.yaml"
    src.write_bytes(b"elements: [Ar]\n" * 1000)
    blob = FileBlob.read(src)
    assert blob.size == src.stat().st_size and len(blob.data) < blob.size  # compressed in transit
    out = blob.write(tmp_path / "copy" / "p.yaml")
    assert out.read_bytes() == src.read_bytes()
    damaged = FileBlob(blob.name, blob.sha256, blob.size, FileBlob.of(b"x" * blob.size, "x").data)
    with pytest.raises(ValueError, match="does not match its sha256"):
        damaged.content()
    with pytest.raises(ValueError, match="plain file name"):
        FileBlob.of(b"", "../escape")


def test_file_set_key_changes_with_content(tmp_path):
    a, b = tmp_path / "Si.UPF", tmp_path / "O.UPF"
    a.write_text("si"), b.write_text("o")
    one = FileSet.read({"Si": a, "O": b})
    a.write_text("si, other")
    os.utime(a, ns=(1, 1))
    assert FileSet.read({"Si": a, "O": b}).key != one.key


def test_scratch_expands_on_the_worker_and_names_an_unset_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AP_SCRATCH_TEST", str(tmp_path))
    s = Scratch("$AP_SCRATCH_TEST/run-1", "dft/s000003")
    assert s.path() == tmp_path / "run-1" / "dft" / "s000003" and s.path().is_dir()
    assert s.cache() == tmp_path / "run-1" / "cache"
    monkeypatch.delenv("AP_SCRATCH_TEST")
    with pytest.raises(AutopipeError, match="AP_SCRATCH_TEST.*an environment variable in it is not set on worker"):
        s.path()


def test_size_bound_is_a_clear_error():
    assert check_size(b"x" * 1000, MB, "small") > 1000
    too_big = r"the arguments of task 7 \(train\) is 2\.0 MB pickled, above the 1\.0 MB bound"
    with pytest.raises(PayloadTooLarge, match=too_big):
        check_size(b"x" * (2 * MB), MB, "the arguments of task 7 (train)")


def test_layout_puts_each_run_in_its_own_directory_on_a_worker(tmp_path):
    from autopipe.layout import RunLayout

    layout = RunLayout(tmp_path / "work")
    assert layout.on_worker(None, "r") == str((tmp_path / "work").resolve())
    one, other = layout.on_worker("$PSCRATCH/ap/", "r"), RunLayout(tmp_path / "w2").on_worker("$PSCRATCH/ap", "r")
    assert one.startswith("$PSCRATCH/ap/r-") and one != other
    assert layout.relative(layout.dft_dir(12)) == "dft/s000012"
