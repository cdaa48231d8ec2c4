"""Survival losses, model-agnostic (torchsurv style): Cox partial likelihood and MTLR likelihood.

Shapes: ``N`` samples, ``K`` time-bin boundaries (``K + 1`` MTLR intervals).

Why not ``torchsurv.loss.cox.neg_partial_log_likelihood`` (0.2.0)? It was checked and is not used: when a
censoring time equals an event time and no two *events* tie, it takes the uncorrected path whose risk sets
are positions in a sort by time, so the result depends on the input order (censored-then-event gives a
different loss from event-then-censored; the correct risk set includes the censored subject). Integer-day
RFS makes such ties common. It also returns a fresh leaf tensor (no graph) for batches without events.
The functions below agree with torchsurv where it is right (tests) and are exact in those cases.
"""

from __future__ import annotations

import torch


def _check(log_hz: torch.Tensor, event: torch.Tensor, time: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if log_hz.ndim == 2 and log_hz.shape[1] == 1:
        log_hz = log_hz[:, 0]
    if log_hz.ndim != 1:
        raise ValueError(f"log_hz must be (N,) or (N, 1), got {tuple(log_hz.shape)}")
    event = event.reshape(-1).to(device=log_hz.device, dtype=torch.bool)
    time = time.reshape(-1).to(device=log_hz.device, dtype=log_hz.dtype)
    if event.numel() != log_hz.numel() or time.numel() != log_hz.numel():
        raise ValueError(f"log_hz, event, time must have the same length, got {log_hz.numel()}, "
                         f"{event.numel()}, {time.numel()}")
    return log_hz, event, time


def cox_neg_partial_log_likelihood(log_hz: torch.Tensor, event: torch.Tensor, time: torch.Tensor,
                                   ties: str = "efron", reduction: str = "mean") -> torch.Tensor:
    """Negative Cox partial log-likelihood.

    The risk set of an event at time ``t`` is every subject with ``time >= t`` (censored ones included).
    Tied event times use Efron's (default) or Breslow's approximation.

    Args:
        log_hz: (N,) or (N, 1) log relative hazard (the risk score).
        event: (N,) bool / 0-1, True = event observed.
        time: (N,) event or censoring time.
        ties: "efron" or "breslow".
        reduction: "mean" (divided by the number of events), "sum".

    Returns:
        Scalar. A batch without events gives ``0 * log_hz.sum()``: zero, finite, connected to the graph (its
        gradient is zero), so a training step on it is harmless.

    Example:
        >>> cox_neg_partial_log_likelihood(torch.tensor([0.0, 0.0]), torch.tensor([1, 0]), torch.tensor([1., 2.]))
        tensor(0.6931)
    """
    if ties not in ("efron", "breslow"):
        raise ValueError(f"ties must be 'efron' or 'breslow', got {ties!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    log_hz, event, time = _check(log_hz, event, time)
    n_events = int(event.sum())
    if n_events == 0:
        return log_hz.sum() * 0.0
    t_ev = time[event]  # (E,)
    neg_inf = torch.finfo(log_hz.dtype).min
    at_risk = time[None, :] >= t_ev[:, None]  # (E, N)
    log_risk = torch.logsumexp(log_hz[None, :].masked_fill(~at_risk, neg_inf), dim=1)  # (E,) log sum over risk set
    log_denom = log_risk
    if ties == "efron":
        tied = (time[None, :] == t_ev[:, None]) & event[None, :]  # (E, N) events at the same time
        log_tied = torch.logsumexp(log_hz[None, :].masked_fill(~tied, neg_inf), dim=1)  # (E,)
        m = tied.sum(dim=1).to(log_hz.dtype)  # (E,) number of events tied with each event
        # rank r of each event within its tie group (0..m-1), by position: the Efron sum runs over r
        idx = torch.arange(event.numel(), device=log_hz.device)[event]
        r = ((t_ev[None, :] == t_ev[:, None]) & (idx[None, :] < idx[:, None])).sum(dim=1).to(log_hz.dtype)
        # log(S_R - r/m S_H) = log S_R + log1p(-r/m * S_H/S_R), with S_H/S_R <= 1 and r/m <= (m-1)/m
        log_denom = log_risk + torch.log1p(-(r / m) * torch.exp(log_tied - log_risk))
    terms = log_hz[event] - log_denom
    total = -terms.sum()
    return total / n_events if reduction == "mean" else total


def mtlr_targets(time: torch.Tensor, event: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """MTLR target mask: which of the ``K + 1`` intervals may hold each subject's event.

    Interval ``k`` is ``(b[k-1], b[k]]`` with ``b[-1] = 0`` and ``b[K] = inf``. An event at ``t`` marks its
    interval only; a subject censored at ``t`` marks its interval and every later one.

    Args:
        time: (N,) times.
        event: (N,) event flags.
        boundaries: (K,) increasing bin boundaries (:class:`~pemma.survival.heads.TimeBins`).

    Returns:
        (N, K + 1) float mask.

    Example:
        >>> mtlr_targets(torch.tensor([5., 5.]), torch.tensor([1, 0]), torch.tensor([10.]))
        tensor([[1., 0.],
                [1., 1.]])
    """
    time = time.reshape(-1).to(boundaries.dtype)
    event = event.reshape(-1).bool()
    k = torch.bucketize(time, boundaries.contiguous(), right=False)  # (N,) interval index in 0..K
    cols = torch.arange(boundaries.numel() + 1, device=time.device)[None, :]
    mask = torch.where(event[:, None], cols == k[:, None], cols >= k[:, None])
    return mask.to(torch.float32)


def mtlr_neg_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """MTLR negative log-likelihood (Yu et al. 2011; as torchmtlr's, without its L2 term).

    ``nll_i = logsumexp(logits_i) - logsumexp(logits_i[targets_i == 1])``: for an event the log-probability of
    its interval, for a censored subject of surviving past the censoring interval's start.

    Args:
        logits: (N, K + 1) interval scores (:class:`~pemma.survival.heads.MTLRHead` output).
        targets: (N, K + 1) mask from :func:`mtlr_targets` (each row has at least one 1).
        reduction: "mean" over samples or "sum".

    Returns:
        Scalar.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> mtlr_neg_log_likelihood(logits, torch.tensor([[1.0, 0.0]]))  # log 2
        tensor(0.6931)
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits and targets must both be (N, K+1), got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    masked = logits.masked_fill(targets <= 0, float("-inf"))
    nll = torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)
    return nll.mean() if reduction == "mean" else nll.sum()
