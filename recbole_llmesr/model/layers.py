"""Encoder building blocks, written for speed on CPU.

RecBole's ``TransformerEncoder`` computes GELU with an explicit erf formula and rebuilds masks per layer;
here GELU is ``F.gelu`` and one boolean mask per batch serves every attention module.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(item_seq: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean ``[B, 1, L, L]`` mask, True where query i may attend to key j.

    Keys that are padding are hidden, and with ``causal`` so are later positions. The diagonal is always
    allowed so that a padded query never sees an empty row (softmax over nothing is NaN); outputs at
    padded positions are never used.
    """
    length = item_seq.size(1)
    allowed = (item_seq != 0).unsqueeze(1).unsqueeze(2)  # [B, 1, 1, L]
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()
    return allowed | torch.eye(length, dtype=torch.bool, device=item_seq.device)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over separate query and key/value inputs."""

    def __init__(self, hidden_size: int, n_heads: int, attn_dropout: float, bias: bool = True):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by the number of heads ({n_heads})")
        self.n_heads = n_heads
        self.query = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = attn_dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, seq_len, h = x.shape
        return x.view(b, seq_len, self.n_heads, h // self.n_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(query)), self._heads(self.key(context)), self._heads(self.value(context))
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        b, _, seq_len, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, seq_len, -1))


class TransformerLayer(nn.Module):
    """Post-LN transformer layer with RecBole's layout (attention, then feed-forward, each residual)."""

    def __init__(self, hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout, layer_norm_eps):
        super().__init__()
        self.attention = MultiHeadAttention(hidden_size, n_heads, attn_dropout)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, inner_size), nn.GELU(),
            nn.Linear(inner_size, hidden_size), nn.Dropout(hidden_dropout)
        )
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attention(x, x, mask)))
        return self.ffn_norm(x + self.ffn(x))


class TransformerEncoder(nn.Module):
    """Learned positions, LayerNorm and dropout on the input, then a stack of transformer layers."""

    def __init__(self, config, max_len: int):
        super().__init__()
        hidden = config["hidden_size"]
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.input_norm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.layers = nn.ModuleList(
            TransformerLayer(
                hidden,
                config["n_heads"],
                config["inner_size"],
                config["hidden_dropout_prob"],
                config["attn_dropout_prob"],
                config["layer_norm_eps"],
            )
            for _ in range(config["n_layers"])
        )

    def prepare(self, x: torch.Tensor, item_seq: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        return self.input_dropout(self.input_norm(x + self.position_embedding(positions)))

    def forward(self, x: torch.Tensor, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class GRUEncoder(nn.Module):
    """RecBole GRU4Rec's encoder: embedding dropout, a GRU, and a dense layer back to ``hidden_size``."""

    def __init__(self, config):
        super().__init__()
        hidden = config["hidden_size"]
        self.input_dropout = nn.Dropout(config["dropout_prob"])
        self.gru = nn.GRU(
            hidden, config["gru_hidden_size"], num_layers=config["num_layers"], bias=False, batch_first=True
        )
        self.dense = nn.Linear(config["gru_hidden_size"], hidden)
        for name, weight in self.gru.named_parameters():
            nn.init.xavier_uniform_(weight)

    def prepare(self, x: torch.Tensor, item_seq: torch.Tensor) -> torch.Tensor:
        return self.input_dropout(x)

    def forward(self, x: torch.Tensor, item_seq: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        # Sequences are left-aligned with padding on the right, so a position's state never depends on
        # padding or on later items.
        return self.dense(self.gru(x)[0])


class CrossAttention(nn.Module):
    """LLM-ESR's cross-view attention: queries from one view, keys and values from the other.

    As in the paper the output replaces the query view's input (no residual, no LayerNorm); unlike the
    official code the mask is causal for left-to-right backbones.
    """

    def __init__(self, hidden_size: int, n_heads: int):
        super().__init__()
        self.attention = MultiHeadAttention(hidden_size, n_heads, attn_dropout=0.0, bias=False)

    def forward(self, query: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attention(query, context, mask)


def init_weights(module: nn.Module, std: float) -> None:
    """RecBole's initialisation: normal(0, std) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
