"""Shared fixtures for the backend tests: compiled artifacts of small graphs, built once per
worker (a CPU build of the toy LM takes a few seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from llmc.compile import Loaded, compile_model
from llmc.ir.graph import Graph
from tests.lm_fixtures import toy_lm

os.environ.setdefault("TVM_NUM_THREADS", "2")


def compile_graph(graph: Graph, target: str, out: Path, name: str = "toy") -> Path:
    """Compile an in-memory graph through the public driver (atomic artifact, manifest)."""
    compile_model(Loaded(graph, None, name, "tests"), target=target, out=out)
    return out


def interp_run(graph: Graph, args: list[torch.Tensor]) -> list[torch.Tensor]:
    from llmc.runtime.interp import run

    return run(graph, args)


@pytest.fixture(scope="session")
def toy_graph() -> Graph:
    return toy_lm()


@pytest.fixture(scope="session")
def toy_cpu(tmp_path_factory: pytest.TempPathFactory, toy_graph: Graph) -> Path:
    return compile_graph(toy_graph, "cpu", tmp_path_factory.mktemp("toy") / "cpu")


@pytest.fixture(scope="session")
def toy_runner(toy_cpu: Path):
    from llmc.runtime.tvm_runner import load

    return load(toy_cpu)
