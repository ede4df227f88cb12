"""The promotion rule of confirmed sightings, as arithmetic on unit vectors (no Milvus, no HTTP).

A shopper's confirmation is one device's word that a vector shows a product. The rule turns
such words into catalog references only when they cannot come from one key alone and cannot
drag the product somewhere else (docs/cloud.md, "Confirmed sightings"):

1. **Anchor.** A confirmation is compared with the product's own catalog images (those an
   admin wrote; promoted sightings never anchor further sightings, so references cannot drift
   step by step). Best cosine below ``reference_cos``, or the product not among the vector's
   ``reference_rank`` best products in the catalog: it is *held* for an admin's review. The rank
   is the check that holds for every model: an embedder whose space is narrow puts most vectors
   above any fixed cosine of most products (``sightings.Sightings.confirm`` asks the catalog).
2. **Agreement.** The open confirmations of a product (one per device key: a key's newer one
   replaces its older one, so repeats count once) are trimmed to a group that agrees: the one
   farthest from the group's centroid leaves until every member is within ``agree_cos`` of it.
3. **Promotion.** A group of at least ``confirmations`` distinct keys whose centroid is itself
   within ``reference_cos`` of the catalog images becomes one new reference: the centroid
   (an average of several devices' vectors, closer to the product than any one of them).
   A group whose centroid is too far is held. A product holding ``cap`` promoted sightings
   takes no more until an admin removes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from shoplens.contract.codecs import l2_normalize
from shoplens.settings import Settings


@dataclass(frozen=True)
class Rule:
    """The rule's numbers (``SHOPLENS_FEEDBACK_*``)."""

    confirmations: int
    agree_cos: float
    reference_cos: float
    cap: int
    reference_rank: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> Rule:
        return cls(confirmations=settings.feedback_confirmations, agree_cos=settings.feedback_agree_cos,
                   reference_cos=settings.feedback_reference_cos, cap=settings.feedback_max_sightings,
                   reference_rank=settings.feedback_reference_rank)


@dataclass(frozen=True)
class Vote:
    """An open confirmation as the rule sees it: whose, and which vector."""

    sighting_id: str
    key_id: str
    vector: np.ndarray


class Verdict(str, Enum):
    WAIT = "wait"  # fewer agreeing keys than needed: stays pending
    PROMOTE = "promote"
    HOLD = "hold"  # agreeing keys, but their centroid is far from the product's images
    CAPPED = "capped"  # would be promoted, but the product is at its cap: stays pending


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    members: tuple[Vote, ...] = ()
    centroid: np.ndarray | None = None


def reference_cos(vector: np.ndarray, references: np.ndarray) -> float | None:
    """Best cosine of a unit ``vector`` to the unit rows of ``references`` (None when there are none)."""
    if references.size == 0:
        return None
    return float(np.max(references @ vector))


def is_anchored(vector: np.ndarray, references: np.ndarray, rule: Rule) -> bool:
    """Whether ``vector`` is close enough to one of the product's catalog images to count without review."""
    best = reference_cos(vector, references)
    return best is not None and best >= rule.reference_cos


def one_per_key(votes: Sequence[Vote]) -> list[Vote]:
    """The last vote of each key (the store keeps one open confirmation per key and product already;
    this makes the rule hold whatever it is given)."""
    latest: dict[str, Vote] = {}
    for vote in votes:
        latest[vote.key_id] = vote
    return list(latest.values())


def agreeing_group(votes: Sequence[Vote], agree_cos: float) -> tuple[list[Vote], np.ndarray | None]:
    """The votes that agree, and their unit centroid: drop the vote farthest from the centroid until
    every remaining one is within ``agree_cos`` of it (deterministic: ties drop the later vote)."""
    group = one_per_key(votes)
    while group:
        centroid = l2_normalize(np.mean([v.vector for v in group], axis=0))
        sims = np.array([float(v.vector @ centroid) for v in group])
        worst = int(len(sims) - 1 - np.argmin(sims[::-1]))
        if sims[worst] >= agree_cos:
            return group, centroid
        group.pop(worst)
    return [], None


def decide(votes: Sequence[Vote], references: np.ndarray, promoted: int, rule: Rule) -> Decision:
    """What the open, anchored confirmations of one product (``votes``) lead to, given the product's
    catalog images (``references``, unit rows) and how many sightings it already has promoted."""
    group, centroid = agreeing_group(votes, rule.agree_cos)
    if centroid is None or len({v.key_id for v in group}) < rule.confirmations:
        return Decision(Verdict.WAIT)
    members = tuple(group)
    if not is_anchored(centroid, references, rule):
        return Decision(Verdict.HOLD, members, centroid)
    if promoted >= rule.cap:
        return Decision(Verdict.CAPPED, members, centroid)
    return Decision(Verdict.PROMOTE, members, centroid)
