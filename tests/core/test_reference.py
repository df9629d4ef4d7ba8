"""The experiment reference of the docs is the one the code generates (``python -m blackbox.core.reference``)."""

from pathlib import Path

from blackbox.core.reference import reference

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "experiment.md"


def test_the_experiment_reference_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == reference(), (
        f"{PAGE} is stale: python -m blackbox.core.reference > {PAGE.relative_to(PAGE.parents[2])}"
    )


def test_it_names_every_section_and_key() -> None:
    from blackbox.core.experiment import Experiment, TrainingConfig

    text = reference()
    for name in Experiment.model_fields:
        assert f"[{name}]" in text
    for key in TrainingConfig.model_fields:
        assert f"| `{key}` |" in text
