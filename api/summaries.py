"""Run summaries and next-run proposals: a LangGraph graph, gather → analyse → propose → write.

The analysis is deterministic (overfitting, under-training, class imbalance, comparison with earlier
runs and the production model); only the final prose may come from an LLM. With no model
configured the `write` node uses a template, so the feature works offline and with no key.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from langgraph.graph import END, START, StateGraph

__all__ = ["RunFacts", "Summary", "build_graph", "summarise"]

OVERFIT_DROP = 0.05  # final mAP this far (relative) below the best epoch's
IMBALANCE_RATIO = 5.0


@dataclass(frozen=True)
class RunFacts:
    """What the graph knows about a run; gathered by the caller from SQL and the cluster."""

    name: str
    spec: dict[str, Any]
    phase: str
    epochs: list[dict[str, Any]]  # per epoch: epoch, mAP50, mAP50_95, losses
    class_counts: dict[str, int]
    earlier_runs: list[dict[str, Any]]  # name, mAP50_95 of finished runs of the project
    production_model: dict[str, Any] | None  # name, mAP50_95 of the model in stage production
    artifact: str | None


class ChatModel(Protocol):
    """What the graph uses of a LangChain chat model: a reply (with `content`) to a prompt."""

    def invoke(self, prompt: str, /) -> Any: ...


@dataclass(frozen=True)
class Summary:
    text: str
    findings: list[dict[str, Any]]
    proposal: dict[str, Any]
    generator: str


class State(TypedDict, total=False):
    facts: RunFacts
    findings: list[dict[str, Any]]
    proposal: dict[str, Any]
    text: str
    generator: str


def _metric(epoch: dict[str, Any]) -> float | None:
    value = epoch.get("mAP50_95")
    return float(value) if value is not None else None


def analyse(state: State) -> State:
    facts = state["facts"]
    findings: list[dict[str, Any]] = []
    scored = [(e["epoch"], m) for e in facts.epochs if (m := _metric(e)) is not None]
    if scored:
        best_epoch, best = max(scored, key=lambda item: item[1])
        last_epoch, last = scored[-1]
        if best > 0 and (best - last) / best >= OVERFIT_DROP and last_epoch - best_epoch >= 3:
            findings.append(
                {
                    "kind": "overfitting",
                    "severity": "warning",
                    "message": f"mAP50-95 peaked at {best:.3f} in epoch {best_epoch} and fell to {last:.3f} "
                    f"by epoch {last_epoch}: the model is overfitting",
                    "bestEpoch": best_epoch,
                }
            )
        elif len(scored) >= 3 and last_epoch == best_epoch and last > scored[-3][1]:
            findings.append(
                {
                    "kind": "under-trained",
                    "severity": "info",
                    "message": f"mAP50-95 was still rising at the last epoch ({last:.3f}): "
                    "more epochs should help",
                }
            )
    counts = {k: v for k, v in facts.class_counts.items()}
    if counts and min(counts.values()) >= 0 and len(counts) > 1:
        rare = min(counts, key=lambda k: counts[k])
        common = max(counts, key=lambda k: counts[k])
        if counts[rare] == 0 or counts[common] / counts[rare] >= IMBALANCE_RATIO:
            findings.append(
                {
                    "kind": "class-imbalance",
                    "severity": "warning",
                    "message": f"class {rare!r} has {counts[rare]} boxes against {counts[common]} "
                    f"for {common!r}: "
                    "collect more examples of it (edge feedback frames are a source)",
                    "rareClass": rare,
                }
            )
    final = scored[-1][1] if scored else None
    findings += _against_others(facts, final)
    return {"findings": findings}


def _against_others(facts: RunFacts, final: float | None) -> list[dict[str, Any]]:
    """The run beside the best earlier run and the production model: what to promote, what to keep."""
    findings: list[dict[str, Any]] = []
    earlier = [r for r in facts.earlier_runs if r.get("mAP50_95") is not None]
    best_earlier = max(earlier, key=lambda r: r["mAP50_95"]) if earlier else None
    if final is not None and best_earlier is not None:
        delta = final - best_earlier["mAP50_95"]
        findings.append(
            {
                "kind": "comparison",
                "severity": "info",
                "message": f"{'better' if delta > 0 else 'not better'} than the best earlier run "
                f"{best_earlier['name']} ({best_earlier['mAP50_95']:.3f}, {delta:+.3f})",
                "better": delta > 0,
            }
        )
    production = facts.production_model
    outscored = final is not None and best_earlier is not None and final <= best_earlier["mAP50_95"]
    if final is not None and facts.artifact and facts.phase == "Succeeded" and outscored:
        assert best_earlier is not None
        findings.append(  # never "promote" nor "fine-tune from" a run an earlier one beat
            {
                "kind": "earlier-is-better",
                "severity": "info",
                "message": f"{best_earlier['name']} scored higher ({best_earlier['mAP50_95']:.3f} vs "
                f"{final:.3f}): promote or fine-tune from its model rather than {facts.artifact}",
            }
        )
    elif final is not None and facts.artifact and facts.phase == "Succeeded":
        if production is None or production.get("mAP50_95") is None:
            findings.append(
                {
                    "kind": "promote",
                    "severity": "info",
                    "message": f"no production model yet: promote {facts.artifact} to staging "
                    "and roll it out",
                }
            )
        elif final > production["mAP50_95"]:
            findings.append(
                {
                    "kind": "promote",
                    "severity": "info",
                    "message": f"{facts.artifact} beats production {production['name']} "
                    f"({final:.3f} vs {production['mAP50_95']:.3f}): promote it through a canary rollout",
                }
            )
        else:
            findings.append(
                {
                    "kind": "keep",
                    "severity": "info",
                    "message": f"keep {production['name']} in production "
                    f"({production['mAP50_95']:.3f} ≥ {final:.3f})",
                }
            )
    return findings


def propose(state: State) -> State:
    facts = state["facts"]
    hyper = dict(facts.spec.get("hyperparameters") or {})
    epochs = int(hyper.get("epochs", 100))
    changes: dict[str, Any] = {}
    reasons: list[str] = []
    kinds = {f["kind"]: f for f in state["findings"]}
    if "overfitting" in kinds:
        best_epoch = int(kinds["overfitting"]["bestEpoch"])
        changes["epochs"] = max(1, best_epoch + max(2, best_epoch // 5))
        changes["patience"] = max(5, epochs // 10)
        changes["weightDecay"] = min(0.1, float(hyper.get("weightDecay", 0.0005)) * 2)
        reasons.append("stop near the best epoch and regularise more")
    elif "under-trained" in kinds:
        changes["epochs"] = min(10000, int(epochs * 1.5) + 1)
        reasons.append("train longer: the metric had not converged")
    if "class-imbalance" in kinds:
        reasons.append(f"add examples of {kinds['class-imbalance']['rareClass']!r} before the next run")
    model: dict[str, Any] = dict(facts.spec.get("model") or {})
    if facts.artifact and facts.phase == "Succeeded" and "promote" in kinds:
        model = {"baseModel": facts.artifact}
        best = "the best model so far" if facts.earlier_runs else "the project's first model"
        reasons.append(f"fine-tune from {facts.artifact}, {best}")
    spec = {**facts.spec, "model": model, "hyperparameters": {**hyper, **changes}}
    spec.pop("suspend", None)
    return {"proposal": {"changes": changes, "model": model, "reasons": reasons, "spec": spec}}


def _template(state: State) -> str:
    facts = state["facts"]
    scored = [m for e in facts.epochs if (m := _metric(e)) is not None]
    head = f"Run {facts.name} is {facts.phase}"
    if scored:
        head += (
            f" after {len(facts.epochs)} epoch(s); final mAP50-95 {scored[-1]:.3f}, best {max(scored):.3f}"
        )
    lines = [head + "."]
    lines += [f"- {f['message']}" for f in state["findings"]]
    proposal = state["proposal"]
    if proposal["changes"] or proposal["reasons"]:
        changed = ", ".join(f"{k}={v}" for k, v in proposal["changes"].items()) or "same hyperparameters"
        lines.append(f"Next run: {changed}; " + "; ".join(proposal["reasons"]) + ".")
    return "\n".join(lines)


def build_graph(chat_model: ChatModel | None = None) -> Any:
    """The compiled graph; `chat_model` (any LangChain chat model) rewrites the template's facts."""

    def write(state: State) -> State:
        draft = _template(state)
        if chat_model is None:
            return {"text": draft, "generator": "template"}
        prompt = (
            "You review object-detection training runs. Rewrite these facts as a short summary with "
            "recommendations for the ML engineer. Keep every number; add nothing that is not here.\n\n"
            + draft
        )
        reply = chat_model.invoke(prompt)
        text = getattr(reply, "content", None) or draft
        return {"text": str(text), "generator": type(chat_model).__name__}

    graph = StateGraph(State)
    graph.add_node("analyse", analyse)
    graph.add_node("propose", propose)
    graph.add_node("write", write)
    graph.add_edge(START, "analyse")
    graph.add_edge("analyse", "propose")
    graph.add_edge("propose", "write")
    graph.add_edge("write", END)
    return graph.compile()


def chat_model_from(spec: str | None) -> ChatModel | None:
    """`provider:model` through LangChain's `init_chat_model`; None keeps the offline template."""
    if not spec:
        return None
    try:  # an optional dependency, without type information: imported by name
        init_chat_model: Callable[[str], ChatModel] = importlib.import_module(
            "langchain.chat_models"
        ).init_chat_model
    except (ImportError, AttributeError) as error:  # AttributeError: a LangChain without it
        raise RuntimeError(
            f"VISIONINAPP_LLM_MODEL={spec} needs LangChain (with init_chat_model) and the provider's "
            f"package, e.g. pip install langchain langchain-openai ({error})"
        ) from None
    return init_chat_model(spec)


def summarise(facts: RunFacts, chat_model: ChatModel | None = None) -> Summary:
    state = build_graph(chat_model).invoke({"facts": facts})
    return Summary(state["text"], state["findings"], state["proposal"], state["generator"])
