"""Softmax losses over many items whose memory does not grow with positions × items.

- ``chunked_cross_entropy``: exact CE over the whole catalogue, computed a block of positions at a time.
  Autograd would keep the ``[positions, items]`` softmax of the whole batch for the backward pass
  (``sequence`` training on a 200-long history and a 1M-item catalogue: 100 GB); here each block's
  gradient is formed while its logits exist, so only ``[block, items]`` is ever held.
- ``sampled_softmax``: CE over the target and a pool of negatives shared by the batch (uniform, in-batch
  or both, drawn by the model), with offsets for the logQ correction of Yi et al. (RecSys 2019), so that
  the sample estimates the full softmax rather than a popularity-skewed one.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

#: Logits held at once by ``chunked_cross_entropy`` when no block size is given (64 MB in float32).
DEFAULT_LOGIT_BUDGET = 1 << 24


class _BlockwiseCE(torch.autograd.Function):
    """Mean CE of ``h @ items.T + bias`` against ``targets``; gradients formed block by block.

    With ``splits`` (column widths of the views in ``h`` and ``items``), the loss also counts, with weight
    ``part_weight``, the CE of each view's own part of the score, ``h_v @ items_v.T + bias``.

    The forward pass already computes the gradients (the softmax is at hand there), so the backward pass
    only scales them: no logits are recomputed and none are stored.
    """

    @staticmethod
    def forward(ctx, h, items, targets, bias, block, splits, part_weight):
        n = h.size(0)
        acc = _accumulator(h.dtype)
        loss = h.new_zeros((), dtype=acc)
        grad_h = torch.empty_like(h)
        grad_items = torch.zeros_like(items)
        rows = torch.arange(min(block, n), device=h.device)
        columns = _column_slices(splits, h.size(1))
        for start in range(0, n, block):
            hb, tb = h[start : start + block], targets[start : start + block]
            picked = rows[: len(tb)]
            part_logits = [(hb[:, c] @ items[:, c].T).to(acc) for c in columns]
            logits = part_logits[0] if len(columns) == 1 else sum(part_logits)
            block_loss, fused = _softmax_gradient_(logits, picked, tb, bias)
            loss += block_loss
            for c, part in zip(columns, part_logits):
                grad = fused
                if len(columns) > 1:
                    part_loss, part_grad = _softmax_gradient_(part, picked, tb, bias)
                    loss += part_weight * part_loss
                    grad = fused + part_weight * part_grad
                grad = grad.to(h.dtype)
                grad_h[start : start + block, c] = grad @ items[:, c]
                grad_items[:, c] += grad.T @ hb[:, c]
        ctx.save_for_backward(grad_h, grad_items)
        ctx.n = n
        return loss / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_items = ctx.saved_tensors
        scale = grad_out / ctx.n
        return grad_h * scale, grad_items * scale, None, None, None, None, None


def _column_slices(splits, width: int):
    if not splits:
        return [slice(0, width)]
    bounds = [0]
    for w in splits:
        bounds.append(bounds[-1] + w)
    if bounds[-1] != width:
        raise ValueError(f"view widths {tuple(splits)} do not add up to the state width {width}")
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _softmax_gradient_(logits: torch.Tensor, picked: torch.Tensor, targets: torch.Tensor, bias):
    """Summed CE of ``logits (+ bias)`` and its gradient ``softmax - onehot``, written over ``logits``.

    In place: the ``[block, items]`` buffer is the largest tensor of the step, and each extra pass over it
    costs as much as a third of the matrix product.
    """
    if bias is not None:
        logits += bias
    target_logit = logits[picked, targets]
    top = logits.max(dim=1, keepdim=True).values
    probs = logits.sub_(top).exp_()
    total = probs.sum(dim=1, keepdim=True)
    loss = (top.squeeze(1) + total.squeeze(1).log() - target_logit).sum()
    probs.div_(total)
    probs[picked, targets] -= 1
    return loss, probs


def chunked_cross_entropy(
    h: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    block: Optional[int] = None,
    splits: Optional[Sequence[int]] = None,
    part_weight: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of the scores ``h @ items.T (+ bias)`` against ``targets``.

    Args:
        h: ``[P, D]`` user states at the supervised positions.
        items: ``[N, D]`` scoring vectors of every candidate item.
        targets: ``[P]`` row of each position's target in ``items``.
        bias: optional ``[N]`` constant added to every logit (no gradient), e.g. logit adjustment.
        block: positions per block; ``None`` keeps a block's logits under ``DEFAULT_LOGIT_BUDGET``.
        splits: widths of the views whose parts make up ``D``; with ``part_weight > 0`` each view's part of
            the score, ``h_v @ items_v.T``, is also trained as a ranker of its own.
        part_weight: weight of each view's own CE.

    Equal to ``F.cross_entropy(h @ items.T + bias, targets)
    + part_weight * sum_v F.cross_entropy(h_v @ items_v.T + bias, targets)`` in value and gradients.
    """
    splits = tuple(splits) if splits and part_weight and len(splits) > 1 else None
    if h.size(0) == 0:
        return (h.sum() + items.sum()) * 0.0
    if block is None:
        buffers = 1 if splits is None else 2 * len(splits) + 1
        block = max(1, DEFAULT_LOGIT_BUDGET // max(1, items.size(0) * buffers))
    if not torch.is_grad_enabled() or not (h.requires_grad or items.requires_grad):
        return _plain_blockwise_loss(h, items, targets, bias, block, splits, part_weight)
    return _BlockwiseCE.apply(h, items, targets, bias, block, splits, part_weight)


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    # Half-precision logits are summed in float32; float64 stays float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def _plain_blockwise_loss(h, items, targets, bias, block, splits, part_weight) -> torch.Tensor:
    acc = _accumulator(h.dtype)
    total = h.new_zeros((), dtype=acc)
    columns = _column_slices(splits, h.size(1))
    for start in range(0, h.size(0), block):
        hb, tb = h[start : start + block], targets[start : start + block]
        parts = [(hb[:, c] @ items[:, c].T).to(acc) for c in columns]
        terms = [(sum(parts), 1.0)] + ([(p, part_weight) for p in parts] if len(parts) > 1 else [])
        for logits, weight in terms:
            if bias is not None:
                logits = logits + bias
            total += weight * F.cross_entropy(logits, tb, reduction="sum")
    return total / h.size(0)


def sampled_softmax(
    h: torch.Tensor,
    pos_vectors: torch.Tensor,
    neg_vectors: torch.Tensor,
    pos_ids: torch.Tensor,
    neg_ids: torch.Tensor,
    pos_offset: Optional[torch.Tensor] = None,
    neg_offset: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean CE of each target against a pool of negatives shared by every position.

    Args:
        h: ``[P, D]`` user states; ``pos_vectors``: ``[P, D]`` their targets' vectors.
        neg_vectors: ``[K, D]`` the shared negatives' vectors.
        pos_ids, neg_ids: ``[P]`` and ``[K]`` item ids, so that a negative equal to a position's target is
            masked out (an accidental hit).
        pos_offset, neg_offset: ``[P]`` and ``[K]`` constants added to the logits: ``-log q`` for the logQ
            correction (q: the item's probability of being drawn), plus any logit adjustment.
    """
    # Logits in float32 (at least): under autocast the products come in half precision, and the offsets
    # (-log q, log-priors) and the softmax must not be rounded to it.
    acc = _accumulator(h.dtype)
    pos = (h * pos_vectors).sum(-1, keepdim=True).to(acc)
    neg = (h @ neg_vectors.T).to(acc)
    if pos_offset is not None:
        pos = pos + pos_offset.unsqueeze(1)
        neg = neg + neg_offset.unsqueeze(0)
    neg = neg.masked_fill(neg_ids.unsqueeze(0) == pos_ids.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return -F.log_softmax(logits, dim=1)[:, 0].mean()
