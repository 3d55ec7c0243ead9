"""Flags checked before any model loads: devices, sizes, numbers, model paths, stages."""

from __future__ import annotations

import json

import pytest
import torch

from trustgain.cli.main import main
from trustgain.config import PipelineConfig
from trustgain.errors import ConfigError


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_stages_json_lists_every_stage_with_json_settings(capsys):
    code, out, _ = run(capsys, "stages", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) >= 8
    names = {r["name"] for r in rows}
    assert {"watermark.pixel", "protect.rae", "schedule.backend_steps"} <= names
    backend = next(r for r in rows if r["name"] == "schedule.backend_steps")
    assert isinstance(backend["settings"]["backends"], list)  # what trustgain.json would hold
    assert isinstance(backend["settings"]["backends"][0], dict)


@pytest.mark.parametrize(("device", "says"), [
    ("banana", "is not a torch device"),
    ("cuda:0" if not torch.cuda.is_available() else "cuda:999", "CUDA GPU"),
    ("meta", "trustgain runs on cpu, cuda or mps"),
])
@pytest.mark.parametrize("command", [
    ["generate", "x"],
    ["audit", "membership", "--model", "m", "--members", ".", "--nonmembers", "."],
    ["watermark", "detect-latent", ".", "--model", "m"],
])
def test_unusable_device_is_a_usage_error(capsys, command, device, says):
    code, _, err = run(capsys, *command, "--device", device)
    assert code == 2 and says in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "says"), [
    (["--guidance", "nan"], "--guidance"),
    (["--guidance", "inf"], "not a finite number"),
    (["--height", "100"], "100 is not a multiple of 8 (try 96 or 104)"),
    (["--width", "12"], "not a multiple of 8"),
])
def test_generate_numbers_checked_before_the_model_loads(capsys, tmp_path, args, says):
    code, _, err = run(capsys, "generate", "x", "--model", str(tmp_path / "absent"), *args)
    assert code == 2 and says in err  # a model that does not exist was never reached


def test_model_paths_get_plain_words(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "x", "--model", str(tmp_path / "absent"),
                       "-o", str(tmp_path / "a.png"))
    assert code == 1 and err.splitlines()[0].endswith("no such folder")
    afile = tmp_path / "weights.safetensors"
    afile.write_bytes(b"x")
    code, _, err = run(capsys, "generate", "x", "--model", str(afile),
                       "-o", str(tmp_path / "a.png"))
    assert code == 1 and "is a file" in err
    code, _, err = run(capsys, "generate", "x", "--model", str(tmp_path),
                       "-o", str(tmp_path / "a.png"))
    assert code == 1 and "has no model_index.json" in err
    assert not (tmp_path / "a.png").exists()


def test_existing_output_hint_names_the_flag(capsys, tmp_path):
    out = tmp_path / "a.png"
    out.write_bytes(b"mine")
    code, _, err = run(capsys, "generate", "x", "-o", str(out))
    assert code == 1 and "pass --force" in err and "overwrite=True" not in err
    assert out.read_bytes() == b"mine"


def test_config_output_format_is_checked():
    doc = PipelineConfig().to_dict()
    with pytest.raises(ConfigError, match="output_format must be"):
        PipelineConfig.from_dict({**doc, "output_format": "gif"})
    assert PipelineConfig.from_dict({**doc, "output_format": "jpeg"}).output_format == "jpeg"


@pytest.mark.parametrize(("args", "says"), [
    (["models", "--device", "tpu"], "is not a torch device"),
    (["models", "--data", "."], "models takes no --data"),
    (["watermark", "--data", "/nonexistent-folder"], "no such folder"),
    (["models", "--only", "x"], "models has no other options"),
    (["protection", "--only", "x"], "python -m trustgain.bench.protection --help"),
])
def test_bench_flags_are_checked_before_any_run(capsys, args, says):
    from trustgain.bench.__main__ import main as bench

    with pytest.raises(SystemExit) as info:
        bench(args)
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_bench_json_is_never_replaced_unasked_and_checked_first(capsys, tmp_path):
    from trustgain.bench.__main__ import main as bench

    keep = tmp_path / "keep.json"
    keep.write_text("{}")
    for target, says in ((keep, "pass --force"), (tmp_path, "is a folder"),
                         (tmp_path / "file" / "x.json", "cannot write there")):
        (tmp_path / "file").touch()
        with pytest.raises(SystemExit):
            bench(["models", "--quick", "--json", str(target)])
        assert says in capsys.readouterr().err
    assert keep.read_text() == "{}"
