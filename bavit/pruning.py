"""Which patch tokens the detector sees. Static shapes throughout: exactly
K = round(keep * N) tokens for every image, so exported graphs have fixed sizes.

Policy, in order:
1. Token mask: a patch is foreground when its BAViT logit is >= `threshold` (0 = p 0.5).
2. Post-processing convolution (paper, Fig. 5): with `dilate` = k > 1, a k x k all-ones
   convolution over the token mask turns background tokens next to foreground into
   foreground.
3. Ranking: (dilated) foreground tokens first, each group by logit; the top K - K_bg win.
4. Partial pruning: K_bg = round(bg_share * K) slots go to tokens not yet kept, in a fixed
   2-D low-discrepancy order over the grid (`spread_order`), so some background context
   survives, spread evenly over the image rather than clustered next to objects.
Kept indices are sorted, which keeps the detector's token order (and, at keep 1.0, its
output bit-for-bit).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def keep_count(keep: float, num_tokens: int) -> int:
    """round-half-up(keep * N), at least 1."""
    if not (isinstance(keep, (int, float)) and 0.0 < keep <= 1.0):
        raise ValueError(f"keep ratio must be in (0, 1], got {keep!r}")
    return max(1, int(math.floor(keep * num_tokens + 0.5)))


def spread_order(grid: tuple[int, int]) -> torch.Tensor:
    """Priority per raster position in [0, 1): the bit-reversed Morton (Z-order) code of
    (row, col) on the enclosing power-of-two square. Taking positions by falling priority
    fills the grid coarse-to-fine in 2-D: each prefix of 4^k picks has one position in each
    of 4^k equal blocks. (Bit-reversing the flat raster index instead, a 1-D van der Corput
    order, picks whole columns first on power-of-two grids.)"""
    gh, gw = grid
    bits = max(1, math.ceil(math.log2(max(gh, gw, 2))))
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    morton = torch.zeros(gh * gw, dtype=torch.long)
    for b in range(bits):
        morton |= ((cols >> b) & 1) << (2 * b) | ((rows >> b) & 1) << (2 * b + 1)
    rev = torch.zeros_like(morton)
    for b in range(2 * bits):
        rev |= ((morton >> b) & 1) << (2 * bits - 1 - b)
    return rev.float() / 4**bits


def dilate(mask: torch.Tensor, grid: tuple[int, int], kernel: int) -> torch.Tensor:
    """(B, N) float {0,1} mask -> same, grown by a kernel x kernel all-ones convolution."""
    if kernel <= 1:
        return mask
    b = mask.shape[0]
    ones = torch.ones(1, 1, kernel, kernel, dtype=mask.dtype, device=mask.device)
    grown = nn.functional.conv2d(mask.view(b, 1, *grid), ones, padding=kernel // 2)
    return (grown[..., : grid[0], : grid[1]] > 0).to(mask.dtype).reshape(b, -1)


class TokenSelector(nn.Module):
    def __init__(self, grid: tuple[int, int], keep: float, bg_share: float = 0.0, dilate: int = 0,
                 threshold: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= bg_share < 1.0:
            raise ValueError(f"bg_share must be in [0, 1), got {bg_share!r}")
        if dilate < 0 or (dilate > 1 and dilate % 2 == 0):
            raise ValueError(f"dilate must be 0, 1 or an odd kernel size, got {dilate!r}")
        self.grid = grid
        self.num_tokens = grid[0] * grid[1]
        self.k = keep_count(keep, self.num_tokens)
        self.k_bg = int(math.floor(bg_share * self.k + 0.5)) if self.k < self.num_tokens else 0
        self.dilate = dilate
        self.threshold = threshold
        self.register_buffer("spread", spread_order(grid), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, N) foreground logits -> (B, K) sorted indices of kept patch tokens."""
        if self.k == self.num_tokens:
            return torch.arange(self.k, device=logits.device).expand(logits.shape[0], -1)
        fg = dilate((logits >= self.threshold).to(logits.dtype), self.grid, self.dilate)
        # logits are bounded far below 1e4 in practice; fg tokens therefore always rank first
        priority = logits.clamp(-1e3, 1e3) + fg * 1e4
        idx = priority.topk(self.k - self.k_bg, dim=1).indices
        if self.k_bg:
            rest = self.spread.expand(logits.shape[0], -1).scatter(1, idx, -1.0)
            idx = torch.cat([idx, rest.topk(self.k_bg, dim=1).indices], dim=1)
        return idx.sort(dim=1).values
