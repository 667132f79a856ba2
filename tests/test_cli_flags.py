"""`--dtype` on compile/eval/bench, `--batch` on compile/bench, `bench --random-weights` for
architecture-only artifacts, `inspect`, recipes recorded as such, the non-LM compile summary, and
the one-line refusals around them (issue 15, "The CLI users expect")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmc.cli import main

# tiny traced once for the file (~30 commands load it; tests/conftest.py)
pytestmark = pytest.mark.usefixtures("tiny_loads_cached")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_dtype_bf16_is_close_to_f32(capsys) -> None:
    rc, out, err = run(capsys, "eval", "tiny", "--max-tokens", "1024", "--json")
    assert rc == 0, err
    f32 = json.loads(out)["perplexity"]
    rc, out, err = run(capsys, "eval", "tiny", "--dtype", "bf16", "--max-tokens", "1024", "--json")
    assert rc == 0, err
    bf16 = json.loads(out)["perplexity"]
    assert bf16 != f32 and abs(bf16 - f32) / f32 < 0.02


def test_compile_dtype_f16_records_it(capsys, tmp_path: Path) -> None:
    out = tmp_path / "f16"
    rc, o, err = run(capsys, "compile", "tiny", "--dtype", "f16", "-o", str(out), "--json")
    assert rc == 0, err
    assert "f16[" in (out / "graph.ir").read_text()
    rc, o, err = run(capsys, "eval", str(out), "--dtype", "f32")
    assert rc != 0 and "--dtype applies to models" in err and len(err.strip().splitlines()) == 1


def test_bad_dtype_is_one_line(capsys) -> None:
    rc, o, err = run(capsys, "eval", "tiny", "--dtype", "f8")
    assert rc == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_architecture_only_artifact_benches_with_random_weights(capsys, tmp_path: Path) -> None:
    out = tmp_path / "gpt2"
    rc, o, err = run(capsys, "compile", "gpt2", "--target", "cpu", "-o", str(out))
    assert rc == 0, err
    rc, o, err = run(capsys, "bench", str(out), "--prompt-len", "4", "--new-tokens", "2")
    assert rc != 0 and "--random-weights" in err and len(err.strip().splitlines()) == 1
    rc, o, err = run(
        capsys,
        "bench",
        str(out),
        "--prompt-len",
        "4",
        "--new-tokens",
        "2",
        "--repeat",
        "1",
        "--random-weights",
        "--json",
    )
    assert rc == 0, err
    r = json.loads(o)
    assert r["random_weights"] is True and r["new_tokens"] == 2 and r["target"] == "cpu"


def test_architecture_only_model_refuses_to_run(capsys) -> None:
    rc, o, err = run(capsys, "run", "gpt2", "--prompt-ids", "1,2")
    assert rc != 0 and "architecture-only" in err and "--random-weights" in err
    rc, o, err = run(capsys, "bench", "tiny", "--random-weights", "--new-tokens", "1")
    assert rc != 0 and "--random-weights applies to compiled TVM artifacts" in err


def test_inspect_model_and_artifact(capsys, tmp_path: Path) -> None:
    import hashlib

    rc, o, err = run(capsys, "inspect", "tiny", "--json")
    assert rc == 0, err
    info = json.loads(o)
    rows = info["params"]["by_layer"]
    assert [r["layer"] for r in rows] == ["embed", 0, 1, 2, 3, "head"]
    assert sum(r["parameters"] for r in rows) == info["params"]["parameters"] == 3_082_496
    assert info["tokenizer"]["vocab_size"] == 256 and info["kind"] == "model"
    out = tmp_path / "w4"
    rc, o, err = run(capsys, "compile", "tiny", "--passes", "rtn:bits=4:group=64", "-o", str(out))
    assert rc == 0, err
    rc, o, err = run(capsys, "inspect", str(out), "--json")
    assert rc == 0, err
    info = json.loads(o)
    art = info["artifact"]
    assert art["pipeline"] == "rtn:bits=4:group=64" and art["target"] == "ref"
    for f in art["files"]:
        assert hashlib.sha256((out / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert info["params"]["quantized_parameters"] > 0
    assert any("int4 g64" in k for r in info["params"]["by_layer"] for k in r["formats"])
    assert info["pipeline"]["spec"] == "rtn:bits=4:group=64"
    assert [p["pass"] for p in info["pipeline"]["passes"]] == ["rtn"]
    assert info["pipeline"]["passes"][0]["options"]["group"] == 64  # every option it ran with
    assert info["params"]["by_format"]["f32 int4 g64 sym rtn"]["params"] == 28
    assert all(r["sparsity"] is None for r in info["params"]["by_layer"])
    rc, o, err = run(capsys, "inspect", str(out))
    assert rc == 0 and "pipeline   rtn:bits=4:group=64" in o
    assert (
        "1. rtn: act_bits=0, bits=4, exclude=lm_head, group=64, head=true, "
        "head_bits=8, include=*, scale_dtype=f32, sym=true" in o
    )
    rc, o, err = run(capsys, "inspect", "llama2-7b")
    assert rc == 0 and "architecture only" in o


def test_eval_data_file_text_and_jsonl(capsys, tmp_path: Path) -> None:
    """``--data FILE``: a text file's windows (the same text as JSONL documents, joined by a blank
    line, gives the same perplexity); ``--limit`` bounds the windows; the held-out split is not
    what is scored."""
    from llmc.data import corpus_text

    text = corpus_text("heldout")[:2000]
    docs = text.split("\n\n")
    (tmp_path / "a.txt").write_text("\n\n".join(docs), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(
        "\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n\n",
        encoding="utf-8",
    )
    res = {}
    for name in ("a.txt", "a.jsonl"):
        rc, out, err = run(capsys, "eval", "tiny", "--data", str(tmp_path / name), "--json")
        assert rc == 0, err
        res[name] = json.loads(out)
    assert res["a.txt"]["perplexity"] == res["a.jsonl"]["perplexity"]
    assert res["a.txt"]["windows"] == 2000 // 256 and res["a.txt"]["split"] == "file"
    rc, out, err = run(capsys, "eval", "tiny", "--data", str(tmp_path / "a.txt"), "--limit", "3")
    assert rc == 0, err
    rc, out, err = run(
        capsys, "eval", "tiny", "--data", str(tmp_path / "a.txt"), "--limit", "3", "--json"
    )
    assert json.loads(out)["windows"] == 3


class _FakeDataset:
    """What llmc reads of a ``datasets.Dataset``: ``column_names`` and a column by name."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.column_names = list(rows[0])

    def __getitem__(self, key: str) -> list:
        return [r[key] for r in self.rows]


