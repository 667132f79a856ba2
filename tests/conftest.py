"""Suite-wide configuration: the hypothesis profile (``tests/hypothesis_profiles.py``) and the
artifacts many test files read, built once per test run (``tiny_cpu_artifact``,
``tiny_ref_artifact``)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gc
import io
import os
from pathlib import Path

import pytest

from tests import hypothesis_profiles

PROFILE = hypothesis_profiles.load()


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis profile: {PROFILE} (HYPOTHESIS_PROFILE=ci|nightly)"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection made (imported modules, test modules, their parameters: alive for
    the whole run) out of the cycle collector's view (``gc.freeze()``), so that each full
    collection scans only what tests made since. Calibrated compiles collect once per segment
    (``llmc.passes.calibration.trim_heap``); in a worker's heap each scan cost ~0.2 s of CPU
    (docs/testing.md)."""
    gc.freeze()


@pytest.fixture(autouse=True, scope="module")
def _heap_frozen_per_file():
    """Each test file starts with the objects alive before it (imports, earlier files' session
    fixtures) out of the cycle collector's view: one full collection, then ``gc.freeze()``;
    ``gc.unfreeze()`` after the file, so what it made and dropped is collected later. Without
    it a worker's heap grows over the run and each calibrated pass's collections rescan it
    (``test_roofline``'s w8a8 case: 89 s late in a full run, 4 s alone; docs/testing.md)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves ``os.environ`` as it found it. Bench scripts run in-process
    (``tests/test_bench_scripts.py``, ``tests/test_cpu_prefill_gemm_bench.py``) set
    ``TVM_NUM_THREADS`` for their run; leaked, it changed which host record (keyed by threads)
    a later compile in the same worker read, so its report differed from the shared artifact's
    (``test_reproducible``, failed in a full run)."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        for k in [k for k in os.environ if k not in saved]:
            del os.environ[k]
        os.environ.update(saved)


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test run that every xdist worker sees (the workers' common temp root);
    without xdist, the session's temp root."""
    base = tmp_path_factory.getbasetemp()
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return base.parent / f"shared-{run}" if run else base / "shared"


def shared_compile(tmp_path_factory: pytest.TempPathFactory, name: str, *argv: str) -> Path:
    """``llmc compile ARGV -o <shared>/NAME``, run by the first worker that asks (the others
    wait on a file lock, then reuse it): one build per test run instead of one per test file and
    worker. The artifact is shared: a test that changes files copies it first."""
    from llmc.cli import main

    root = shared_dir(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)
    out = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():  # the compile writes the artifact atomically
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                rc = main(["compile", *argv, "-o", str(out)])
            assert rc == 0, err.getvalue()
    return out


def _copy_loaded(m):
    """A private copy of a ``LoadedModel``: the graph re-parsed, every param tensor cloned, the
    config deep-copied (the tokenizer, read-only, is shared)."""
    import copy

    import torch

    from llmc.ir.params import Param

    g = m.graph.copy()
    for name, p in g.params.items():
        data = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in p.data.items()}
        g.params[name] = Param(p.name, p.type, p.format, data)
    return dataclasses.replace(m, graph=g, config=copy.deepcopy(m.config))


@pytest.fixture(scope="module")
def tiny_loads_cached():
    """Opt-in per file (``pytestmark = pytest.mark.usefixtures("tiny_loads_cached")``): the
    built-in ``tiny`` is read and traced once for the file, not once per ``load_model`` /
    ``llmc.compile.load`` / CLI command (~1 s of CPU each); every later load gets a private copy
    (``_copy_loaded``). Not for files about loading itself: mapped checkpoint tensors, spilling,
    progress lines of the load (``tests/test_compile_memory.py``, ``tests/test_progress.py``)."""
    import llmc.frontends as frontends
    from llmc.models import TINY_DIR

    real, cache = frontends._load_dir, {}

    def load_dir(d, name, source, allow_pickle, dtype):
        if Path(d).resolve() != TINY_DIR.resolve():
            return real(d, name, source, allow_pickle, dtype)
        key = (name, source, allow_pickle, dtype)
        if key not in cache:
            cache[key] = real(d, name, source, allow_pickle, dtype)
        return _copy_loaded(cache[key])

    mp = pytest.MonkeyPatch()
    mp.setattr(frontends, "_load_dir", load_dir)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_cpu_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``llmc compile tiny --target cpu``, built once per run (read it; copy it to change it)."""
    return shared_compile(tmp_path_factory, "tiny-cpu", "tiny", "--target", "cpu")


@pytest.fixture(scope="session")
def tiny_ref_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``llmc compile tiny`` (the ``ref`` target), built once per run (copy it to change it)."""
    return shared_compile(tmp_path_factory, "tiny-ref", "tiny")
