"""`--dtype` on compile/eval/bench, `bench --random-weights` for architecture-only artifacts, and
the one-line refusals around them (issue 15, "The CLI users expect")."""

from __future__ import annotations

import json
from pathlib import Path

from llmc.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_dtype_bf16_is_close_to_f32(capsys) -> None:
    rc, out, err = run(capsys, "eval", "tiny", "--max-tokens", "2048", "--json")
    assert rc == 0, err
    f32 = json.loads(out)["perplexity"]
    rc, out, err = run(capsys, "eval", "tiny", "--dtype", "bf16", "--max-tokens", "2048", "--json")
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
    assert any("quant(bits=4" in k for r in info["params"]["by_layer"] for k in r["formats"])
    rc, o, err = run(capsys, "inspect", str(out))
    assert rc == 0 and "pipeline rtn:bits=4:group=64" in o
    rc, o, err = run(capsys, "inspect", "llama2-7b")
    assert rc == 0 and "architecture only" in o


def test_eval_data_file_text_and_jsonl(capsys, tmp_path: Path) -> None:
    """``--data FILE``: a text file's windows (the same text as JSONL documents, joined by a blank
    line, gives the same perplexity); ``--limit`` bounds the windows; the held-out split is not
    what is scored."""
    from llmc.data import corpus_text

    text = corpus_text("heldout")[:6000]
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
    assert res["a.txt"]["windows"] == 6000 // 256 and res["a.txt"]["split"] == "file"
    rc, out, err = run(capsys, "eval", "tiny", "--data", str(tmp_path / "a.txt"), "--limit", "3")
    assert rc == 0, err
    rc, out, err = run(
        capsys, "eval", "tiny", "--data", str(tmp_path / "a.txt"), "--limit", "3", "--json"
    )
    assert json.loads(out)["windows"] == 3


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
