"""studies.files: the atomic writer, JSON records with named errors, and directory locks."""
import errno
import json
import multiprocessing as mp
import os
import signal
import stat
import time

import pytest

from studies import files
from studies.errors import DataError, LockedError


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        for i, write in enumerate((lambda p: files.write_text_atomic(p, "x"), lambda p: files.write_json_atomic(p, {}),
                                   lambda p: files.torch_save_atomic({"a": 1}, p))):
            path = tmp_path / f"f{i}"
            write(path)
            assert stat.S_IMODE(path.stat().st_mode) == mode, path
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.json"
    files.write_json_atomic(path, {"v": 1})

    def boom(fh):
        fh.write(b"{partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        files.atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]

    def full(fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        files.atomic_write(path, full)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)  # the error names the target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError) as err:  # a folder that cannot be created
        files.write_text_atomic(tmp_path / "a-file" / "x.txt", "y")
    assert "a-file" in err.value.filename


def test_an_interrupt_mid_write_stays_an_interrupt(tmp_path):
    """Ctrl-C or SIGTERM (a KeyboardInterrupt) inside torch.save makes its zip writer raise a RuntimeError
    over it; the writer gives the interrupt back, so the CLI exits 130/143 instead of recording a failed run."""
    path = tmp_path / "checkpoint.pt"
    files.torch_save_atomic({"v": 1}, path)

    def interrupted(fh):
        try:
            fh.write(b"PK partial")
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, interrupted)
    import torch

    assert torch.load(path, weights_only=True) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_corrupt_json_names_the_file(tmp_path):
    bad = tmp_path / "summary.json"
    bad.write_text('{"status": "fin')
    with pytest.raises(DataError, match=rf"^{bad}: not valid JSON \(line 1, column"):
        files.read_json(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match=rf"^{bad}: not a UTF-8 text file"):
        files.read_json(bad)
    with pytest.raises(FileNotFoundError):
        files.read_json(tmp_path / "missing.json")


def test_jsonl_tolerates_only_a_torn_last_line(tmp_path):
    log = tmp_path / "steps.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert files.read_jsonl(log) == [{"step": 1}, {"step": 2}]
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DataError, match=rf"^{log}: line 2 is not valid JSON"):
        files.read_jsonl(log)
    files.append_jsonl(tmp_path / "new.jsonl", {"a": float("inf")})
    assert files.read_jsonl(tmp_path / "new.jsonl") == [{"a": float("inf")}]
    files.rewrite_jsonl(tmp_path / "new.jsonl", lambda r: False)
    assert files.read_jsonl(tmp_path / "new.jsonl") == []


def _hold(folder, ready):
    with files.DirLock(folder, "run directory"):
        ready.set()
        time.sleep(60)


def test_lock_names_the_holder_and_dies_with_it(tmp_path):
    with files.DirLock(tmp_path, "run directory"):
        with files.DirLock(tmp_path):  # the same process may take it again
            pass
        assert (tmp_path / files.LOCK_FILE).read_text().strip() == str(os.getpid())
    assert (tmp_path / files.LOCK_FILE).read_text() == ""  # released

    ctx = mp.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockedError, match=rf"process {holder.pid} is writing this run directory"):
            files.DirLock(tmp_path, "run directory").acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel releases the lock
        holder.join()
    with files.DirLock(tmp_path):
        assert (tmp_path / files.LOCK_FILE).read_text().strip() == str(os.getpid())
