"""The promotion rule's arithmetic (``cloud/sighting_rule.py``) on hand-made unit vectors.

The service-level behaviour (keys, hold, cap, search) is in ``test_feedback.py``; these are the
cases that are hard to reach through the API: a group whose members are anchored one by one but
whose centroid is not, an outlier inside a group, and a key voting twice.
"""

from __future__ import annotations

import numpy as np

from shoplens.cloud.sighting_rule import Rule, Verdict, Vote, agreeing_group, decide, one_per_key

RULE = Rule(confirmations=3, agree_cos=0.8, reference_cos=0.5, cap=2)


def _u(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def _votes(*vectors: np.ndarray, keys: list[str] | None = None) -> list[Vote]:
    keys = keys or [f"key:{i}" for i in range(len(vectors))]
    return [Vote(f"c-{i}", k, v) for i, (k, v) in enumerate(zip(keys, vectors))]


REFS = np.stack([_u(1, 0, 0, 0)])


def test_k_agreeing_keys_promote_their_centroid_and_fewer_wait():
    near = [_u(1, 0.3, 0.05 * i, 0) for i in range(3)]
    assert decide(_votes(*near[:2]), REFS, 0, RULE).verdict is Verdict.WAIT
    d = decide(_votes(*near), REFS, 0, RULE)
    assert d.verdict is Verdict.PROMOTE and len(d.members) == 3
    assert d.centroid is not None and abs(float(np.linalg.norm(d.centroid)) - 1) < 1e-6
    assert float(d.centroid @ REFS[0]) > min(float(v @ REFS[0]) for v in near) - 1e-6


def test_one_key_counts_once_whatever_it_sends():
    near = [_u(1, 0.3, 0.05 * i, 0) for i in range(5)]
    votes = _votes(*near, keys=["key:a", "key:a", "key:a", "key:b", "key:b"])
    assert len(one_per_key(votes)) == 2
    assert decide(votes, REFS, 0, RULE).verdict is Verdict.WAIT


def test_an_outlier_leaves_the_group_and_the_rest_still_promote():
    group = [_u(1, 0.3, 0.02 * i, 0) for i in range(3)] + [_u(0, 0, 1, 0)]
    members, centroid = agreeing_group(_votes(*group), RULE.agree_cos)
    assert sorted(v.sighting_id for v in members) == ["c-0", "c-1", "c-2"] and centroid is not None
    assert decide(_votes(*group), REFS, 0, RULE).verdict is Verdict.PROMOTE


def test_agreeing_keys_whose_centroid_drifts_from_the_product_are_held():
    # each member alone is anchored (cos >= 0.5 to the product's image), the group agrees, yet their
    # centroid sits below the threshold: a coordinated push away from the product goes to review
    refs = np.stack([_u(1, 0, 0, 0), _u(0, 1, 0, 0)])
    members = [_u(0.52, 0, 0.85, 0.1), _u(0, 0.52, 0.85, -0.1), _u(0.5, 0, 0.85, -0.1)]
    assert all(float(np.max(refs @ m)) >= 0.45 for m in members)
    d = decide(_votes(*members), refs, 0, Rule(confirmations=3, agree_cos=0.8, reference_cos=0.45, cap=5))
    assert d.centroid is not None and float(np.max(refs @ d.centroid)) < 0.45
    assert d.verdict is Verdict.HOLD and len(d.members) == 3


def test_at_the_cap_a_group_waits():
    near = [_u(1, 0.3, 0.05 * i, 0) for i in range(3)]
    assert decide(_votes(*near), REFS, 2, RULE).verdict is Verdict.CAPPED
