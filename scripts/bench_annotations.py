#!/usr/bin/env python
"""Human annotations per trusted label: the whole loop offline, counted in clicks.

select -> simulated annotators vote -> consensus -> trusted labels -> retrain, scored on a
held-out test set against the true labels. Everything that decides is alearn's own:
the head (``head_from_settings``), the strategies (``choose_strategy``,
``select_from_pool``), the consensus methods (``get_consensus``), the adaptive-votes rule
(``votes_wanted``), the out-of-sample probabilities (``out_of_sample_proba``) and the
label-error ranking (``rank_label_errors``). Embeddings are those of
``bench_label_efficiency.py`` (same cache).

Panels (each annotator has a per-class confusion: accuracy on the diagonal, its errors
spread over the other classes by a seeded Dirichlet draw per class):
- ``team``: 0.97, 0.93, 0.88, 0.80;
- ``crowd``: 0.95, 0.9, 0.8, 0.65 and one answering at random; the 0.8 and 0.65
  annotators share a bias: 80% of their errors on the two classes the full-pool head
  confuses most go to the other class of that pair.
Each item's votes come from the panel in a seeded random order without repeats; for a
given seed and panel every configuration sees the same answer from the same annotator.

Configurations:
- ``random_1``: random selection, 1 vote, majority;
- ``random_3_majority``: random, 3 votes, majority (a plain Label Studio with overlap 3);
- ``today``: 'auto' selection, 3 votes, Dawid-Skene;
- ``new_majority`` and ``new_dawid_skene``: ``new`` with majority vote (adaptive votes
  then read Dawid-Skene's posterior, as a live round does) or Dawid-Skene in place of the
  model-aware consensus;
- ``new``: 'auto', adaptive votes (``votes_wanted``: min 1, max 3, target 0.95 on the
  consensus posterior; a random ``--audit-rate`` slice of each batch gets 3), model-aware
  consensus, and error review: before each round the top ``--review`` ranked labels whose
  consensus posterior is below the confidence target go to a reviewer, who gives the
  true label (one click each).
Each close computes the round's consensus over the round's votes, starting from each
annotator's track record of the rounds closed before (``alearn.rounds.annotator_record``),
as a live close does, and so does the adaptive-votes posterior while the round runs
(agreement defaults: tie_policy 'adjudicate', min_confidence 0.6); items whose consensus
is not 'agreed' get no trusted label (the adjudication they would get costs nothing
here). The error ranking pools every vote, as the product's does.

Per configuration and seed: human annotations (votes + reviews) until the head reaches
``--target`` x the full-pool accuracy (head on every pool item's true label), and the same
for balanced accuracy (macro recall); at that point the trusted labels' accuracy against
the truth, and the AUROC with which the error ranking (and, alone, the consensus
confidence) finds the wrong trusted labels that the reviews left; the ranking's AUROC
over the consensus labels as the consensus gave them, before any review corrected one
(``ranking_auroc_as_given``: reviewed labels put back, the head cross-validated on
those labels; for configurations without review the two are the same); and, for
adaptive votes, how the extra votes were spent (items ``--min-votes`` settled, and how
many of those the first vote got wrong; items asked for more, by whether their first
vote was right) and how many reviews corrected a label. A separate experiment gives
consensus accuracy at exactly 1, 2 and 3 votes per item on ``--consensus-items`` random
items:
majority, Dawid-Skene, model-aware (model: cross-validated on the majority labels) and
cleanlab's CROWDLAB (``get_label_quality_multiannotator``; it refuses one vote per item).

Example::

    nice .venv/bin/python scripts/bench_annotations.py --seeds 3 --out annotations.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_label_efficiency import _compact_json, embed_split  # noqa: E402

from alearn.config_sections import (  # noqa: E402
    AgreementConfig,
    HeadConfig,
    ReviewConfig,
    RoundsConfig,
)
from alearn.model.out_of_sample import aligned_proba, out_of_sample_proba  # noqa: E402
from alearn.model.training import head_from_settings  # noqa: E402
from alearn.query.selection import resolve_strategy, select_from_pool  # noqa: E402
from alearn.query.strategies import choose_strategy  # noqa: E402
from alearn.rounds.adaptive_round import audit_slice  # noqa: E402
from alearn.rounds.annotator_record import round_counts  # noqa: E402
from alearn.rounds.label_errors import rank_label_errors  # noqa: E402
from alearn.stats.adaptive import votes_wanted  # noqa: E402
from alearn.stats.consensus import get_consensus  # noqa: E402

log = logging.getLogger("bench_annotations")
PANELS = {"team": [0.97, 0.93, 0.88, 0.80], "crowd": [0.95, 0.9, 0.8, 0.65, None]}
BIASED = {"team": [], "crowd": [2, 3]}
BIAS_SHARE = 0.8
CONFIGS = {  # strategy, votes (None: adaptive), consensus, error review
    "random_1": ("random", 1, "majority", False),
    "random_3_majority": ("random", 3, "majority", False),
    "today": ("auto", 3, "dawid_skene", False),
    "new": ("auto", None, "model_aware", True),
    "new_dawid_skene": ("auto", None, "dawid_skene", True),
    "new_majority": ("auto", None, "majority", True),
}


def panel_confusions(panel: str, k: int, swap: tuple[int, int], seed: int) -> np.ndarray:
    """(n_annotators, k, k): P(says l | true c) at [j, c, l]."""
    rng = np.random.default_rng(10_000 + seed)
    out = []
    for j, acc in enumerate(PANELS[panel]):
        if acc is None:
            out.append(np.full((k, k), 1.0 / k))
            continue
        m = np.zeros((k, k))
        for c in range(k):
            others = [x for x in range(k) if x != c]
            m[c, others] = (1 - acc) * rng.dirichlet(np.ones(k - 1))
            if j in BIASED[panel] and c in swap:
                other = swap[1] if c == swap[0] else swap[0]
                m[c, others] *= 1 - BIAS_SHARE
                m[c, other] += (1 - acc) * BIAS_SHARE
            m[c, c] = acc
        out.append(m)
    return np.array(out)


class Annotators:
    """Every (item, annotator) answer and each item's annotator order, drawn once."""

    def __init__(self, conf: np.ndarray, truth: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n, a = len(truth), conf.shape[0]
        cum = np.cumsum(conf[:, truth, :], axis=2).transpose(1, 0, 2)  # (n, a, k)
        self.answers = (rng.random((n, a))[..., None] > cum).sum(2).clip(0, conf.shape[1] - 1)
        self.order = np.argsort(rng.random((n, a)), axis=1)

    def ratings(self, items: np.ndarray, votes: np.ndarray) -> np.ndarray:
        """Ratings (len(items), n_annotators): the first votes[i] annotators of each."""
        R = np.full((len(items), self.answers.shape[1]), -1)
        for r, (i, v) in enumerate(zip(items.tolist(), votes.tolist(), strict=True)):
            who = self.order[i, :v]
            R[r, who] = self.answers[i, who]
        return R


def auroc(wrong: np.ndarray, score: np.ndarray) -> float | None:
    return None if wrong.all() or not wrong.any() else round(float(roc_auc_score(wrong, score)), 4)


class Run:
    """One configuration, seed and panel: the loop until both targets or the budget."""

    def __init__(self, config: str, d: dict, ann: Annotators, args: argparse.Namespace,
                 seed: int) -> None:
        self.strategy, self.fixed, self.method, self.review = CONFIGS[config]
        self.d, self.ann, self.args = d, ann, args
        self.X, self.truth = d["Xp"], d["yp"].astype(int)
        self.k = len(d["classes"])
        self.stats = (self.X.mean(0, dtype=np.float64), self.X.std(0, dtype=np.float64))
        self.rng = np.random.default_rng(seed)  # selection: the same stream in every config
        self.seed, self.round = seed, 0
        n = len(self.X)
        self.votes = np.zeros(n, dtype=int)  # votes per item
        self.trusted = np.full(n, -1)  # trusted label per item
        self.given = np.full(n, -1)  # the label the consensus gave, before any review
        self.reviewed = np.zeros(n, dtype=bool)
        self.clicks = 0
        # what the adaptive votes and the reviews bought (see count_asked)
        self.tally = dict.fromkeys(("settled_at_min_votes", "settled_at_min_votes_wrong",
                                    "asked_more_first_right", "asked_more_first_wrong",
                                    "reviews_corrected"), 0)
        self.record = np.zeros((ann.answers.shape[1], self.k, self.k))  # track record
        self.agree = AgreementConfig()
        self.rounds = RoundsConfig(strategy=self.strategy)

    def new_head(self):  # noqa: ANN201
        return head_from_settings(HeadConfig(), self.stats)

    def consensus(self, rows: np.ndarray, P: np.ndarray | None,  # noqa: ANN201
                  method: str | None = None, *, carried: bool = False):
        """The consensus of ``rows``' votes; ``carried``: start from the annotators' track
        record of the rounds closed so far, as a live round's consensus does."""
        method = method or self.method
        extra: dict = {"pred_probs": P,
                       "gold": np.where(self.reviewed[rows], self.truth[rows], -1)} \
            if method == "model_aware" else {}
        if carried and method != "majority" and not self.args.no_track_record:
            extra["prior_counts"] = self.record
        return get_consensus(method)(
            self.ann.ratings(rows, self.votes[rows]), n_classes=self.k,
            tie_policy=self.agree.tie_policy, min_confidence=self.agree.min_confidence, **extra)

    def probs(self, head, rows: np.ndarray) -> np.ndarray | None:  # noqa: ANN001
        """Out-of-sample probabilities of ``rows``: cross-validated for trusted items, the
        head's for the others (what alearn.model.out_of_sample.project_proba gives)."""
        if head is None:
            return None
        T = np.flatnonzero(self.trusted >= 0)
        got = out_of_sample_proba(self.new_head, self.X[T], self.trusted[T], self.k)
        P = aligned_proba(head, self.X[rows], self.k)
        if got is not None:
            pos = {int(t): r for r, t in enumerate(T.tolist())}
            for r, item in enumerate(rows.tolist()):
                if item in pos:
                    P[r] = got[0][pos[item]]
        return P

    def close(self, batch: np.ndarray, P_of: dict[int, np.ndarray] | None) -> None:
        """The round's consensus, as a live close computes it: over the batch's votes,
        from the track record of the rounds before; 'agreed' items get a trusted label,
        and the round's soft counts join the record."""
        rows = np.sort(batch)
        P = None if P_of is None else np.array([P_of[int(i)] for i in rows])
        cons = self.consensus(rows, P, carried=True)
        self.trusted[rows] = self.given[rows] = np.where(cons.status == "agreed",
                                                         cons.labels, -1)
        self.trusted[self.reviewed] = self.truth[self.reviewed]
        if self.method == "majority":  # as the product records it: Dawid-Skene's
            if self.fixed is not None:
                return  # no posterior ever reads the record
            cons = self.consensus(rows, P, "dawid_skene", carried=True)
        a = self.record.shape[0]
        counts = round_counts(range(a), self.ann.ratings(rows, self.votes[rows]),
                              cons.posteriors, np.full(len(rows), -1))
        for j, c in counts.items():
            self.record[int(j)] += np.asarray(c)

    def error_ranking(self, rows: np.ndarray, P: np.ndarray | None) -> dict:
        """AUROCs with which the ranking and the consensus posterior of the label alone
        find the wrong ones among the trusted, unreviewed consensus labels of ``rows``;
        the ranking's doubtful labels (as item ids), most likely wrong first."""
        cons = self.consensus(rows, P if self.method == "model_aware" else None)
        ok = (self.trusted[rows] >= 0) & ~self.reviewed[rows]
        sel, y = rows[ok], self.trusted[rows][ok]
        wrong = y != self.truth[sel]
        post = cons.posteriors[ok]
        out: dict = {"n": int(len(sel)), "wrong": int(wrong.sum()), "order": [],
                     "confidence_auroc": auroc(wrong, -post[np.arange(len(y)), y]),
                     "ranking_auroc": None}
        if P is None or len(np.unique(y)) < 2:
            return out
        # the product ranks with the model-aware posterior of every vote, whatever the
        # consensus method (alearn.rounds.label_errors.project_label_errors)
        ma = cons if self.method == "model_aware" else self.consensus(rows, P, "model_aware")
        gate = self.args.confidence_target if self.args.review_below is None \
            else self.args.review_below
        ranking = rank_label_errors(y, P[ok], consensus_posteriors=ma.posteriors[ok],
                                    settled_at=gate)
        out["ranking_auroc"] = auroc(wrong, ranking.score)
        out["order"] = [int(sel[r]) for r in ranking.order.tolist() if ranking.doubtful[r]]
        return out

    def ranking_as_given(self, rows: np.ndarray) -> dict:
        """The ranking's AUROC over the consensus labels as the consensus gave them: the
        reviewed ones back at their consensus label and no longer known, the head
        cross-validated on those labels. This is how well the ranking finds wrong
        consensus labels (as CROWDLAB's AUROC is measured), before the reviews have
        corrected the ones it found; ``error_ranking`` measures what they left."""
        trusted, reviewed = self.trusted, self.reviewed
        self.trusted, self.reviewed = self.given.copy(), np.zeros_like(reviewed)
        try:
            T = np.flatnonzero(self.trusted >= 0)
            if len(np.unique(self.trusted[T])) < 2:
                return {}
            head = self.new_head().fit(self.X[T], self.trusted[T])
            info = self.error_ranking(rows, self.probs(head, rows))
        finally:
            self.trusted, self.reviewed = trusted, reviewed
        return {"ranking_auroc_as_given": info["ranking_auroc"], "n_as_given": info["n"],
                "wrong_as_given": info["wrong"]}

    def run(self, target: float, btarget: float) -> dict:
        a, Xt, yt = self.args, self.d["Xt"], self.d["yt"]
        classes = [str(c) for c in range(self.k)]
        goals = {"accuracy": target, "balanced_accuracy": btarget}
        reach: dict[str, dict | None] = dict.fromkeys(goals)
        curve = []
        while True:
            T = np.flatnonzero(self.trusted >= 0)
            head = self.new_head().fit(self.X[T], self.trusted[T]) \
                if len(np.unique(self.trusted[T])) >= 2 else None
            pred = head.predict(Xt) if head is not None else np.zeros(len(yt), dtype=int)
            score = {"accuracy": float(np.mean(pred == yt)),
                     "balanced_accuracy": float(balanced_accuracy_score(yt, pred))}
            curve.append((self.clicks, len(T), *(round(v, 4) for v in score.values())))
            hit = [m for m in goals if reach[m] is None and score[m] >= goals[m]]
            voted = np.flatnonzero(self.votes > 0)
            uses_model = self.method == "model_aware" or self.review
            P = self.probs(head, voted) if (hit or uses_model) and head is not None else None
            info = self.error_ranking(voted, P) if (hit or self.review) and len(voted) else None
            as_given = self.ranking_as_given(voted) if hit and len(voted) else {}
            for m in hit:
                reach[m] = {
                    "annotations": self.clicks, "trusted": int(len(T)),
                    "trusted_accuracy": round(float(np.mean(self.trusted[T] == self.truth[T])),
                                              4),
                    "reviews": int(self.reviewed.sum()), **self.tally,
                    **{x: (info or {}).get(x) for x in ("ranking_auroc", "confidence_auroc",
                                                        "n", "wrong")}, **as_given}
            if all(reach.values()) or self.clicks >= a.budget:
                break
            if self.review and info is not None and info["order"]:
                fix = np.asarray(info["order"][: a.review], dtype=int)
                self.tally["reviews_corrected"] += int(
                    (self.trusted[fix] != self.truth[fix]).sum())
                self.reviewed[fix] = True
                self.trusted[fix] = self.truth[fix]
                self.clicks += len(fix)
            pool = np.flatnonzero(self.votes == 0)
            counts = Counter(classes[c] for c in self.trusted[T].tolist())
            name = resolve_strategy(choose_strategy(self.rounds, counts, classes),
                                    has_head=head is not None,
                                    cold_start=self.rounds.cold_start_strategy)
            picks, _ = select_from_pool(name, a.batch_size, X_pool=self.X[pool], head=head,
                                        X_labeled=self.X[voted], rng=self.rng)
            batch = pool[picks]
            P_of = None
            if self.method == "model_aware" and head is not None and P is not None:
                P_of = dict(zip(voted.tolist(), P, strict=True))
                P_of.update(zip(batch.tolist(), aligned_proba(head, self.X[batch], self.k),
                                strict=True))
            self.collect(batch, P_of)
            self.close(batch, P_of)
        return {"reach": reach, "rounds": len(curve) - 1, "annotations": self.clicks,
                "reviews": int(self.reviewed.sum()), "tally": self.tally, "curve": curve}

    def settled_posterior(self, rows: np.ndarray, P: np.ndarray | None) -> np.ndarray:
        """Each row's label posterior as a live round's adaptive votes read it
        (``alearn.rounds.adaptive_round.posterior``): 0 unless the consensus agrees on a
        label; with majority, whose vote share is no posterior, Dawid-Skene's."""
        cons = self.consensus(rows, P, carried=True)
        conf = cons.confidence
        if self.method == "majority":
            conf = self.consensus(rows, P, "dawid_skene", carried=True).confidence
        return np.where(np.asarray(cons.status).astype(str) == "agreed", conf, 0.0)

    def collect(self, batch: np.ndarray, P_of: dict | None) -> None:
        """Votes for a new batch: fixed, or adaptive by votes_wanted on the posterior."""
        a = self.args
        if self.fixed is not None:
            self.votes[batch] = self.fixed
            self.clicks += self.fixed * len(batch)
            return
        # the product's audit slice (seeded by the round, as a round's number seeds it)
        self.round += 1
        audit = np.isin(batch, audit_slice(batch.tolist(), [], a.audit_rate,
                                           seed=self.round + 1000 * self.seed))
        self.votes[batch] = a.min_votes
        self.clicks += a.min_votes * len(batch)
        rows = np.sort(batch)  # the round's votes, as a live round's posterior reads them
        pos = np.searchsorted(rows, batch)
        while True:
            P = None if P_of is None else np.array([P_of[int(i)] for i in rows])
            conf = self.settled_posterior(rows, P)[pos]
            want = votes_wanted(conf, self.votes[batch], min_votes=a.min_votes,
                                max_votes=a.max_votes, target=a.confidence_target,
                                always_max=audit)
            extra = want - self.votes[batch]
            if not extra.any():
                self.count_asked(batch[~audit])
                return
            self.votes[batch] = want
            self.clicks += int(extra.sum())

    def count_asked(self, items: np.ndarray) -> None:
        """Tally, over a batch's items outside the audit slice, those ``--min-votes``
        settled (and how many of them the first vote got wrong) and those asked for more
        (by whether the first vote was right): how well the posterior spends extra votes."""
        first = self.ann.answers[items, self.ann.order[items, 0]]
        right = first == self.truth[items]
        one = self.votes[items] == self.args.min_votes
        t = self.tally
        t["settled_at_min_votes"] += int(one.sum())
        t["settled_at_min_votes_wrong"] += int((one & ~right).sum())
        t["asked_more_first_right"] += int((~one & right).sum())
        t["asked_more_first_wrong"] += int((~one & ~right).sum())


def consensus_accuracy(d: dict, ann: Annotators, n_items: int, seed: int) -> dict:
    """Consensus accuracy against the truth at exactly 1, 2 and 3 votes per item."""
    from cleanlab.multiannotator import get_label_quality_multiannotator

    rng = np.random.default_rng(seed)
    items = np.sort(rng.choice(len(d["Xp"]), n_items, replace=False))
    X, truth, k = d["Xp"][items], d["yp"][items].astype(int), len(d["classes"])
    stats = (d["Xp"].mean(0, dtype=np.float64), d["Xp"].std(0, dtype=np.float64))
    out: dict = {}
    for v in (1, 2, 3):
        R = ann.ratings(items, np.full(n_items, v))
        ds = get_consensus("dawid_skene")(R, n_classes=k, tie_policy="first")
        mv = get_consensus("majority")(R, n_classes=k, tie_policy="first")
        got = out_of_sample_proba(lambda: head_from_settings(HeadConfig(), stats), X,
                                  mv.labels, k)
        P = got[0] if got is not None else None
        ma = get_consensus("model_aware")(R, n_classes=k, tie_policy="first", pred_probs=P)
        row = {"majority": float(np.mean(mv.labels == truth)),
               "dawid_skene": float(np.mean(ds.labels == truth)),
               "model_aware": float(np.mean(ma.labels == truth)),
               "model_alone": None if P is None else float(np.mean(P.argmax(1) == truth)),
               "model_weight": ma.model_weight, "crowdlab": None,
               "wrong_auroc_dawid_skene": auroc(ds.labels != truth, -ds.confidence),
               "wrong_auroc_model_aware": auroc(ma.labels != truth, -ma.confidence)}
        if v > 1 and P is not None:
            Rn = np.where(R >= 0, R, np.nan).astype(float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lq = get_label_quality_multiannotator(Rn, P, verbose=False,
                                                      return_detailed_quality=False,
                                                      return_annotator_stats=False)
            row["crowdlab"] = float(np.mean(
                lq["label_quality"]["consensus_label"].to_numpy() == truth))
        out[str(v)] = {key: None if val is None else round(float(val), 4)
                       for key, val in row.items()}
    return out


def _median(values: list) -> float | None:
    vals = [np.inf if v is None else v for v in values]
    m = float(np.median(vals)) if vals else np.inf
    return None if np.isinf(m) else m


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians over seeds per configuration, and the new default against today's."""
    out: dict = {}
    for name, per_seed in runs.items():
        row: dict = {}
        for m in ("accuracy", "balanced_accuracy"):
            reach = [r["reach"][m] for r in per_seed]
            row[f"annotations_to_{m}_target"] = [x and x["annotations"] for x in reach]
            row[f"median_annotations_to_{m}_target"] = _median(
                [x and x["annotations"] for x in reach])
        acc = [r["reach"]["accuracy"] for r in per_seed]
        for key in ("trusted", "trusted_accuracy", "ranking_auroc", "confidence_auroc",
                    "ranking_auroc_as_given", "reviews"):
            row[f"median_{key}"] = _median([x.get(key) for x in acc
                                            if x and x.get(key) is not None])
        out[name] = row
    for m in ("accuracy", "balanced_accuracy"):
        key = f"median_annotations_to_{m}_target"
        new, today = out.get("new", {}).get(key), out.get("today", {}).get(key)
        out.setdefault("ratios", {})[f"new_vs_today_{m}"] = \
            None if not new or not today else round(new / today, 3)
    return out


_SHARED: dict = {}  # what every task reads (set before the worker processes fork)


def _task(task: tuple[str, str, int]) -> dict:
    """One (panel, configuration or 'consensus', seed), on one BLAS thread."""
    panel, config, seed = task
    d, args, swap = _SHARED["d"], _SHARED["args"], _SHARED["swap"]
    with threadpool_limits(limits=1, user_api="blas"):
        ann = Annotators(panel_confusions(panel, len(d["classes"]), swap, seed), d["yp"], seed)
        t0 = time.perf_counter()
        if config == "consensus":
            r = consensus_accuracy(d, ann, args.consensus_items, seed)
        else:
            r = Run(config, d, ann, args, seed).run(*_SHARED["goals"])
            if not args.curves:
                r.pop("curve")
        r["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("%s %s seed %d: %s", panel, config, seed, json.dumps(r))
    return r


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist",
                   help="digits | fashion-mnist | imagefolder:PATH")
    p.add_argument("--pool", type=int, default=10000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--panels", default="team,crowd")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--budget", type=int, default=4000, help="Most annotations per run.")
    p.add_argument("--target", type=float, default=0.95, help="Fraction of full accuracy.")
    p.add_argument("--min-votes", type=int, default=RoundsConfig().min_votes,
                   help="rounds.min_votes (new).")
    p.add_argument("--max-votes", type=int, default=RoundsConfig().max_votes,
                   help="rounds.max_votes (new).")
    p.add_argument("--confidence-target", type=float,
                   default=AgreementConfig().confidence_target,
                   help="agreement.confidence_target (new).")
    p.add_argument("--audit-rate", type=float, default=AgreementConfig().audit_rate,
                   help="agreement.audit_rate (new).")
    p.add_argument("--review", type=int, default=ReviewConfig().max_per_round,
                   help="review.max_per_round: doubtful labels reviewed per round (new).")
    p.add_argument("--review-below", type=float, default=None,
                   help="Review only labels whose posterior is below this, in [0, 1] (0: "
                        "no review; default: the confidence target, as the product does).")
    p.add_argument("--no-track-record", action="store_true",
                   help="Each round's consensus without the annotators' track record of "
                        "the rounds before (as alearn did before it kept one).")
    p.add_argument("--consensus-items", type=int, default=1000,
                   help="Items of the 1-3 votes consensus experiment (0: skip it).")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="auto")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--cache-dir", default="~/.cache/alearn-bench")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--curves", action="store_true", help="Keep each run's curve.")
    p.add_argument("--jobs", type=int, default=1,
                   help="Worker processes, one (panel, configuration, seed) run each.")
    p.add_argument("--out", default=None, help="Also write the JSON here.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.review_below is not None and not 0.0 <= args.review_below <= 1.0:
        p.error(f"--review-below {args.review_below}: give a posterior in [0, 1]")
    configs = [c for c in args.configs.split(",") if c]
    panels = [x for x in args.panels.split(",") if x]
    bad = [c for c in configs if c not in CONFIGS] + [x for x in panels if x not in PANELS]
    if bad:
        p.error(f"unknown configuration or panel {bad}; configurations: {list(CONFIGS)}, "
                f"panels: {list(PANELS)}")
    d = embed_split(args)
    d["yp"], d["yt"] = d["yp"].astype(int), d["yt"].astype(int)
    k = len(d["classes"])
    result: dict = {"command": " ".join(["python", "scripts/bench_annotations.py",
                                         *(argv if argv is not None else sys.argv[1:])]),
                    "dataset": args.dataset, "pool": len(d["Xp"]), "test": len(d["Xt"]),
                    "batch_size": args.batch_size, "seeds": args.seeds, "panels": {}}
    with threadpool_limits(limits=1, user_api="blas"):
        stats = (d["Xp"].mean(0, dtype=np.float64), d["Xp"].std(0, dtype=np.float64))
        full = head_from_settings(HeadConfig(), stats).fit(d["Xp"], d["yp"])
        pred = full.predict(d["Xt"])
    acc = float(np.mean(pred == d["yt"]))
    bacc = float(balanced_accuracy_score(d["yt"], pred))
    cm = np.zeros((k, k))
    np.add.at(cm, (d["yt"], pred), 1)
    np.fill_diagonal(cm, 0)
    cm = cm + cm.T
    swap = tuple(int(x) for x in np.unravel_index(int(cm.argmax()), cm.shape))
    result.update(full_accuracy=round(acc, 4), full_balanced_accuracy=round(bacc, 4),
                  target_accuracy=round(args.target * acc, 4),
                  target_balanced_accuracy=round(args.target * bacc, 4),
                  biased_pair=[str(d["classes"][c]) for c in swap])
    log.info("full-pool accuracy %.4f (balanced %.4f); biased pair %s", acc, bacc, swap)
    # the longest runs first, so that the worker processes finish together
    order = ["new", "new_dawid_skene", "new_majority", "today", "consensus",
             "random_3_majority", "random_1"]
    names = [*configs, "consensus"] if args.consensus_items else configs
    tasks = [(panel, c, seed) for c in sorted(names, key=order.index)
             for panel in panels for seed in range(args.seeds)]
    _SHARED.update(d=d, args=args, swap=swap, goals=(args.target * acc, args.target * bacc))
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            done = pool.map(_task, tasks, chunksize=1)
    else:
        done = [_task(t) for t in tasks]
    for panel in panels:
        runs = {c: [r for (p_, c_, _), r in zip(tasks, done, strict=True)
                    if p_ == panel and c_ == c] for c in configs}
        cons_exp = {str(s_): r for (p_, c_, s_), r in zip(tasks, done, strict=True)
                    if p_ == panel and c_ == "consensus"}
        result["panels"][panel] = {"summary": summarise(runs),
                                   "consensus_by_votes": cons_exp, "runs": runs}
    text = _compact_json(result)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
