"""While Tether moves bytes, the interpreter's switch interval is 0.5 ms, then the
program's again (tether/_store/handoffs.py; the speed it buys is measured by
bench/bench_busy.py, not here)."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether._store import chunkstore, handoffs
from tether._store.handoffs import prompt_handoffs


@pytest.fixture(autouse=True)
def programs_interval(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The program's interval is 5 ms, and it has a thread of its own (waiting)."""
    monkeypatch.delenv("TETHER_SWITCH_INTERVAL", raising=False)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    done = threading.Event()
    programs = threading.Thread(target=done.wait, name="the-programs-own")
    programs.start()
    yield
    done.set()
    programs.join()
    sys.setswitchinterval(before)


def test_a_program_without_threads_of_its_own_keeps_its_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    me = threading.current_thread()
    tethers = threading.Thread(target=lambda: None, name="tether-cut_0")
    others = threading.Thread(target=lambda: None, name="the-programs-own")
    monkeypatch.setattr(threading, "enumerate", lambda: [me, tethers])
    assert not handoffs._program_threads()
    with prompt_handoffs():
        assert sys.getswitchinterval() == pytest.approx(0.005)
    monkeypatch.setattr(threading, "enumerate", lambda: [me, tethers, others])
    assert handoffs._program_threads()
    with prompt_handoffs():
        assert sys.getswitchinterval() == pytest.approx(handoffs.DEFAULT)


def test_lowered_for_the_duration_and_put_back() -> None:
    with prompt_handoffs():
        assert sys.getswitchinterval() == pytest.approx(handoffs.DEFAULT)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_put_back_after_a_failure_too() -> None:
    with pytest.raises(RuntimeError), prompt_handoffs():
        raise RuntimeError("the transfer failed")
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_never_raised() -> None:
    sys.setswitchinterval(0.0001)
    with prompt_handoffs():
        assert sys.getswitchinterval() == pytest.approx(0.0001)
    assert sys.getswitchinterval() == pytest.approx(0.0001)


