"""Agreement figures of a round, or of the whole project, as rows a person can read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from alearn.exceptions import RoundError
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.adaptive_round import agreement_sample
from alearn.rounds.close import N_BOOT, annotator_report
from alearn.rounds.lifecycle import CLOSED
from alearn.rounds.votes import Tally, consensus, tally
from alearn.stats.agreement import agreement_report
from alearn.stats.bootstrap import Estimate
from alearn.store import Round


def agreement_summary(project: Project, *, round_number: int | None = None) -> dict[str, Any]:
    """Agreement report and annotator quality over one round (by number) or all rounds."""
    round_ids: list[int] | None = None
    if round_number is not None:
        with project.store.session() as s:
            rid = s.scalar(select(Round.id).where(Round.number == round_number))
        if rid is None:
            raise RoundError(f"there is no round {round_number}; see 'alearn status'.")
        round_ids = [rid]
    votes = tally(project, round_ids)
    ratings = votes.ratings
    out: dict[str, Any] = {"round": round_number, "n_items": len(ratings.items),
                           "n_annotators": len(ratings.annotators), "n_ratings": len(votes.votes),
                           "figures": [], "pairwise": [], "annotators": []}
    if not votes.votes:
        out["figures"].append(_row("agreement", Estimate(None, None, None, 0,
                                   "not computable, because there are no annotations yet")))
        return out
    # rounds with adaptive votes: agreement rests on their gold and audit items only
    sample, on_items = agreement_sample(project, round_ids, votes)
    if on_items is not None:
        out["agreement_items"] = on_items
    if sample is None:
        out["figures"].append(_row("agreement", Estimate(None, None, None, 0,
                                   "not computable, because no gold or audit item has its "
                                   "votes yet")))
        return out
    report = agreement_report(sample, n_boot=N_BOOT, seed=round_number or 0)
    out["report"] = report.to_dict()
    for name, label in (("percent_agreement", "percent agreement"),
                        ("fleiss_kappa", "Fleiss' kappa"),
                        ("krippendorff_alpha", "Krippendorff's alpha"),
                        ("gwet_ac1", "Gwet's AC1")):
        out["figures"].append(_row(label, getattr(report, name)))
    for cls, est in report.per_class.items():
        out["figures"].append(_row(f"Krippendorff's alpha, {cls} vs rest", est))
    for pair in report.pairwise_kappa.to_dict()["pairs"]:
        out["pairwise"].append({"a": pair["a"], "b": pair["b"], **_cells(pair)})
    quality, out["annotator_accuracy"] = _annotator_figures(project, votes, round_ids)
    for q in quality:
        out["annotators"].append({
            "annotator": q["annotator"], "items": q["n_items"],
            "accuracy (consensus)": _num(q["model_accuracy"]),
            "accuracy vs others": _num(q["loo_accuracy"]), "peer kappa": _num(q["peer_kappa"]),
            "gold accuracy": _num(q["gold_accuracy"])
            + (f" ({q['n_gold']})" if q["n_gold"] else ""),
            "median s": _num(q["median_seconds"], 1),
            "flag": "; ".join(q["reasons"]) if q["flagged"] else "",
        })
    out["quality"] = quality
    return out


def _annotator_figures(project: Project, votes: Tally, round_ids: list[int] | None
                       ) -> tuple[list[dict[str, Any]], str]:
    """Each annotator's figures, with the flag rule of round close, and a sentence on
    where its accuracy (consensus) comes from.

    A closed round shows what its close stored: the accuracy the consensus estimated
    then is the one the report and the convergence check read (the head has learned the
    round's labels since, so a fresh fit would differ). A running round gets Dawid-Skene
    over its votes from the annotators' track record of the rounds before it, as its
    close starts from; the close's model-aware consensus also reads the head, which
    this view (polled by the live page) neither fits nor cross-validates. All rounds
    together get Dawid-Skene over every vote.
    """
    round_id = round_ids[0] if round_ids else None
    if round_id is not None:
        with project.store.session() as s:
            rnd = s.get(Round, round_id)
            if rnd is not None and rnd.status == CLOSED:
                stored = round_metrics.of(rnd).annotators  # read as a close writes them
                if stored:
                    return stored, "as the round's close estimated it"
    cfg = project.config
    fit = consensus(project, votes.ratings, round_id=round_id, method="dawid_skene")
    return annotator_report(
        votes.ratings, gold=votes.gold, lead_times=votes.lead_times,
        n_classes=len(cfg.classes), min_accuracy=cfg.agreement.annotator_min_accuracy,
        consensus=fit,
    ), ("Dawid-Skene over the round's votes so far, from the annotators' track record; "
        "its close also weighs the model" if round_id is not None
        else "Dawid-Skene over every vote")


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cells(est: dict[str, Any]) -> dict[str, Any]:
    ci = (f"[{est['ci_low']:.3f}, {est['ci_high']:.3f}]"
          if est.get("ci_low") is not None else "-")
    return {"value": _num(est.get("value")), "95% CI": ci, "items": est.get("n_items"),
            "note": est.get("reason") or ""}


def _row(figure: str, est: Estimate) -> dict[str, Any]:
    return {"figure": figure, **_cells(est.to_dict())}