def test_eval_data_hf_dataset(capsys, monkeypatch, tmp_path: Path) -> None:
    """``--data hf:NAME[:SPLIT]`` and a ``save_to_disk`` directory read the dataset's ``text``
    column through the ``datasets`` library (a stand-in module here: the library is optional and
    its hub is not reachable), scoring the same windows as the same text in a file; without the
    library, or without a ``text`` column, one line."""
    import sys
    import types

    from llmc.data import corpus_text

    docs = corpus_text("heldout")[:2000].split("\n\n")
    (tmp_path / "a.txt").write_text("\n\n".join(docs), encoding="utf-8")
    rows = [{"text": d, "id": i} for i, d in enumerate(docs)] + [{"text": "  ", "id": -1}]
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(name, split):
        calls.append((name, split))
        if name == "nope":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub\nmore")
        return _FakeDataset(rows if name == "corpus" else [{"body": "x"}])

    fake.load_dataset = load_dataset
    fake.load_from_disk = lambda d: {"validation": _FakeDataset(rows)}
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ref = run(capsys, "eval", "tiny", "--data", str(tmp_path / "a.txt"), "--json")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{}")
    (saved / "state.json").write_text("{}")
    for data in ("hf:corpus:validation", f"hf:{saved}:validation"):
        rc, out, err = run(capsys, "eval", "tiny", "--data", data, "--json")
        assert rc == 0, err
        assert json.loads(out)["perplexity"] == json.loads(ref[1])["perplexity"]
    assert calls[-1] == ("corpus", "validation")
    rc, out, err = run(capsys, "eval", "tiny", "--data", "hf:corpus")
    assert calls[-1] == ("corpus", "test")  # the default split
    for data, msg in (
        ("hf:other", "needs a string column \"text\" (columns: ['body'])"),
        ("hf:nope", "cannot load the dataset: Dataset 'nope' doesn't exist on the Hub"),
        ("hf:", "give a dataset name or directory after hf:"),
    ):
        rc, out, err = run(capsys, "eval", "tiny", "--data", data)
        assert rc != 0 and msg in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: import fails
    rc, out, err = run(capsys, "eval", "tiny", "--data", "hf:corpus")
    assert rc != 0 and "needs the `datasets` library" in err and len(err.strip().splitlines()) == 1


