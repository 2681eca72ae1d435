"""Aggregation of LoRA adapter updates: pure functions over ``dict[str, np.ndarray]``.

An update maps ``"<module>.lora_A"`` (shape ``(r, in)``) and ``"<module>.lora_B"``
(shape ``(out, r)``) to arrays, plus any other trained tensor (the classification
head, ``"classifier.weight"`` / ``"classifier.bias"``), which is linear in the model
and so is always averaged exactly. The module's weight change is
``(alpha / r) B A``; ``alpha / r`` is the same for every client and left out here.

- :func:`fedit_average`: FedAvg of A and B separately (FedIT, Zhang et al., arXiv
  2305.05644). Cheap, but ``mean(B) mean(A) != mean(B A)``: not the average of the
  clients' products.
- :func:`ffa_average`: FFA-LoRA (Sun et al., ICLR 2024, arXiv 2403.12313). A is the
  same frozen matrix everywhere, so averaging B averages the products exactly.
- :func:`svd_recompress`: the weighted sum of the products ``sum_i w_i B_i A_i``
  re-compressed to rank ``r`` by truncated SVD: exact when that sum has rank <= r,
  otherwise its best rank-r approximation in Frobenius and spectral norm
  (Eckart-Young). FLoRA (arXiv 2409.05976) keeps the sum exact by stacking the
  factors instead, at rank ``sum_i r_i``.

Weights are normalised to sum to one (pass example counts). Inputs are never
modified; every result is a new array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

LORA_A_SUFFIX = ".lora_A"
LORA_B_SUFFIX = ".lora_B"

Update = Mapping[str, np.ndarray]
LoraPair = tuple[np.ndarray, np.ndarray]
"""``(A, B)`` of one module: A is ``(r, in)``, B is ``(out, r)``."""


def normalised_weights(weights: Sequence[float] | np.ndarray, count: int) -> np.ndarray:
    """``weights`` as float64 summing to one; one non-negative weight per update."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (count,):
        raise ValueError(f"weights: expected {count} weights, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights: must be finite, non-negative, not all zero; got {w}")
    normalised: np.ndarray = w / w.sum()
    return normalised


def _check_same_layout(updates: Sequence[Update]) -> None:
    if not updates:
        raise ValueError("updates: nothing to aggregate")
    first = updates[0]
    for i, update in enumerate(updates[1:], start=1):
        if update.keys() != first.keys():
            raise ValueError(
                f"updates[{i}]: tensor names differ from updates[0]: "
                f"{sorted(set(update) ^ set(first))}"
            )
        for name, value in update.items():
            if value.shape != first[name].shape:
                raise ValueError(
                    f"updates[{i}][{name!r}]: shape {value.shape} != {first[name].shape}"
                )


def _weighted_mean(updates: Sequence[Update], w: np.ndarray, name: str) -> np.ndarray:
    dtype = updates[0][name].dtype
    total = sum(
        (wi * np.asarray(u[name], dtype=np.float64) for wi, u in zip(w, updates, strict=True)),
        start=np.zeros(updates[0][name].shape),
    )
    return np.asarray(total, dtype=dtype)


def fedit_average(
    updates: Sequence[Update], weights: Sequence[float] | np.ndarray
) -> dict[str, np.ndarray]:
    """Weighted average of every tensor, A and B separately (FedIT, arXiv 2305.05644).

    Parameters
    ----------
    updates : sequence of mapping
        One adapter per client, all with the same names and shapes.
    weights : sequence of float
        One non-negative weight per update (e.g. its example count).

    Returns
    -------
    dict
        The averaged adapter, same names, shapes and dtypes.
    """
    _check_same_layout(updates)
    w = normalised_weights(weights, len(updates))
    return {name: _weighted_mean(updates, w, name) for name in updates[0]}


def ffa_average(
    updates: Sequence[Update], weights: Sequence[float] | np.ndarray
) -> dict[str, np.ndarray]:
    """Weighted average of B (and the head) under FFA-LoRA (arXiv 2403.12313).

    With every A frozen at the same seeded value, ``sum_i w_i B_i A = (sum_i w_i B_i) A``:
    the average is the exact average of the clients' weight changes.

    Raises
    ------
    ValueError
        If an update carries an A: under FFA-LoRA A never travels.
    """
    _check_same_layout(updates)
    carried_a = [name for name in updates[0] if name.endswith(LORA_A_SUFFIX)]
    if carried_a:
        raise ValueError(f"updates: FFA-LoRA updates carry no A, got {carried_a[:3]}")
    return fedit_average(updates, weights)


