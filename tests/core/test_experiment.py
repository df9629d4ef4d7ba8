import re
from importlib import resources

import pytest
from pydantic import ValidationError

from blackbox.core.errors import ConfigError
from blackbox.core.experiment import Experiment, load_experiment, parse_value, shipped_experiments


def test_ships_the_paper_studies_and_the_demo() -> None:
    assert {"paper_exp1", "paper_exp1_heldout", "paper_exp2", "paper_exp3", "demo"} <= set(shipped_experiments())


def test_the_held_out_variant_tests_on_the_subjects_it_does_not_optimise() -> None:
    exp = load_experiment("paper_exp1_heldout")
    assert exp.objective.benchmark is not None and exp.objective.test is not None
    optimised, tested = set(exp.objective.benchmark.tasks), set(exp.objective.test.tasks)
    assert optimised and tested and not optimised & tested
    groups = {"stem", "other", "humanities", "social_sciences"}
    assert optimised | tested == {f"instructeval_mmlu_{group}" for group in groups}
    assert exp.fingerprint() != load_experiment("paper_exp1").fingerprint()
    # downstream scores both parts by default, then the paper's other benchmarks
    labels = [b.label or b.task for b in exp.downstream_defaults]
    table = ["instructeval_bbh", "instructeval_drop", "instructeval_humaneval"]
    assert labels == ["mmlu-stem-other", "mmlu-humanities-social", *table]


BENCHMARK = {"task": "tiny_mc", "metric": "acc"}


