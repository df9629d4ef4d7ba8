"""``lora-blackbox eval`` as NOMAD calls it: a subprocess, the point file last, stdout read as bytes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.points import point_file
from tests.records import read_records

pytestmark = pytest.mark.slow

RESULT = re.compile(rb"(\d+\.\d+(?:e-?\d+)?) (\d+\.\d+(?:e-?\d+)?) (\d{8}T\d{6}-[0-9a-f]{8})\n")
FAILED = b"nan nan nan\n"


def _records(experiment: Path) -> list[dict]:
    return read_records(experiment.parent / "runs" / "records.jsonl")


def test_a_block_as_nomad_writes_it(tmp_path: Path, tiny_experiment: Path, run_blackbox) -> None:
    points = tmp_path / "nomadtmp.123.0"
    points.write_text(
        "  2   -2.00000000000000   0.10000000000000  \n"  # valid, padded
        "\n"  # blank: evaluated elsewhere, no output line
        "1 -2.5 -0\n"  # valid, NOMAD's -0
        "2.5 -2 0\n"  # integer variable not integral
        "5 -2 0\n"  # out of bounds
        "2 -2\n"  # wrong number of values
        "2 abc 0\n"  # not a number
        "2 -2 0.1\n"  # the first point again
    )
    result = run_blackbox(["eval", "--experiment", str(tiny_experiment), str(points)])
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.splitlines(keepends=True)
    assert len(lines) == 7
    first, second, *bad, again = lines
    assert RESULT.fullmatch(first) and RESULT.fullmatch(second) and RESULT.fullmatch(again)
    assert bad == [FAILED] * 4
    assert first.split()[0] == again.split()[0]  # same point, same objective, in one process
    stderr = result.stderr.decode()
    for line_number, reason in [
        (4, "integer variable"),
        (5, "out of bounds"),
        (6, "expected 3 values"),
        (7, "not a number"),
    ]:
        assert re.search(rf"point {line_number} .*{reason}", stderr), stderr
    records = _records(tiny_experiment)
    assert [r["status"] for r in records] == ["OK", "OK"] + ["INVALID_POINT"] * 4 + ["OK"]
    assert [r["block_index"] for r in records] == [0, 2, 3, 4, 5, 6, 7]
    assert records[1]["hparams"]["lora_dropout"] == 0.0
    ok = records[0]
    assert ok["outputs"] == first.decode().split()
    assert float(first.split()[0]) == ok["metrics"]["validation_loss"]
    assert set(ok["timings"]) >= {
        "startup_s",
        "model_load_s",
        "data_prep_s",
        "train_s",
        "validation_s",
        "total_s",
    }
    assert ok["versions"]["torch"] and ok["versions"]["peft"] and ok["versions"]["transformers"]
    assert ok["memory"]["peak_gib"] > 0 and ok["seed"] == 0
    # The first step's time, and the median of the later ones
    steps = ok["metrics"]["train_first_step_seconds"], ok["metrics"]["train_step_seconds"]
    assert all(0 < s < ok["metrics"]["train_seconds"] for s in steps)
    assert (Path(ok["run_dir"]) / "eval.log").read_text().count("step ") >= 3


def test_a_point_gives_the_same_objective_in_its_own_process(tmp_path, tiny_experiment, run_blackbox) -> None:
    both = point_file(tmp_path, "3 -2.5 0", "2 -2 0.1", name="both.txt")
    alone = point_file(tmp_path, "2 -2 0.1", name="alone.txt")
    block = run_blackbox(["eval", "-e", str(tiny_experiment), str(both)])
    single = run_blackbox(["eval", "-e", str(tiny_experiment), str(alone)])
    assert block.returncode == single.returncode == 0
    assert block.stdout.splitlines()[1].split()[:2] == single.stdout.split()[:2]


def test_a_block_keeps_no_memory_from_point_to_point(tmp_path, tiny_experiment, run_blackbox) -> None:
    """The same point four times in one call: the same objective each time, and the resident memory after
    the last point no larger than after the first: no copy of the model, no step's activations, no freed heap
    is kept from one point to the next."""
    points = tmp_path / "x.txt"
    points.write_text("3 -2.5 0\n" * 4)
    result = run_blackbox(["eval", "-e", str(tiny_experiment), str(points)])
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert len({line.split()[0] for line in result.stdout.splitlines()}) == 1
    rss = [r["memory"]["process_rss_gib"] for r in _records(tiny_experiment)]
    assert len(rss) == 4
    assert rss[-1] <= rss[0] + 0.01, rss  # 10 MiB of slack for the interpreter's own allocations


def test_a_diverging_learning_rate_prints_inf(tmp_path, tiny_experiment, run_blackbox) -> None:
    points = tmp_path / "x.txt"
    points.write_text("2 36 0\n")  # learning rate 1e36: the loss becomes NaN within a few steps
    result = run_blackbox(["eval", "-e", str(tiny_experiment), str(points)])
    assert result.returncode == 0
    assert re.fullmatch(rb"inf nan \d{8}T\d{6}-[0-9a-f]{8}\n", result.stdout), result.stdout
    [record] = _records(tiny_experiment)
    assert record["status"] == "DIVERGED" and "nan" in record["error"]


SITECUSTOMIZE = """
import ctypes, os
import torch.nn.functional as F

