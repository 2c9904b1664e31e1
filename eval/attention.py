"""Softmax attention together with its log-sum-exp, through a fused kernel where the device has one.

The cross-candidate decoder (`crossdecode`) splits attention in two parts and
merges them by their log-sum-exps, so it needs the log-sum-exp that
`scaled_dot_product_attention` computes but does not return.  On the CPU the
kernel behind it returns it; on a GPU the memory-efficient kernel does; and
anything else (or an input a GPU kernel refuses) is computed step by step.
"""

from __future__ import annotations

import torch


def attention_with_lse(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention [N, h, Q, hd] and its log-sum-exp [N, h, Q] (float32) over keys/values [N, h, S, hd].

    `bias` [N, 1, 1, S] (0 or -inf) masks keys.  On the CPU this is the fused
    kernel behind `scaled_dot_product_attention`, which returns the log-sum-exp
    too; on a GPU the memory-efficient kernel (`_cuda_attention_with_lse`);
    where that fails, the same computed step by step.
    """
    if query.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, keys, values, 0.0, False, attn_mask=bias, scale=scale)
        return out, lse.float()
    if query.device.type == "cuda" and _CUDA_FUSED:
        try:
            return _cuda_attention_with_lse(query, keys, values, bias, scale)
        except RuntimeError:  # a shape, dtype or alignment the kernel refuses: step by step from now on
            _CUDA_FUSED.clear()
    scores = (query @ keys.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    lse = torch.logsumexp(scores, -1)
    return (torch.exp(scores - lse[..., None].clamp_min(-1e30)).to(values.dtype) @ values), lse


_CUDA_FUSED = [True]  # emptied once the fused CUDA kernel has refused an input


def _cuda_attention_with_lse(query, keys, values, bias, scale):
    """`attention_with_lse` through aten's memory-efficient CUDA kernel, which returns the log-sum-exp too.

    Its log-sum-exp is padded to a multiple of 32 queries; a query whose keys are
    all masked gets output 0 and log-sum-exp -inf, as on the step-by-step path.
    """
    N, h, Q, _ = query.shape
    if bias is not None:  # the kernel wants each bias row 16-aligned in memory, as the public SDPA pads it
        S = keys.shape[-2]
        aligned = bias.new_empty(*bias.shape[:-1], -(-S // 16) * 16)[..., :S]
        bias = aligned.copy_(bias).expand(N, h, Q, S)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, keys, values, bias, True, 0.0, False, scale=scale)[:2]
    lse = lse[..., :Q].float()
    return torch.where(torch.isfinite(lse)[..., None], out, 0.0), lse
