"""Training losses over candidate item embeddings. Scores are the model's similarities (cosine, or the dot product
under `similarity="dot"`) divided by a temperature.

- `sampled_softmax`: softmax over the batch's distinct items plus uniformly sampled catalog items, with logQ
  correction (Yi et al. 2019): each candidate's logit is lowered by the log of how often it is expected in the
  candidate pool, so popular items are not over-penalised for being everybody's negative.
- `full_ce`: softmax over the whole catalog (every item is a candidate at every step).
- `bce`: binary cross-entropy of the target against one uniformly sampled negative per position, never the
  position's target (SASRec's and the MMSR paper's loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("sampled_softmax", "full_ce", "bce")


def similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b.T` in float32, also under autocast: in bf16 a cosine divided by a temperature of 0.07 is off by up to
    ~0.05, an error the logits of every loss would carry."""
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float().T


def softmax_loss(
    states: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    logq: torch.Tensor | None,
    candidate_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each position's target among all `items`.

    Args:
        states: `(B, T, D)`; items: `(N, D)`; targets: `(B, T)` rows of `items`, -1 to ignore;
        logq: `(N,)` log probability that each candidate is among the step's candidates (None: no correction);
        candidate_mask: `(N,)`, False for rows that only pad `items` to a steady size (never candidates).
    """
    logits = similarity_matrix(states, items) / temperature  # (B, T, N), float32
    if logq is not None:
        logits = logits - logq
    if candidate_mask is not None:
        logits = logits.masked_fill(~candidate_mask, float("-inf"))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)


def bce_loss(
    states: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Binary cross-entropy: target vs one negative per position (`negatives`: `(B, T)` rows of `items`)."""
    keep = targets >= 0
    states, items = states[keep].float(), items.float()  # (P, D), (N, D): scores in float32, as in softmax_loss
    positive = (states * items[targets[keep]]).sum(-1) / temperature
    negative = (states * items[negatives[keep]]).sum(-1) / temperature
    logits = torch.cat([positive, negative])
    labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)])
    return F.binary_cross_entropy_with_logits(logits, labels)