_original = F.cross_entropy

def noisy_cross_entropy(*args, **kwargs):
    print("PRINTED NOISE")                                   # Python-level stdout
    os.write(1, b"FD1 NOISE\\n")                              # file descriptor 1
    ctypes.CDLL(None).write(1, b"NATIVE NOISE\\n", 13)        # C code writing to fd 1
    return _original(*args, **kwargs)

F.cross_entropy = noisy_cross_entropy
"""


def test_stdout_carries_result_lines_only(tmp_path, tiny_experiment, run_blackbox) -> None:
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    points = point_file(tmp_path, "2 -2 0.1")
    result = run_blackbox(
        ["eval", "-e", str(tiny_experiment), str(points)], env={"PYTHONPATH": str(tmp_path / "noise")}
    )
    assert result.returncode == 0, result.stderr.decode()
    assert RESULT.fullmatch(result.stdout), result.stdout
    for noise in ("PRINTED NOISE", "FD1 NOISE", "NATIVE NOISE"):
        assert noise in result.stderr.decode()


LIBRARY_NOISE = """
import logging, warnings
import torch

_init = torch.optim.AdamW.__init__

def noisy_init(self, *args, **kwargs):
    warnings.warn("LIBRARY WARNING", UserWarning)             # a library's warning
    logging.getLogger("transformers.noisy").warning("LIBRARY LOG")   # a library's log (transformers: own handler)
    _init(self, *args, **kwargs)