def test_eval_data_bad_files_are_one_line(capsys, tmp_path: Path) -> None:
    cases = {
        "missing.txt": (None, "data file not found"),
        "bad.jsonl": (
            '{"text": "ok"}\n{"txt": "no"}\n',
            'bad.jsonl:2: each line needs a string field "text"',
        ),
        "broken.jsonl": ("{not json\n", "broken.jsonl:1: not a JSON object"),
        "latin.txt": (b"caf\xe9 " * 100, "is not UTF-8 text (byte 3)"),
        "short.txt": ("tiny text", "fewer than one window of 256"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif content is not None:
            p.write_text(content, encoding="utf-8")
        rc, out, err = run(capsys, "eval", "tiny", "--data", str(p))
        assert rc != 0 and msg in err and str(p) in err, (name, err)
        assert len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------------------------
# --batch, progress of TVM builds, target overrides, recipes, non-LM summaries


def test_compile_batch_scales_the_cost(capsys) -> None:
    res = {}
    for b in ("1", "4"):
        rc, o, err = run(capsys, "compile", "tiny", "--target", "cpu", "--dry-run", "--batch", b)
        assert rc == 0, err
        assert f"(batch={b}, seq=1, past=127)" in o
        rc, o, err = run(
            capsys, "compile", "tiny", "--target", "cpu", "--dry-run", "--batch", b, "--json"
        )
        res[b] = json.loads(o)
    one, four = res["1"], res["4"]
    assert four["analysis"]["env"]["batch"] == 4
    ratio = four["analysis"]["total"]["flops"] / one["analysis"]["total"]["flops"]
    assert abs(ratio - 4.0) < 1e-6, ratio  # every op's FLOPs scale with the batch
    # decode reads the weights once per call, whatever the batch: the bytes grow far slower
    assert four["analysis"]["total"]["bytes_read"] < 2 * one["analysis"]["total"]["bytes_read"]
    assert four["roofline_layers"]["scenario"]["batch"] == 4


def test_bench_batch_on_the_interpreter(capsys) -> None:
    from llmc.compile import load, runner_for
    from llmc.runtime.bench import bench_prompts, run_batch
    from llmc.runtime.lm import generate

    rc, o, err = run(
        capsys, "bench", "tiny", "--batch", "3", "--prompt-len", "8", "--new-tokens", "4",
        "--repeat", "1", "--json",
    )  # fmt: skip
    assert rc == 0, err
    r = json.loads(o)
    assert r["batch"] == 3 and r["prompt_tokens"] == 8 and r["new_tokens"] == 4
    assert r["decode_tokens_per_s_total"] == pytest.approx(3 * r["decode_tokens_per_s"])
    # one batched request decodes each sequence as it would alone
    lm = runner_for(load("tiny"))
    prompts = bench_prompts(lm.vocab_size, 3, 8)
    assert len({tuple(p) for p in prompts}) == 3
    got = run_batch(lm, prompts, 5).tokens
    assert got == [generate(lm, p, 5).tokens for p in prompts]


def test_bench_batch_refusals(capsys) -> None:
    from llmc.errors import LlmcError
    from llmc.runtime.bench import check_batch

    class OneAtATime:
        max_batch = 1
        device = "flightllm-funcsim"

    with pytest.raises(LlmcError, match=r"--batch 2: this artifact runs 1 sequence\(s\)"):
        check_batch(OneAtATime(), 2, "out/x")  # type: ignore[arg-type]
    check_batch(OneAtATime(), 1, "out/x")  # type: ignore[arg-type]
    rc, o, err = run(capsys, "bench", "tiny", "--batch", "0")
    assert rc == 2 and "--batch" in err and len(err.strip().splitlines()) == 1
    rc, o, err = run(capsys, "bench", "tiny", "--prompt-len", "1000", "--new-tokens", "100")
    assert rc != 0 and "exceed the model's 1024 positions" in err


def test_bench_dtype_on_models_and_artifacts(capsys, tiny_ref_artifact: Path) -> None:
    rc, o, err = run(
        capsys, "bench", "tiny", "--dtype", "bf16", "--prompt-len", "4", "--new-tokens", "2",
        "--repeat", "1", "--json",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(o)["dtype"] == "bf16"
    rc, o, err = run(capsys, "bench", str(tiny_ref_artifact), "--dtype", "f16")
    assert rc != 0 and "--dtype applies to models" in err and "recompile with --dtype" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def cpu_tiny(tmp_path_factory) -> tuple[Path, str]:
    """tiny compiled for cpu with a spec override, progress forced on; (artifact, stderr)."""
    import contextlib
    import io
    import os

    out = tmp_path_factory.mktemp("cpu") / "tiny"
    err = io.StringIO()
    old = os.environ.get("LLMC_PROGRESS")
    os.environ["LLMC_PROGRESS"] = "1"
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(
                [
                    "compile",
                    "tiny",
                    "--target",
                    "cpu",
                    "--set",
                    "bandwidth_gbs=12.5",
                    "-o",
                    str(out),
                ]
            )
    finally:
        if old is None:
            os.environ.pop("LLMC_PROGRESS")
        else:
            os.environ["LLMC_PROGRESS"] = old
    assert rc == 0, err.getvalue()
    return out, err.getvalue()


def test_cpu_compile_shows_tvm_phases(cpu_tiny) -> None:
    _, err = cpu_tiny
    for phase in ("tvm lower", "tvm legalize", "tvm schedule", "tvm build", "tvm export"):
        assert f"    {phase}  " in err, (phase, err)  # a done line, two levels deep
    assert "  building for cpu  " in err and "compile tiny for cpu  " in err


def test_inspect_shows_target_overrides(capsys, cpu_tiny) -> None:
    out, _ = cpu_tiny
    rc, o, err = run(capsys, "inspect", str(out), "--json")
    assert rc == 0, err
    art = json.loads(o)["artifact"]
    assert art["target"] == "cpu" and art["target_overrides"] == {"set": ["bandwidth_gbs=12.5"]}
    assert art["target_spec"]["bandwidth_gbs"] == pytest.approx(12.5)
    rc, o, err = run(capsys, "inspect", str(out))
    assert "target overrides --set bandwidth_gbs=12.5" in o and "bandwidth_gbs=12.5" in o


def test_bench_batch_on_a_cpu_artifact(capsys, cpu_tiny) -> None:
    from llmc.compile import load, runner_for
    from llmc.runtime.bench import bench_prompts, run_batch
    from llmc.runtime.lm import generate

    out, _ = cpu_tiny
    rc, o, err = run(
        capsys, "bench", str(out), "--batch", "4", "--prompt-len", "16", "--new-tokens", "8",
        "--repeat", "1", "--json",
    )  # fmt: skip
    assert rc == 0, err
    r = json.loads(o)
    assert r["batch"] == 4 and r["target"] == "cpu"
    assert r["decode_tokens_per_s_total"] == pytest.approx(4 * r["decode_tokens_per_s"])
    rf = r["roofline"]
    assert rf["batch"] == 4 and rf["decode_ms_per_step_min"] > 0
    assert 0 < rf["decode_fraction_of_bound"]
    lm = runner_for(load(str(out)))
    prompts = bench_prompts(lm.vocab_size, 2, 8)
    got = run_batch(lm, prompts, 4).tokens
    assert got == [generate(lm, p, 4).tokens for p in prompts]


def test_recipe_is_recorded_in_manifest_inspect_and_exports(capsys, tmp_path: Path) -> None:
    import hashlib

    import gguf

    recipe = tmp_path / "w8.yaml"
    recipe.write_text("passes:\n  - rtn: {bits: 8, group: 64}\n")
    sha = hashlib.sha256(recipe.read_bytes()).hexdigest()
    out = tmp_path / "art"
    rc, o, err = run(capsys, "compile", "tiny", "--recipe", str(recipe), "-o", str(out))
    assert rc == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["pipeline"] == f"recipe:{recipe}"
    assert m["recipe"]["sha256"] == sha and "bits: 8" in m["recipe"]["text"]
    assert m["passes"][0]["pass"] == "rtn" and m["passes"][0]["options"]["bits"] == 8
    rc, o, err = run(capsys, "inspect", str(out), "--json")
    pl = json.loads(o)["pipeline"]
    assert pl["spec"] == f"recipe:{recipe}" and pl["recipe"]["sha256"] == sha
    assert pl["passes"][0]["options"]["group"] == 64
    # export with a recipe: the pipeline names it, with its hash and text
    hf = tmp_path / "hf"
    rc, o, err = run(capsys, "export", "tiny", "--recipe", str(recipe), "-o", str(hf))
    assert rc == 0, err
    c = json.loads((hf / "llmc_compression.json").read_text())
    assert c["pipeline"] == f"recipe:{recipe}" and c["recipe"]["sha256"] == sha
    assert c["passes"].startswith("rtn:bits=8:group=64")
    # export of the artifact compiled with the recipe carries its record
    hf2 = tmp_path / "hf2"
    rc, o, err = run(capsys, "export", str(out), "-o", str(hf2))
    assert rc == 0, err
    c2 = json.loads((hf2 / "llmc_compression.json").read_text())
    assert c2["pipeline"] == f"recipe:{recipe}" and c2["recipe"]["sha256"] == sha
    g = tmp_path / "t.gguf"
    rc, o, err = run(
        capsys, "export", "tiny", "--recipe", str(recipe), "--format", "gguf", "-o", str(g)
    )
    assert rc == 0, err
    fields = gguf.GGUFReader(str(g)).fields

    def text(k: str) -> str:
        f = fields[k]
        return bytes(f.parts[f.data[0]]).decode()

    assert text("llmc.pipeline") == f"recipe:{recipe}" and text("llmc.recipe.sha256") == sha
    assert text("llmc.passes").startswith("rtn:bits=8")


NON_LM = """
import torch
import transformers as T

def bert():
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
    return T.BertModel(cfg).eval(), (torch.randint(0, 99, (1, 8)),)
"""


def test_non_lm_compile_summary(capsys, tmp_path: Path) -> None:
    f = tmp_path / "enc.py"
    f.write_text(NON_LM)
    rc, o, err = run(capsys, "compile", f"{f}:bert", "--dry-run")
    assert rc == 0, err
    assert "graph      " in o and "attention 2" in o and "input_ids: i64[1, 8]" in o
    assert "past=" not in o and "tokens/s" not in o  # no LM figures for an encoder
    rc, o, err = run(capsys, "compile", f"{f}:bert", "--dry-run", "--json")
    r = json.loads(o)
    assert r["lm"] is False and "past" not in r["analysis"]["env"] and r["ops"]["attention"] == 2
