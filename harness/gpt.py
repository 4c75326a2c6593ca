"""The small decoder-only GPT every cell trains, and the synthetic batch it learns from."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.settings import ModelSettings


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, seq, self.n_heads, width // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: attention then MLP, each on a residual branch."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token and position embeddings, pre-LayerNorm blocks, a final LayerNorm and a head tied to the embedding."""

    def __init__(self, model: ModelSettings):
        super().__init__()
        self.settings = model
        self.wte = nn.Embedding(model.vocab_size, model.d_model)
        self.wpe = nn.Embedding(model.seq_len, model.d_model)
        self.blocks = nn.ModuleList(Block(model.d_model, model.n_heads) for _ in range(model.n_layers))
        self.ln_f = nn.LayerNorm(model.d_model)
        self._init_weights(model.n_layers)

    def _init_weights(self, n_layers: int) -> None:
        # GPT-2's scheme: small normal weights, residual projections scaled down by depth.
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.ones_(p)
            else:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the next token at every position, shape (batch, seq, vocab)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy, computed in float32 whatever the parameters' dtype."""
        logits = self(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def build_gpt(model: ModelSettings, *, seed: int, device: str | torch.device, dtype: torch.dtype) -> GPT:
    """The GPT with weights drawn from `seed` (the same seed gives the same weights), on `device` in `dtype`."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        gpt = GPT(model)
    finally:
        torch.random.set_rng_state(generator_state)
    return gpt.to(device=device, dtype=dtype)


def synthetic_batch(
    model: ModelSettings, batch_size: int, seed: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of sequences that follow a fixed random permutation of the vocabulary (token t+1 = perm[token t]).

    Returns `(inputs, targets)`, each of shape (batch_size, seq_len), targets being the inputs shifted by one.
    The rule is learnable in a few steps, and the same seed gives the same batch.
    """
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(model.vocab_size, generator=generator)
    tokens = torch.empty(batch_size, model.seq_len + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(model.vocab_size, (batch_size,), generator=generator)
    for t in range(model.seq_len):
        tokens[:, t + 1] = permutation[tokens[:, t]]
    tokens = tokens.to(device)
    return tokens[:, :-1], tokens[:, 1:]
