"""Atomic writes: the mode a new file gets, from many threads at once; names that stay in their folder."""

from __future__ import annotations

import os
import stat
import sys
import threading

import pytest

from deploytool.errors import DeployError
from deploytool.runtime.fileio import inside, write_bytes_atomic


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


def test_many_threads_writing_at_once_leave_the_umask_and_every_mode_as_expected(tmp_path, umask_027):
    # switch threads as often as the interpreter can, so that any window between two umask
    # calls in one thread is entered by another
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    barrier = threading.Barrier(16)

    def writer(index: int) -> None:
        barrier.wait()
        for n in range(500):
            write_bytes_atomic(tmp_path / f"{index}-{n}.bin", b"x")

    try:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert os.umask(umask_027) == umask_027
    modes = {stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert len(list(tmp_path.iterdir())) == 16 * 500
    assert modes == {0o666 & ~umask_027}


def test_an_atomic_write_gets_the_mode_of_any_new_file(tmp_path, umask_027):
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("name", ["..", ".", "", "../victim", "./../victim", "a/b", "/", "/etc/passwd", "a\0b", "x" * 300])
def test_a_name_that_would_leave_its_folder_is_refused_in_one_line(tmp_path, name):
    with pytest.raises(DeployError) as caught:
        inside(tmp_path / "repo", name, "model id")
    message = str(caught.value)
    assert message.startswith("model id ") and "\n" not in message and "\0" not in message and len(message) < 400


@pytest.mark.parametrize("name", ["hat-x4", "hat-x4-tiles", "model.sm90-trt10.13.0.engine", "a..b", "x" * 255])
def test_a_plain_name_is_an_entry_of_its_folder(tmp_path, name):
    assert inside(tmp_path, name) == tmp_path / name


def test_an_output_that_cannot_be_written_is_refused_in_one_line_leaving_nothing(tmp_path):
    from deploytool.runtime.fileio import atomic_path

    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(DeployError, match=r"^cannot create the output folder .*a-file: (File exists|Not a directory)$"):
        write_bytes_atomic(blocker / "out.jpg", b"x")
    folder = tmp_path / "a-folder"
    (folder / "out.jpg").mkdir(parents=True)  # a folder where the file would go
    with pytest.raises(DeployError, match=r"^cannot write .*out\.jpg: Is a directory$"):
        with atomic_path(folder / "out.jpg") as temporary:
            temporary.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a-file", "a-folder", "out.jpg"]  # no temporary left