torch.optim.AdamW.__init__ = noisy_init
"""


@pytest.mark.parametrize("flags", [[], ["-q"], ["--debug"]])
def test_the_terminal_shows_our_lines_the_log_has_them_all(tmp_path, tiny_experiment, run_blackbox, flags) -> None:
    """Libraries' warnings and logs reach the evaluation's eval.log, and the terminal only with --debug."""
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "sitecustomize.py").write_text(LIBRARY_NOISE)
    points = point_file(tmp_path, "2 -2 0.1")
    args = [*flags, "eval", "-e", str(tiny_experiment), "--set", "training.max_steps=2", str(points)]
    result = run_blackbox(args, env={"PYTHONPATH": str(tmp_path / "noise")})
    assert result.returncode == 0 and RESULT.fullmatch(result.stdout), result.stderr.decode()[-3000:]
    lines = result.stderr.decode().splitlines()
    [log] = (tiny_experiment.parent / "runs" / "evals").glob("*/eval.log")
    assert "LIBRARY WARNING" in log.read_text() and "LIBRARY LOG" in log.read_text()
    ours = [line for line in lines if line.startswith("lora-blackbox ")]
    if flags == ["--debug"]:
        assert any("LIBRARY WARNING" in line for line in lines) and any("LIBRARY LOG" in line for line in lines)
    else:
        assert ours == lines, [line for line in lines if line not in ours]
        # Our progress (INFO lines) without flags; with -q nothing of ours, not even its progress.
        assert any(" INFO: " in line for line in ours) == bool(ours) == (flags == [])


def test_missing_model_fails_the_call_and_records_every_point(tmp_path, tiny_experiment, run_blackbox) -> None:
    points = point_file(tmp_path, "2 -2 0.1", "", "3 -3 0")
    result = run_blackbox(
        [
            "eval",
            "-e",
            str(tiny_experiment),
            "--set",
            f"model.name_or_path={tmp_path}/no-such-model",
            str(points),
        ]
    )
    assert result.returncode == 1
    assert result.stdout == b""
    stderr = result.stderr.decode()
    assert "no-such-model" in stderr and "Traceback" not in stderr
    assert [r["status"] for r in _records(tiny_experiment)] == ["NOT_RUN", "NOT_RUN"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--set", "training.max_step=5"], 2, "unknown key 'training.max_step'"),
        (["--set", "training.seed=abc"], 2, "training.seed"),
        (["-e", "no-such-experiment"], 2, "no experiment file"),
        (["--set", "validation.test=true"], 2, "give its sources in data.test"),
    ],
)
def test_bad_experiments_exit_2(tmp_path, tiny_experiment, run_blackbox, args, code, message) -> None:
    points = point_file(tmp_path, "2 -2 0.1")
    if "-e" not in args:
        args = ["-e", str(tiny_experiment), *args]
    result = run_blackbox(["eval", *args, str(points)])
    assert result.returncode == code
    assert result.stdout == b""
    assert message in result.stderr.decode()


def test_unreadable_point_file_exits_1(tiny_experiment, run_blackbox) -> None:
    result = run_blackbox(["eval", "-e", str(tiny_experiment), "/no/such/points.txt"])
    assert result.returncode == 1 and result.stdout == b""
    assert "cannot read point file /no/such/points.txt" in result.stderr.decode()


@pytest.mark.parametrize(
    ("quantization", "layer", "dtype"),
    [
        ("nf4", "Linear4bit", "torch.uint8"),
        ("int8", "Linear8bitLt", "torch.int8"),
    ],
)
def test_quantised_lora_trains(tmp_path, tiny_model, tiny_experiment, run_blackbox, quantization, layer, dtype) -> None:
    """QLoRA through bitsandbytes, which also runs on the CPU: the base model eval loads really holds 4-bit
    (two values a byte, nf4) or 8-bit weights in bitsandbytes' layers, and LoRA trains on top of them, in the
    second point of a call too: after the first point's validation (on a CPU with AVX512-BF16, bitsandbytes 0.50
    repacked the 4-bit weights for inference there, and the next point's adapter got no gradient)."""
    import torch

    from blackbox.core.experiment import ModelConfig, TrainingConfig
    from blackbox.training.model import load_base_model
    from blackbox.training.precision import Precision

    config = ModelConfig(name_or_path=str(tiny_model), quantization=quantization)
    base = load_base_model(config, TrainingConfig(), torch.device("cpu"), Precision(torch.float32, None))
    adapted = [m for name, m in base.named_modules() if name.endswith(("q_proj", "v_proj"))]
    assert len(adapted) == 4 and {type(m).__name__ for m in adapted} == {layer}
    assert {str(m.weight.dtype) for m in adapted} == {dtype}
    if quantization == "nf4":
        assert {m.weight.quant_state.quant_type for m in adapted} == {"nf4"}
        assert adapted[0].weight.numel() * 2 == adapted[0].in_features * adapted[0].out_features
        base.eval()
        with torch.no_grad():  # a validation's forward leaves the 4-bit weights in the layout that trains
            base(torch.tensor([[1, 2, 3]]))
        assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in adapted)

    # The same adapter with a learning rate too small to move it (the base model's loss), then one that learns.
    points = point_file(tmp_path, "2 -5 0", "2 -2 0")
    result = run_blackbox(
        ["eval", "-e", str(tiny_experiment), "--set", f"model.quantization={quantization}", str(points)]
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    lines = result.stdout.splitlines(keepends=True)
    assert len(lines) == 2 and all(RESULT.fullmatch(line) for line in lines), result.stdout
    still, trained = _records(tiny_experiment)
    assert still["status"] == trained["status"] == "OK"
    losses = (still["metrics"]["validation_loss"], trained["metrics"]["validation_loss"])
    assert losses[1] < losses[0] - 0.1, losses  # LoRA learned on top of the quantised weights


def test_low_fidelity_is_recorded_and_cheaper(tmp_path, tiny_experiment, run_blackbox) -> None:
    points = point_file(tmp_path, "2 -2 0.1")
    low = ["--set", "fidelity.train=0.25", "--set", "fidelity.validation=0.5"]
    result = run_blackbox(["eval", "-e", str(tiny_experiment), *low, str(points)])
    assert result.returncode == 0 and RESULT.fullmatch(result.stdout)
    full = run_blackbox(["eval", "-e", str(tiny_experiment), str(points)])
    cheap, whole = _records(tiny_experiment)
    assert cheap["metrics"]["train_steps"] == 3 and whole["metrics"]["train_steps"] == 12
    assert cheap["metrics"]["validation_tokens"] < whole["metrics"]["validation_tokens"]
    assert (cheap["metrics"]["fidelity_train"], cheap["metrics"]["fidelity_validation"]) == (0.25, 0.5)
    assert full.stdout.split()[0] != result.stdout.split()[0]


def test_experiment_from_the_environment(tmp_path, tiny_experiment, run_blackbox) -> None:
    points = point_file(tmp_path, "2 -2 0.1")
    result = run_blackbox(["eval", str(points)], env={"LORA_BLACKBOX_EXPERIMENT": str(tiny_experiment)})
    assert result.returncode == 0 and RESULT.fullmatch(result.stdout)


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_sigint_records_the_running_point_as_interrupted(
    tmp_path, tiny_experiment, blackbox_cmd, wait_for, training_started, inherited: str
) -> None:
    """Also when started with SIGINT ignored, as a script's background job is."""
    points = point_file(tmp_path, "2 -2 0.1")
    process = subprocess.Popen(
        [*blackbox_cmd, "eval", "-e", str(tiny_experiment), "--set", "training.max_steps=100000", str(points)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited == "ignored" else None,
    )
    try:
        wait_for(lambda: training_started(tmp_path / "runs"), process, "training")
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()  # a failed test leaves no training process behind (a no-op once it has ended)
        process.wait(timeout=60)
    assert process.returncode == 130 and stdout == b""
    [record] = _records(tiny_experiment)
    assert record["status"] == "INTERRUPTED"
    assert json.loads((Path(record["run_dir"]) / "record.json").read_text())["status"] == "INTERRUPTED"


def test_a_stopping_study_gets_every_point_declined_at_once(tmp_path, tiny_experiment, run_blackbox) -> None:
    """The study driver's stop request (blackbox.core.stopping): no evaluation starts, no model is loaded, every point
    is recorded NOT_RUN and answered as a failure that NOMAD does not count."""
    stop = tmp_path / "stop-requested"
    stop.touch()
    points = point_file(tmp_path, "2 -2 0.1", "", "not a point")
    outputs = '["OBJ:validation_loss", "EXTRA_O:run_id", "CNT_EVAL"]'
    result = run_blackbox(
        ["eval", "-e", str(tiny_experiment), "--set", f"study.outputs={outputs}", str(points)],
        env={"LORA_BLACKBOX_STOP_FILE": str(stop)},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"nan nan 0\nnan nan 0\n"
    assert "loaded" not in result.stderr.decode()
    records = _records(tiny_experiment)
    assert [(r["status"], r["block_index"], r["point"]) for r in records] == [
        ("NOT_RUN", 0, [2.0, -2.0, 0.1]),
        ("NOT_RUN", 2, None),
    ]
    assert all("the study is stopping" in r["error"] for r in records)


def test_decode_without_a_point_file_shows_x0_and_the_bounds(run_blackbox) -> None:
    """Every decoded setting of X0 and of both corners of the box, settings of any TOML type included."""
    from blackbox.core.experiment import load_experiment
    from blackbox.core.space import SearchSpace

    result = run_blackbox(["decode", "-e", "lora_variants"])
    assert result.returncode == 0, result.stderr.decode()
    space = SearchSpace.from_experiment(load_experiment("lora_variants"))
    expected = [space.decode(point).as_dict() for point in (space.x0, space.lower, space.upper)]
    assert [json.loads(line) for line in result.stdout.splitlines()] == json.loads(json.dumps(expected))
    upper = json.loads(result.stdout.splitlines()[2])
    assert (upper["lora"], upper["model.target_modules"], upper["lora_r"]) == ({"use_rslora": True}, "all-linear", 128)
    stderr = result.stderr.decode()
    assert "X0 (3 6 3 -4 1 1 3):" in stderr and "upper bounds (7 32 4 -3 3 3 3):" in stderr


def test_decode_shows_every_starting_point(run_blackbox, tmp_path: Path) -> None:
    from importlib import resources

    demo = resources.files("blackbox").joinpath("experiments", "demo.toml").read_text()
    experiment = tmp_path / "starts.toml"
    experiment.write_text(demo.replace("x0 = -4.5", "x0 = [-4.5, -3]"))
    result = run_blackbox(["decode", "-e", str(experiment)])
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["learning_rate"] for line in lines[:2]] == [10**-4.5, 10**-3] and len(lines) == 4
    stderr = result.stderr.decode()
    assert "X0 1 (2 2 -4.5):" in stderr and "X0 2 (2 2 -3):" in stderr


def test_data_kept_beside_the_experiment_is_found_from_any_folder(
    tmp_path, tiny_data, write_tiny_experiment, run_blackbox
) -> None:
    """As a new user keeps a study: the experiment file beside its data, named relatively; NOMAD's calls run in
    the study folder, elsewhere. A missing file's message names the path it tried."""
    project = tmp_path / "project"
    project.mkdir()
    train, validation = tiny_data
    (project / "train.jsonl").write_bytes(train.read_bytes())
    (project / "validation.jsonl").write_bytes(validation.read_bytes())
    experiment = write_tiny_experiment(
        project / "study.toml", train="train.jsonl", validation="validation.jsonl", records="runs", steps=2
    )
    points = point_file(tmp_path, "2 -2 0.1")
    result = run_blackbox(["eval", "-e", str(experiment), str(points)])  # run in tmp_path, not in project/
    assert result.returncode == 0 and RESULT.fullmatch(result.stdout), result.stderr.decode()[-3000:]
    [record] = read_records(project / "runs" / "records.jsonl")
    snapshot = json.loads(next((project / "runs" / "experiments").glob("*.json")).read_text())
    assert snapshot["data"]["train"] == [str(project / "train.jsonl")] and record["status"] == "OK"
    (project / "train.jsonl").unlink()
    result = run_blackbox(["eval", "-e", str(experiment), str(points)])
    assert result.returncode == 1 and result.stdout == b""
    assert f"data file {project / 'train.jsonl'} does not exist" in result.stderr.decode()


def test_the_test_loss_is_recorded_apart_and_never_printed(tmp_path, tiny_experiment, tiny_data, run_blackbox) -> None:
    """``validation.test``: the loss of the test split joins the record (and each example's loss its run folder);
    the output line, the validation loss and the training are those of the same point without it."""
    from blackbox.training.data import load_rows
    from blackbox.training.testing import instruction_rows

    training_rows = [json.loads(line) for line in tiny_data[0].read_text().splitlines()[:3]]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in [*training_rows, *instruction_rows(20, seed=7)]))
    points = tmp_path / "x.txt"
    points.write_text("2 -2 0.1\n")
    plain = run_blackbox(["eval", "-e", str(tiny_experiment), str(points)])
    tested = run_blackbox(
        ["eval", "-e", str(tiny_experiment), "--set", f"data.test={test}", "--set", "validation.test=true", str(points)]
    )
    assert plain.returncode == tested.returncode == 0, tested.stderr.decode()[-3000:]
    assert plain.stdout.split()[:2] == tested.stdout.split()[:2]  # validation and train loss, nothing more
    first, second = _records(tiny_experiment)
    assert "test_loss" not in first["metrics"]
    assert second["metrics"]["validation_loss"] == first["metrics"]["validation_loss"]
    examples = json.loads((Path(second["run_dir"]) / "test_losses.json").read_text())
    seen = set(load_rows([str(tiny_data[0]), str(tiny_data[1])]))
    fresh = set(load_rows([str(test)])) - seen
    assert second["metrics"]["test_examples"] == len(examples["loss_sums"]) == len(fresh) <= 20  # training rows dropped
    assert sum(examples["loss_sums"]) / sum(examples["target_tokens"]) == pytest.approx(
        second["metrics"]["test_loss"], rel=1e-4
    )
    assert second["fingerprint"] != first["fingerprint"]
