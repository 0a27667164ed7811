"""The summary graph's analysis and proposal (pure), and the pluggable chat model."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from visioninapp.api.summaries import RunFacts, summarise

SPEC = {
    "model": {"architecture": "yolo11n"},
    "dataset": {"uri": "s3://d/v1"},
    "hyperparameters": {"epochs": 20},
}


def facts(scores: list[float], **overrides: object) -> RunFacts:
    values: dict[str, object] = {
        "name": "run-1",
        "spec": SPEC,
        "phase": "Succeeded",
        "epochs": [{"epoch": i + 1, "mAP50_95": s} for i, s in enumerate(scores)],
        "class_counts": {"helmet": 400, "head": 380},
        "earlier_runs": [],
        "production_model": None,
        "artifact": "run-1-v1",
    }
    values.update(overrides)
    return RunFacts(**values)  # type: ignore[arg-type]


def kinds(summary: object) -> set[str]:
    return {f["kind"] for f in summary.findings}  # type: ignore[attr-defined]


def test_overfitting_proposes_stopping_near_the_best_epoch() -> None:
    summary = summarise(facts([0.1, 0.3, 0.5, 0.45, 0.42, 0.4]))
    assert "overfitting" in kinds(summary)
    assert summary.proposal["changes"]["epochs"] == 5  # best epoch 3 + 2
    assert summary.proposal["spec"]["hyperparameters"]["epochs"] == 5
    assert summary.generator == "template" and "epoch 3" in summary.text


def test_rising_metric_proposes_more_epochs() -> None:
    summary = summarise(facts([0.1, 0.2, 0.3, 0.4]))
    assert "under-trained" in kinds(summary)
    assert summary.proposal["changes"]["epochs"] == 31


def test_class_imbalance_and_comparison_with_production() -> None:
    summary = summarise(
        facts(
            [0.2, 0.3, 0.31],
            class_counts={"helmet": 500, "head": 20},
            production_model={"name": "prod-v3", "mAP50_95": 0.4},
            earlier_runs=[{"name": "run-0", "mAP50_95": 0.25}],
        )
    )
    assert {"class-imbalance", "comparison", "keep"} <= kinds(summary)
    assert "'head'" in next(f["message"] for f in summary.findings if f["kind"] == "class-imbalance")
    assert summary.proposal["model"] == {"architecture": "yolo11n"}  # not better: no fine-tune from it


def test_better_than_production_fine_tunes_from_the_new_model() -> None:
    summary = summarise(facts([0.3, 0.5, 0.51], production_model={"name": "prod-v3", "mAP50_95": 0.4}))
    assert "promote" in kinds(summary)
    assert summary.proposal["model"] == {"baseModel": "run-1-v1"}


def test_a_configured_chat_model_writes_the_text_from_the_facts() -> None:
    chat = FakeListChatModel(responses=["Overfit after epoch 3; retrain for 5 epochs."])
    summary = summarise(facts([0.1, 0.3, 0.5, 0.45, 0.42, 0.4]), chat)
    assert summary.text == "Overfit after epoch 3; retrain for 5 epochs."
    assert summary.generator == "FakeListChatModel"
    assert "overfitting" in kinds(summary)  # the findings never depend on the model


class PromptRecorder(BaseCallbackHandler):
    """What the chat model was sent, as LangChain hands it to the model."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[Any]], **kwargs: Any
    ) -> None:
        self.prompts += [str(message.content) for batch in messages for message in batch]


def test_a_run_an_earlier_one_beat_is_never_proposed_as_the_best() -> None:
    summary = summarise(facts([0.3, 0.5, 0.51], earlier_runs=[{"name": "run-0", "mAP50_95": 0.713}]))
    assert {"comparison", "earlier-is-better"} <= kinds(summary)
    assert "promote" not in kinds(summary)
    assert summary.proposal["model"] == {"architecture": "yolo11n"}
    assert "best model so far" not in summary.text
    assert "run-0 scored higher" in summary.text


def test_the_chat_model_is_sent_the_runs_facts() -> None:
    recorder = PromptRecorder()
    chat = FakeListChatModel(responses=["canned"], callbacks=[recorder])
    run = facts(
        [0.1, 0.3, 0.5, 0.45, 0.42, 0.4],
        name="helmets-night-7",
        class_counts={"helmet": 500, "head": 20},
        earlier_runs=[{"name": "helmets-night-6", "mAP50_95": 0.37}],
    )
    summary = summarise(run, chat)
    assert summary.text == "canned"
    [prompt] = recorder.prompts
    assert "Keep every number" in prompt  # the instructions...
    # ...and every fact the template would have shown: the run, its metrics, findings and proposal.
    for fact in ("helmets-night-7", "Succeeded", "6 epoch(s)", "final mAP50-95 0.400", "best 0.500"):
        assert fact in prompt, fact
    for finding in summary.findings:
        assert finding["message"] in prompt, finding["kind"]
    assert {"overfitting", "class-imbalance", "comparison", "promote"} <= kinds(summary)
    assert "epochs=5" in prompt and "helmets-night-6" in prompt
