"""CLIP's text encoder in Flax, from a transformers config.json.

Our own port of what transformers' PyTorch `CLIPTextModel` and
`CLIPTextModelWithProjection` compute (the text encoders of Stable
Diffusion 1.x, 2.x and both of SDXL's): token and position embeddings,
pre-norm transformer layers with causal self-attention, a final layer
norm, the pooled state at the end-of-text token, and, with a projection,
`text_projection` of it.

`CLIPText(...)(ids)` returns a dict: `last_hidden_state` (after the final
norm; what SD 1.x and 2.x condition on), `hidden_states` (the embeddings'
output, then each layer's, before the final norm: SDXL conditions on
`hidden_states[-2]`), `pooled` and, with `projection`, `text_embeds`.

Submodules are named after PyTorch's module paths (`text_model/encoder/
layers_0/self_attn/q_proj`), so weights convert by rule through
`weight_key`. Every parameter carries logical axis names; attention runs
through `models.attention` (causality as a mask of the scores, so the
reference implementation is used: the sequences are 77 tokens).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from boot_jax.models import attention as attention_lib
from boot_jax.models import layers
from boot_jax.models import unet_blocks as blocks

ACTIVATIONS = {
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  "gelu": functools.partial(jax.nn.gelu, approximate=False),
  "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
}


class CLIPConfigError(ValueError):
  """A CLIP text config.json this port does not implement."""


def check_config(cfg: dict) -> None:
  """Refuses, in one line, what the port does not run."""
  options = (("hidden_act", tuple(ACTIVATIONS), "quick_gelu"),)
  blocks.check_options(
    cfg, {}, options, "CLIP", CLIPConfigError, part="text encoder"
  )
  if int(cfg["hidden_size"]) % int(cfg["num_attention_heads"]):
    raise CLIPConfigError(
      "the text encoder's hidden_size is not a multiple of its "
      "num_attention_heads"
    )


def table_key(pt_key: str) -> str | None:
  """A transformers CLIP weight's key as `models.weights.torch_key` reads
  it (embedding tables are `embedding`, not transposed); None for the
  `position_ids` buffer older checkpoints hold."""
  if pt_key.endswith("position_ids"):
    return None
  if pt_key.endswith(("token_embedding.weight", "position_embedding.weight")):
    return pt_key[: -len("weight")] + "embedding"
  return pt_key


def weight_key(pt_key: str) -> str | None:
  """`table_key` for a text encoder's folder, whose keys start with
  `text_model.` as transformers 4 saves them, or without it (transformers
  5 saves a `CLIPTextModel` without its base model's prefix)."""
  if pt_key.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
    pt_key = "text_model." + pt_key
  return table_key(pt_key)


class _Attention(nn.Module):
  heads: int
  dtype: object = None

  @nn.compact
  def __call__(self, x, mask):
    b, length, width = x.shape
    head_dim = width // self.heads

    def proj(name, y, names=("embed", "heads")):
      return layers.dense(width, names, dtype=self.dtype, name=name)(y)

    def split(y):
      return y.reshape(b, length, self.heads, head_dim)

    q, k, v = (split(proj(n, x)) for n in ("q_proj", "k_proj", "v_proj"))
    out = attention_lib.reference(q, k, v, head_dim**-0.5, mask)
    out = out.reshape(b, length, width)
    return proj("out_proj", out, ("heads", "embed"))


class _Layer(nn.Module):
  heads: int
  ffn: int
  act: str
  eps: float
  dtype: object = None

  @nn.compact
  def __call__(self, x, mask):
    dt = self.dtype
    h = blocks.layer_norm(dt, "layer_norm1", self.eps)(x)
    x = x + _Attention(self.heads, dt, name="self_attn")(h, mask)
    h = blocks.layer_norm(dt, "layer_norm2", self.eps)(x)
    h = layers.MLP(self.ffn, None, ACTIVATIONS[self.act], dtype=dt,
                   name="mlp")(h)  # fmt: skip
    return x + h


class _Embeddings(nn.Module):
  vocab: int
  positions: int
  width: int

  @nn.compact
  def __call__(self, ids):
    def table(rows, name):
      return nn.Embed(
        rows,
        self.width,
        embedding_init=layers.partitioned(
          nn.initializers.normal(0.02), ("classes", "embed")
        ),
        name=name,
      )

    tokens = table(self.vocab, "token_embedding")(ids)
    where = jnp.arange(ids.shape[1])
    return tokens + table(self.positions, "position_embedding")(where)[None]


class TextTransformer(nn.Module):
  cfg: dict
  remat: bool | str = False
  dtype: object = None

  @nn.compact
  def __call__(self, ids):
    cfg = self.cfg
    width = int(cfg["hidden_size"])
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    h = _Embeddings(
      int(cfg["vocab_size"]),
      int(cfg.get("max_position_embeddings", 77)),
      width,
      name="embeddings",
    )(ids)
    h = h.astype(self.dtype or jnp.float32)
    length = ids.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    h, states = Encoder(cfg, self.remat, self.dtype, name="encoder")(h, mask)
    last = blocks.layer_norm(self.dtype, "final_layer_norm", eps)(h)
    eos = int(cfg.get("eos_token_id", 2))
    if eos == 2:  # configs before the eos fix: the highest id ends the text
      where = jnp.argmax(ids, axis=-1)
    else:
      where = jnp.argmax(ids == eos, axis=-1)
    pooled = last[jnp.arange(ids.shape[0]), where]
    return last, tuple(states), pooled


class Encoder(nn.Module):
  """The layers (`encoder/layers_i`): the last state and every state (the
  input, then each layer's output). `mask`: which keys each query sees
  (the text's causal mask; None: all, as the vision tower)."""

  cfg: dict
  remat: bool | str = False
  dtype: object = None

  @nn.compact
  def __call__(self, h, mask):
    cfg = self.cfg
    layer_cls = layers.rematted(_Layer, self.remat)
    states = [h]
    for i in range(int(cfg["num_hidden_layers"])):
      h = layer_cls(
        int(cfg["num_attention_heads"]),
        int(cfg["intermediate_size"]),
        cfg.get("hidden_act", "quick_gelu"),
        float(cfg.get("layer_norm_eps", 1e-5)),
        self.dtype,
        name=f"layers_{i}",
      )(h, mask)
      states.append(h)
    return h, states


class CLIPText(nn.Module):
  """transformers' `CLIPTextModel` (`projection` False) or
  `CLIPTextModelWithProjection` (True): `ids [B, L] -> dict` (module doc).
  """

  text_config: dict
  projection: bool = False
  remat: bool | str = False
  dtype: object = None

  @nn.compact
  def __call__(self, ids):
    check_config(self.text_config)
    last, states, pooled = TextTransformer(
      self.text_config, self.remat, self.dtype, name="text_model"
    )(jnp.asarray(ids, jnp.int32))
    out = dict(
      last_hidden_state=last.astype(jnp.float32),
      hidden_states=tuple(s.astype(jnp.float32) for s in states),
      pooled=pooled.astype(jnp.float32),
    )
    if self.projection:
      dim = int(self.text_config.get("projection_dim", 512))
      out["text_embeds"] = nn.Dense(
        dim,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=layers.partitioned(
          nn.initializers.lecun_normal(), ("embed", "mlp")
        ),
        name="text_projection",
      )(pooled).astype(jnp.float32)
    return out