def lora_pairs(update: Update) -> dict[str, LoraPair]:
    """Module name -> ``(A, B)`` for every module with both factors in ``update``."""
    pairs: dict[str, LoraPair] = {}
    for name in update:
        if name.endswith(LORA_A_SUFFIX):
            module = name.removesuffix(LORA_A_SUFFIX)
            b_name = module + LORA_B_SUFFIX
            if b_name not in update:
                raise ValueError(f"update: {name!r} has no matching {b_name!r}")
            pairs[module] = (update[name], update[b_name])
    orphans = [
        n
        for n in update
        if n.endswith(LORA_B_SUFFIX) and n.removesuffix(LORA_B_SUFFIX) not in pairs
    ]
    if orphans:
        raise ValueError(f"update: B without A: {orphans[:3]}")
    return pairs


def weighted_product_sum(
    pairs: Sequence[LoraPair], weights: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Dense ``sum_i w_i B_i A_i`` (float64, shape ``(out, in)``), weights normalised."""
    if not pairs:
        raise ValueError("pairs: nothing to aggregate")
    w = normalised_weights(weights, len(pairs))
    shape = (pairs[0][1].shape[0], pairs[0][0].shape[1])
    total = np.zeros(shape)
    for i, (wi, (a, b)) in enumerate(zip(w, pairs, strict=True)):
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(f"pairs[{i}]: A {a.shape} and B {b.shape} do not multiply")
        if (b.shape[0], a.shape[1]) != shape:
            raise ValueError(f"pairs[{i}]: B A has shape {(b.shape[0], a.shape[1])} != {shape}")
        total += wi * (np.asarray(b, dtype=np.float64) @ np.asarray(a, dtype=np.float64))
    return total


def svd_recompress(
    pairs: Sequence[LoraPair], weights: Sequence[float] | np.ndarray, *, rank: int
) -> LoraPair:
    """Rank-``rank`` factors of ``sum_i w_i B_i A_i`` by truncated SVD.

    With ``M = U S V^T``, returns ``A = sqrt(S_r) V_r^T`` and ``B = U_r sqrt(S_r)``
    (the singular values split evenly between the factors, so neither dominates the
    next round's gradients). ``B A`` equals ``M`` when ``rank(M) <= rank`` and is
    the best rank-``rank`` approximation of ``M`` otherwise (Eckart-Young).

    Parameters
    ----------
    pairs : sequence of (A, B)
        One module's factors from each client; ranks may differ.
    weights : sequence of float
    rank : int
        Rank of the result (at most ``min(out, in)``).

    Returns
    -------
    tuple of np.ndarray
        ``(A, B)`` with shapes ``(rank, in)`` and ``(out, rank)``, in the dtype of
        the first client's A.
    """
    product = weighted_product_sum(pairs, weights)
    if not 1 <= rank <= min(product.shape):
        raise ValueError(f"rank: must lie in [1, {min(product.shape)}], got {rank}")
    u, s, vt = np.linalg.svd(product, full_matrices=False)
    root = np.sqrt(s[:rank])
    dtype = pairs[0][0].dtype
    a = np.asarray(root[:, None] * vt[:rank], dtype=dtype)
    b = np.asarray(u[:, :rank] * root[None, :], dtype=dtype)
    return a, b


def svd_recompress_updates(
    updates: Sequence[Update], weights: Sequence[float] | np.ndarray, *, rank: int
) -> dict[str, np.ndarray]:
    """:func:`svd_recompress` for every module of whole adapters; other tensors averaged.

    Returns
    -------
    dict
        Same names as the updates: each module's new A and B at ``rank``, and the
        weighted mean of every other tensor (the head).
    """
    _check_same_layout(updates)
    w = normalised_weights(weights, len(updates))
    per_client = [lora_pairs(u) for u in updates]
    out: dict[str, np.ndarray] = {}
    for module in per_client[0]:
        a, b = svd_recompress([p[module] for p in per_client], w, rank=rank)
        out[module + LORA_A_SUFFIX] = a
        out[module + LORA_B_SUFFIX] = b
    for name in updates[0]:
        if name not in out:
            out[name] = _weighted_mean(updates, w, name)
    return out