def test_the_environment_sets_it_or_leaves_the_interpreter_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_SWITCH_INTERVAL", "0.001")
    with prompt_handoffs():
        assert sys.getswitchinterval() == pytest.approx(0.001)
    monkeypatch.setenv("TETHER_SWITCH_INTERVAL", "0")
    with prompt_handoffs():
        assert sys.getswitchinterval() == pytest.approx(0.005)
    monkeypatch.setenv("TETHER_SWITCH_INTERVAL", "fast please")  # a typo: the default
    with prompt_handoffs():
        assert sys.getswitchinterval() == pytest.approx(handoffs.DEFAULT)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_overlapping_transfers_put_it_back_when_the_last_one_ends() -> None:
    first_in, first_may_leave = threading.Event(), threading.Event()
    seen: list[float] = []

    def first() -> None:
        with prompt_handoffs():
            first_in.set()
            first_may_leave.wait(10)
            seen.append(sys.getswitchinterval())

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with prompt_handoffs():
        pass  # the second transfer ends while the first still runs
    assert sys.getswitchinterval() == pytest.approx(handoffs.DEFAULT)
    first_may_leave.set()
    thread.join(10)
    assert seen == [pytest.approx(handoffs.DEFAULT)]
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_change_the_program_made_meanwhile_is_kept() -> None:
    with prompt_handoffs():
        sys.setswitchinterval(0.002)
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_log_and_load_run_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, float] = {}
    ingest, materialize = chunkstore.ChunkStore.ingest, chunkstore.ChunkStore.materialize

    def watched_ingest(self: chunkstore.ChunkStore, *args: object, **kwargs: object) -> object:
        seen["ingest"] = sys.getswitchinterval()
        return ingest(self, *args, **kwargs)  # type: ignore[arg-type]

    def watched_materialize(self: chunkstore.ChunkStore, *args: object,
                            **kwargs: object) -> object:
        seen["materialize"] = sys.getswitchinterval()
        return materialize(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chunkstore.ChunkStore, "ingest", watched_ingest)
    monkeypatch.setattr(chunkstore.ChunkStore, "materialize", watched_materialize)
    reg = tether.init(tmp_path / "reg")
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)
    reg.log_model(str(model), "m", progress=False)
    reg.download("m", tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "model.bin").read_bytes() == model.read_bytes()
    assert seen == {"ingest": pytest.approx(handoffs.DEFAULT),
                    "materialize": pytest.approx(handoffs.DEFAULT)}
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_ctrl_c_while_counting_out_still_puts_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the last transfer waits for the lock to count itself out: the wait
    is taken again, the interval put back, then the interrupt raised."""
    real = handoffs._lock

    class Interrupted:
        interrupts = 1

        def __enter__(self) -> None:
            real.acquire()

        def __exit__(self, *exc: object) -> None:
            real.release()

        def acquire(self) -> bool:
            if self.interrupts:
                self.interrupts -= 1
                raise KeyboardInterrupt
            return real.acquire()

        def release(self) -> None:
            real.release()

    monkeypatch.setattr(handoffs, "_lock", Interrupted())
    with pytest.raises(KeyboardInterrupt), prompt_handoffs():
        assert sys.getswitchinterval() == pytest.approx(handoffs.DEFAULT)
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert handoffs._users == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_during_a_transfer_gets_the_programs_interval_back() -> None:
    read, write = os.pipe()
    with prompt_handoffs():
        pid = os.fork()
        if pid == 0:  # the child: no thread of its own counts the parent's transfer out
            try:
                seen = [sys.getswitchinterval(), float(handoffs._users)]
                with prompt_handoffs():
                    pass
                seen.append(sys.getswitchinterval())
                os.write(write, json.dumps(seen).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
    assert child == [pytest.approx(0.005), 0.0, pytest.approx(0.005)]


def test_the_store_lowers_it_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Datasets, verify and the CLI reach the store without log_model's or load's
    wrapper: ingest, materialize and verify lower it themselves."""
    from tether._store import ingest

    seen: dict[str, float] = {}
    real_ingest = ingest._ingest

    def watched_ingest(*args: Any, **kwargs: Any) -> Any:
        seen["_ingest"] = sys.getswitchinterval()
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(ingest, "_ingest", watched_ingest)
    for name in ("_materialize_file", "_verify_store", "_verify"):
        real = getattr(chunkstore.ChunkStore, name)

        def watched(self: chunkstore.ChunkStore, *args: object, _real: Any = real,
                    _name: str = name, **kwargs: object) -> object:
            seen[_name] = sys.getswitchinterval()
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(chunkstore.ChunkStore, name, watched)
    store = tether.init(tmp_path / "reg").store
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.bin").write_bytes(b"rows" * 5000)
    report = store.ingest(tmp_path / "in", ["data.bin"])
    store.materialize(report.files, tmp_path / "out", label="data")
    assert store.verify(report.files, label="data") == []
    assert store.verify(report.files, label="data", source="any") == []
    assert seen == {name: pytest.approx(handoffs.DEFAULT) for name in
                    ("_ingest", "_materialize_file", "_verify_store", "_verify")}
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_streamed_file_fetches_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``open_file`` reads in the caller's thread, often a training loop's: each fetch of
    chunks runs with the lowered interval, the caller's code between reads does not."""
    seen: list[float] = []
    real = chunkstore.ChunkStore._read_run

    def watched(self: chunkstore.ChunkStore, *args: Any, **kwargs: Any) -> Any:
        seen.append(sys.getswitchinterval())
        return real(self, *args, **kwargs)

    reg = tether.init(tmp_path / "reg")
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(300_000))
    reg.log_model(str(model), "m", progress=False)
    monkeypatch.setattr(chunkstore.ChunkStore, "_read_run", watched)
    with reg.open_file("m", "model.bin") as handle:
        assert handle.read_range(1000, 2000) == model.read_bytes()[1000:2000]
        assert sys.getswitchinterval() == pytest.approx(0.005)  # between reads: the program's
        assert handle.read() == model.read_bytes()
    assert seen and all(s == pytest.approx(handoffs.DEFAULT) for s in seen)
    assert sys.getswitchinterval() == pytest.approx(0.005)