def _benchmark_study(outputs: list[str], **sections: object) -> dict[str, object]:
    return {
        "study": {"name": "b", "budget": 5, "outputs": outputs},
        "space": [{"name": "learning_rate", "type": "R", "lower": -5, "upper": -3, "x0": -4, "decode": "log10"}],
        "hyperparameters": {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "model": {"name_or_path": "m"},
        "data": {"train": ["t.jsonl"]},
        **sections,
    }


@pytest.mark.parametrize(
    ("outputs", "sections", "message"),
    [
        (["OBJ:objective"], {"objective": {"name": "benchmark"}}, "needs [objective.benchmark]"),
        (["OBJ:validation_loss"], {"objective": {"name": "benchmark", "benchmark": BENCHMARK}}, "OBJ:objective"),
        (["OBJ:objective", "PB:guard"], {}, "no constraint of type PB named 'guard'"),
        (
            ["OBJ:objective"],
            {"constraints": [{"name": "guard", "benchmark": BENCHMARK, "at_least": 0.5}]},
            "'guard' is not printed",
        ),
        (
            ["OBJ:objective", "EB:guard"],
            {"constraints": [{"name": "guard", "benchmark": BENCHMARK, "at_least": 0.5}]},
            "no constraint of type EB",
        ),
        (
            ["OBJ:objective", "PB:guard"],
            {"constraints": [{"name": "guard", "benchmark": BENCHMARK, "at_least": 0.5, "at_most": 0.9}]},
            "at_least or at_most",
        ),
        (["OBJ:objective", "EXTRA_O:benchmark:mmlu:acc"], {}, "is not a metric"),
        (
            ["OBJ:objective", "PB:guard", "EXTRA_O:guard"],
            {"constraints": [{"name": "guard", "benchmark": BENCHMARK, "at_least": 0.5}]},
            "'guard' is not a metric",
        ),
        (["OBJ:objective"], {"objective": {"direction": "maximize"}}, "validation loss is minimised"),
    ],
)
def test_objective_and_constraints_are_checked_against_the_outputs(
    outputs: list[str], sections: dict[str, object], message: str
) -> None:
    from pydantic import ValidationError

    from blackbox.core.experiment import Experiment

    with pytest.raises(ValidationError, match=re.escape(message)):
        Experiment.model_validate(_benchmark_study(outputs, **sections))


def test_a_maximised_score_is_negated_and_a_constraint_is_satisfied_at_or_below_zero() -> None:
    from blackbox.core.experiment import Experiment
    from blackbox.core.failures import Status
    from blackbox.core.output import output_tokens

    exp = Experiment.model_validate(
        _benchmark_study(
            ["OBJ:objective", "PB:guard", "EXTRA_O:benchmark:tiny_mc:acc"],
            objective={"name": "benchmark", "direction": "maximize", "benchmark": BENCHMARK},
            constraints=[{"name": "guard", "benchmark": BENCHMARK, "at_least": -0.01, "relative_to_base": True}],
        )
    )
    metrics = {"benchmark:tiny_mc:acc": 0.62}
    assert exp.objective.value(metrics) == -0.62
    [guard] = exp.constraints
    assert guard.value(0.62, base_score=0.60) == pytest.approx(-0.03)  # better than the base: satisfied
    assert guard.value(0.55, base_score=0.60) == pytest.approx(0.04)  # 5 points worse: violated by 4
    with pytest.raises(ValueError, match="base model's score"):
        guard.value(0.55, base_score=None)
    metrics |= {"objective": -0.62, "constraint:guard": -0.03}
    assert output_tokens(exp.study.outputs, Status.OK, metrics) == ("-0.62", "-0.03", "0.62")
    # A diverged point is very bad and infeasible; a failed one is nan everywhere.
    assert output_tokens(exp.study.outputs, Status.DIVERGED, {})[:2] == ("inf", "inf")
    assert output_tokens(exp.study.outputs, Status.ERROR, metrics) == ("nan", "nan", "nan")


def test_overrides_parse_toml_values_or_strings() -> None:
    exp = load_experiment(
        "paper_exp2",
        [
            "model.name_or_path=/models/tiny",
            "training.max_steps=5",
            "training.seed=7",
            'model.target_modules=["q_proj", "k_proj"]',
            "data.train=/data/train.jsonl",
            "records.save_adapter=false",
        ],
    )
    assert exp.model.name_or_path == "/models/tiny"
    assert exp.training.max_steps == 5 and exp.training.seed == 7
    assert exp.model.target_modules == ("q_proj", "k_proj")
    assert exp.data.train == ("/data/train.jsonl",)
    assert exp.records.save_adapter is False


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment("demo", ["training.max_step=5", "model.nme=x", "training.seed=abc"])
    message = str(caught.value)
    assert "training.max_step" in message and "model.nme" in message
    with pytest.raises(ConfigError, match=r"training\.seed"):
        load_experiment("demo", ["training.seed=abc"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training=3", "is a section"),
        ("space.x=1", "no sub-keys|cannot be changed"),
        ("nothing", "KEY=VALUE"),
        ("model.dtype=float64", "model.dtype"),
        ("training.max_steps=0", "max_steps"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment("demo", [override])


def test_unknown_experiment_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="paper_exp2"):
        load_experiment("paper_exp9")


def test_space_consistency_is_checked(tmp_path) -> None:
    text = tmp_path / "x.toml"
    base = resources.files("blackbox").joinpath("experiments", "paper_exp3.toml").read_text()
    text.write_text(base.replace("learning_rate = 0.00031622776601683794  # 10^-3.5", ""))
    with pytest.raises(ConfigError, match="learning_rate is neither"):
        load_experiment(str(text))
    text.write_text(base.replace("x0 = 8", "x0 = 80"))
    with pytest.raises(ConfigError, match="x0"):
        load_experiment(str(text))


def test_parse_value() -> None:
    assert parse_value("5") == 5
    assert parse_value("1e-4") == 1e-4
    assert parse_value("true") is True
    assert parse_value("/a/b") == "/a/b"
    assert parse_value("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert parse_value('"quoted"') == "quoted"


_SPACE = '\n[[space]]\nname = "{name}"\ntype = "{type}"\nlower = {lower}\nupper = {upper}\nx0 = {lower}\n{more}\n'


@pytest.mark.parametrize(
    ("name", "kind", "bounds", "more", "message"),
    [
        ("data.max_length", "I", (32, 64), "", "the data are read and tokenised once per call"),
        ("model.name_or_path", "I", (1, 1), 'decode = "choice"\nvalues = ["a"]', "is the base model"),
        ("model.quantization", "I", (1, 2), 'decode = "choice"\nvalues = ["none", "nf4"]', "how the base model loads"),
        ("records.dir", "I", (1, 1), 'decode = "choice"\nvalues = ["x"]', "where records go"),
        ("study.budget", "I", (1, 2), "", "describes the study"),
        ("training.packing", "B", (0, 1), "", "attention implementation"),
        ("training.seed", "I", (1, 2), "", "same for every point"),
        ("training.foo", "R", (0, 1), "", "not a searchable setting; searchable: training.epochs"),
        ("lora", "I", (1, 1), 'decode = "choice"\nvalues = [{ seed = 3 }]', "'lora.seed' is not a searchable"),
        ("lora", "B", (0, 1), "", "decode 'choice' only"),
        ("lora.bias", "I", (1, 2), 'decode = "choice"\nvalues = ["none", "some"]', "lora.bias = 'some': bias: Input"),
        ("lora.init_lora_weights", "I", (1, 1), 'decode = "choice"\nvalues = ["loftq"]', "needs model.quantization"),
        ("training.warmup_ratio", "R", (0, 1), "", "warmup_ratio = 1.0"),
        ("training.epochs", "I", (1, 2), "", "max_steps (set) overrides it"),
        ("lora_dropout", "B", (0, 1), "", "a binary variable decodes"),
        ("lora_r", "I", (1, 2), 'decode = "choice"\nvalues = [4, "8"]', "the choices of lora_r are numbers"),
    ],
)
def test_variables_that_cannot_be_searched_are_refused_at_load_time(
    tmp_path, name: str, kind: str, bounds: tuple[int, int], more: str, message: str
) -> None:
    base = resources.files("blackbox").joinpath("experiments", "demo.toml").read_text()
    path = tmp_path / "x.toml"
    path.write_text(base + _SPACE.format(name=name, type=kind, lower=bounds[0], upper=bounds[1], more=more))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(str(path))


def test_the_lora_section_and_target_presets() -> None:
    experiment = load_experiment("demo", ["lora.use_dora=true", "model.target_modules=all-linear"])
    assert experiment.lora.use_dora and experiment.model.target_modules == "all-linear"
    assert load_experiment("demo").fingerprint() != experiment.fingerprint()
    with pytest.raises(ConfigError, match="target_modules"):
        load_experiment("demo", ["model.target_modules=everything"])
    with pytest.raises(ConfigError, match="init_lora_weights"):
        load_experiment("demo", ["lora.init_lora_weights=pissa_niter_"])


def test_several_starting_points_as_x0_lists() -> None:
    """``x0`` as a list per variable: one starting point each; a single value is every starting point's."""
    from blackbox.core.nomad import render_params
    from blackbox.core.space import SearchSpace

    study = _benchmark_study(["OBJ:validation_loss"])
    study["space"] = [
        {"name": "learning_rate", "type": "R", "lower": -5, "upper": -3, "x0": [-4, -3.5, -5], "decode": "log10"},
        {"name": "lora_r", "type": "I", "lower": 1, "upper": 4, "x0": 2, "decode": "power_of_two"},
    ]
    study["hyperparameters"] = {"lora_alpha": 8, "lora_dropout": 0.0}
    experiment = Experiment.model_validate(study)
    space = SearchSpace.from_experiment(experiment)
    assert space.starting_points == ((-4.0, 2.0), (-3.5, 2.0), (-5.0, 2.0)) and space.x0 == (-4.0, 2.0)
    text = render_params(experiment, experiment_ref="e.toml")
    assert [line for line in text.splitlines() if line.startswith("X0")] == [
        "X0 ( -4 2 )",
        "X0 1 ( -3.5 2 )",  # indexed: a second plain X0 line would replace the first (NOMAD 4)
        "X0 2 ( -5 2 )",
    ]
    study["space"][1]["x0"] = [1, 2]  # lists of other lengths
    with pytest.raises(ValidationError, match="the x0 lists name the same number of starting points"):
        Experiment.model_validate(study)
    study["space"][1]["x0"] = [2, 2.5]
    with pytest.raises(ValidationError, match=r"x0 of an integer variable must be integral, got 2\.5"):
        Experiment.model_validate(study)


def test_checkpoints_and_stopping_are_checked_and_change_no_fingerprint() -> None:
    demo = load_experiment("demo")
    # As before checkpoints and stopping existed; it changed twice since, when its capped training set became a
    # random sample (tests/training/test_data.py), and when its learning-rate bound widened (the space counts).
    assert demo.fingerprint() == "2db6be0fb2918679"
    stopping = load_experiment(
        "demo", ["validation.checkpoints=[0.25, 0.5, 0.75]", "validation.checkpoint_rows=8", "stopping.rule=median"]
    )
    assert stopping.fingerprint() == demo.fingerprint()
    # The test split's settings leave it too, and so does the fused kernels' default (before it: none).
    assert load_experiment("demo", ["data.test=embedded:chitchat/test"]).fingerprint() == demo.fingerprint()
    assert load_experiment("demo", ["training.fused_kernels=none"]).fingerprint() == demo.fingerprint()
    assert load_experiment("demo", ["training.fused_kernels=liger"]).fingerprint() != demo.fingerprint()
    with pytest.raises(ConfigError, match=r"set \[validation\] checkpoints"):
        load_experiment("demo", ["stopping.rule=incumbent"])
    with pytest.raises(ConfigError, match=r"each in \(0, 1\)"):
        load_experiment("demo", ["validation.checkpoints=[0.5, 1.0]"])
    with pytest.raises(ConfigError, match="checkpoints must increase"):
        load_experiment("demo", ["validation.checkpoints=[0.5, 0.25]"])
    with pytest.raises(ConfigError, match="compares validation-loss curves"):
        load_experiment("paper_exp1_heldout", ["validation.checkpoints=[0.5]", "stopping.rule=median"])


def _write_beside(folder, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.toml"
    path.write_text(text)
    return path


_BESIDE = """
[study]
name = "beside"
budget = 2

[[space]]
name = "learning_rate"
type = "R"
lower = -5
upper = -3
x0 = -4
decode = "log10"

[hyperparameters]
lora_r = 4
lora_alpha = 8
lora_dropout = 0.0

[model]
name_or_path = "{model}"

[data]
train = "train.jsonl"
validation = ["data/validation.jsonl", "databricks/databricks-dolly-15k", "embedded:chitchat/validation"]

[records]
dir = "runs"

[[downstream]]
task = "mine"
include_path = "tasks"
"""


def test_relative_paths_of_an_experiment_file_are_read_from_its_folder(tmp_path, monkeypatch) -> None:
    """Data kept beside the experiment is found from any working directory; hub names stay names."""
    folder = tmp_path / "project"
    (folder / "tiny").mkdir(parents=True)
    path = _write_beside(folder, _BESIDE.format(model="tiny"))
    monkeypatch.chdir(tmp_path)  # elsewhere
    exp = load_experiment("project/experiment.toml")
    assert exp.data.train == (str(folder / "train.jsonl"),)  # a data file: even before it exists
    assert exp.data.validation == (
        str(folder / "data" / "validation.jsonl"),
        "databricks/databricks-dolly-15k",  # a hub data set
        "embedded:chitchat/validation",
    )
    assert exp.model.name_or_path == str(folder / "tiny")  # a folder beside the file
    assert exp.records_dir == folder / "runs" and exp.downstream[0].include_path == str(folder / "tasks")
    hub = load_experiment(str(_write_beside(tmp_path / "other", _BESIDE.format(model="meta-llama/Llama-2-7b-hf"))))
    assert hub.model.name_or_path == "meta-llama/Llama-2-7b-hf"  # no such folder: a hub id
    assert load_experiment(str(path)).fingerprint() == exp.fingerprint()  # wherever it is loaded from


def test_relative_paths_of_overrides_are_read_from_the_working_directory(tmp_path, monkeypatch) -> None:
    from blackbox.core.experiment import absolute_overrides

    path = _write_beside(tmp_path / "project", _BESIDE.format(model="m"))
    monkeypatch.chdir(tmp_path)
    exp = load_experiment(str(path), ["data.train=mine.jsonl", "records.dir=out"])
    assert exp.data.train == (str(tmp_path / "mine.jsonl"),) and exp.records_dir == tmp_path / "out"
    items = ("data.train=mine.jsonl", "training.max_steps=5", "model.name_or_path=org/model", "records.dir=.")
    assert absolute_overrides(items) == (
        f"data.train={tmp_path / 'mine.jsonl'}",
        "training.max_steps=5",
        "model.name_or_path=org/model",
        f"records.dir={tmp_path}",
    )


def test_a_permission_to_run_code_leaves_the_fingerprint_alone() -> None:
    """Whether a benchmark may run code changes no result: studies keep their fingerprint (and resume)."""
    exp = load_experiment("paper_exp1")
    benchmark = exp.objective.benchmark
    assert benchmark is not None and not benchmark.allow_code_execution

    def with_benchmark(**update: object) -> str:
        objective = exp.objective.model_copy(update={"benchmark": benchmark.model_copy(update=update)})
        return exp.model_copy(update={"objective": objective}).fingerprint()

    assert with_benchmark(allow_code_execution=True) == exp.fingerprint() != with_benchmark(num_fewshot=3)


def test_decoding_as_the_model_says_is_another_score() -> None:
    """A benchmark decoded by the model's own generation settings (InstructEval's way) is another setting of the
    result and another score; decoding as the task says (the default) leaves fingerprints as they were."""
    exp = load_experiment("paper_exp1")
    benchmark = exp.objective.benchmark
    assert benchmark is not None and benchmark.decoding == "task"
    assert exp.fingerprint() == "d4275a4972b45c8f"  # as before the setting existed
    model = benchmark.model_copy(update={"decoding": "model"})
    sampled = exp.model_copy(update={"objective": exp.objective.model_copy(update={"benchmark": model})})
    assert sampled.fingerprint() != exp.fingerprint()
    assert model.key == "benchmark:instructeval_mmlu-model-decoding:exact_match"
    assert benchmark.key == "benchmark:instructeval_mmlu:exact_match"


def test_a_test_split_counts_in_the_fingerprint_only_where_its_loss_is_computed() -> None:
    demo = load_experiment("demo")
    with_test = load_experiment("demo", ["data.test=embedded:chitchat/test", "data.max_test_rows=100"])
    assert with_test.data.test == ("embedded:chitchat/test",)
    # A study that never computes the test loss runs the same evaluations: the same fingerprint, so a study of an
    # experiment from before data.test resumes from its records.
    assert with_test.fingerprint() == demo.fingerprint()
    tested = load_experiment("demo", ["data.test=embedded:chitchat/test", "validation.test=true"])
    assert tested.fingerprint() != demo.fingerprint()
    with pytest.raises(ConfigError, match=r"validation.test .* data.test"):
        load_experiment("demo", ["validation.test=true"])
