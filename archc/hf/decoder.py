"""The shape every decoder-only family shares, and the `.arch` text written for it.

A family module reads its config into a `Decoder` (which norm, which positions, which FFN, how
the block combines its sublayers) and maps its tensors onto the parameter names this template
gives. The text is what a user would write by hand: `let` constants, one `repeat`, plain calls.

Parameter names of the template:
    embed_tokens, embed_positions, embed_norm,
    layers.N.{input_norm, self_attn.{q,k,v,o}, post_attention_norm, pre_feedforward_norm,
              post_feedforward_norm, mlp.{fc,proj | gate,up,down | router,experts.*}},
    norm, lm_head
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Decoder:
    name: str
    vocab: int
    d: int
    heads: int
    layers: int
    ff: int
    eps: float
    kv_heads: int | None = None  # None: as many as heads
    head_dim: int | None = None  # None: d / heads
    norm: str = "rms_norm"  # rms_norm | layer_norm | rms_norm_offset (Gemma's 1 + w)
    norm_bias: bool = True  # for layer_norm
    learned_positions: int = 0  # max positions of a learned table (0: none)
    position_offset: int = 0
    positions_from_mask: bool = False  # OPT: positions count only unmasked tokens
    embed_scale: bool = False  # x * sqrt(d)
    embed_norm: bool = False
    alibi: bool = False
    rope: dict | None = None  # theta, fraction | dim, interleaved
    qkv_bias: bool = False
    out_bias: bool = False
    scale: str | None = None  # a score-scale expression, e.g. "256 ** -0.5"
    softcap: float = 0.0
    window: int = 0
    window_layers: list[int] | None = None  # None: every layer (when window > 0)
    block: str = "sequential"  # sequential | parallel | parallel_two_norms | sandwich
    ffn: str = "glu"  # glu | mlp | moe
    act: str = "silu"
    ffn_bias: bool = False
    experts: int = 0
    top_k: int = 0
    head: str = "untied"  # untied | tied | none
    head_bias: bool = False
    final_softcap: float = 0.0
    comment: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ the text
    def render(self) -> str:
        lets = [f"vocab = {self.vocab}", f"d = {self.d}", f"heads = {self.heads}"]
        if self.kv_heads and self.kv_heads != self.heads:
            lets.append(f"kv_heads = {self.kv_heads}")
        if self.head_dim and self.head_dim * self.heads != self.d:
            lets.append(f"head_dim = {self.head_dim}")
        lets += [f"ff = {self.ff}", f"layers = {self.layers}", f"eps = {self.eps!r}"]
        if self.window:
            lets.append(f"window = {self.window}")
        lines = [f"# {c}" for c in self.comment]
        let = _wrap("let ", lets, "", width=96, indent=4)
        lines += [f"model {self.name} {{", *("  " + x for x in let), "",
                  "  input input_ids: int64[batch, seq]",
                  "  input attention_mask: int64[batch, seq]", "",
                  "  x = embed(input_ids, vocab, d) as embed_tokens"]
        if self.embed_scale:
            lines.append("  x = x * sqrt(d)")
        if self.learned_positions:
            opts = f", offset = {self.position_offset}" if self.position_offset else ""
            opts += ", mask = attention_mask" if self.positions_from_mask else ""
            lines.append(f"  x = x + pos_embed(input_ids, {self.learned_positions}, d{opts})"
                         " as embed_positions")
        if self.embed_norm:
            lines.append(f"  x = {self._norm('x')} as embed_norm")
        if self.alibi:
            lines.append("  bias = alibi(attention_mask, heads)")
        lines.append("  repeat layers as layers {")
        lines += ["    " + line for line in self._layer()]
        lines.append("  }")
        lines += self._head()
        return "\n".join(lines) + "\n}\n"

    def _norm(self, x: str) -> str:
        if self.norm == "layer_norm":
            return f"layer_norm({x}, eps)" if self.norm_bias else f"layer_norm({x}, eps, false)"
        if self.norm == "rms_norm_offset":
            return f"rms_norm({x}, eps, unit_offset = true)"
        return f"rms_norm({x}, eps)"

    def _attention(self) -> list[str]:
        opts = ["heads"]
        if self.kv_heads and self.kv_heads != self.heads:
            opts.append("kv_heads = kv_heads")
        if self.head_dim and self.head_dim * self.heads != self.d:
            opts.append("head_dim = head_dim")
        opts += ["causal", "mask = attention_mask"]
        if self.window:
            opts.append("window = w" if self.window_layers is not None else "window = window")
        if self.rope is not None:
            r = self.rope
            parts = [f"theta = {float(r['theta'])!r}"]
            if r.get("dim"):
                parts.append(f"dim = {r['dim']}")
            elif r.get("fraction", 1.0) != 1.0:
                parts.append(f"fraction = {float(r['fraction'])!r}")
            if r.get("interleaved"):
                parts.append("interleaved = true")
            opts.append(f"rope = rope({', '.join(parts)})")
        if self.alibi:
            opts.append("position_bias = bias")
        if self.qkv_bias == self.out_bias:
            opts.append(f"bias = {str(self.qkv_bias).lower()}")
        else:
            opts += [f"qkv_bias = {str(self.qkv_bias).lower()}",
                     f"out_bias = {str(self.out_bias).lower()}"]
        if self.scale is not None:
            opts.append(f"scale = {self.scale}")
        if self.softcap:
            opts.append(f"softcap = {self.softcap!r}")
        return _wrap("attention(h, ", opts, ") as self_attn")

    def _ffn(self, x: str) -> str:
        bias = str(self.ffn_bias).lower()
        if self.ffn == "moe":
            return f"moe({x}, {self.experts}, {self.top_k}, ff, act = {self.act}) as mlp"
        if self.ffn == "glu":
            return f"glu({x}, ff, act = {self.act}, bias = {bias}) as mlp"
        return f"mlp({x}, ff, act = {self.act}, bias = {bias}) as mlp"

    def _layer(self) -> list[str]:
        out = []
        if self.window and self.window_layers is not None:
            cond = _layer_condition(self.window_layers, self.layers)
            out.append(f"if {cond} {{ w = window }} else {{ w = 0 }}")
        out.append(f"h = {self._norm('x')} as input_norm")
        attn = self._attention()
        out += ["a = " + attn[0], *attn[1:]]
        if self.block == "sandwich":  # a norm before and after each sublayer
            out.append(f"x = x + {self._norm('a')} as post_attention_norm")
            out.append(f"h = {self._norm('x')} as pre_feedforward_norm")
            out.append(f"f = {self._ffn('h')}")
            out.append(f"x = x + {self._norm('f')} as post_feedforward_norm")
        elif self.block == "parallel":  # attention and FFN read the same normed input
            out.append(f"x = x + a + {self._ffn('h')}")
        elif self.block == "parallel_two_norms":
            out.append(f"g = {self._norm('x')} as post_attention_norm")
            out.append(f"x = x + a + {self._ffn('g')}")
        else:
            out.append("x = x + a")
            out.append(f"h = {self._norm('x')} as post_attention_norm")
            out.append(f"x = x + {self._ffn('h')}")
        return out

    def _head(self) -> list[str]:
        final = f"{self._norm('x')} as norm"
        if self.head == "none":
            return [f"  output last_hidden_state = {final}"]
        opts = ["vocab"]
        if self.head == "tied":
            opts.append("tied = embed_tokens")
        if self.head_bias:
            opts.append("bias = true")
        logits = f"lm_head(y, {', '.join(opts)})"
        if self.final_softcap:
            logits = f"softcap({logits}, {self.final_softcap!r})"
        return [f"  y = {final}", f"  output logits = {logits}"]


def _wrap(head: str, opts: list[str], tail: str, width: int = 84, indent: int = 14) -> list[str]:
    lines, cur = [], head
    for i, o in enumerate(opts):
        piece = o + (", " if i < len(opts) - 1 else "")
        if len(cur) + len(piece) > width and cur.strip() != head.strip():
            lines.append(cur.rstrip())
            cur = " " * indent
        cur += piece
    lines.append(cur + tail)
    return lines


def _layer_condition(layers: list[int], n: int) -> str:
    if layers == list(range(0, n, 2)):
        return "layers % 2 == 0"
    if layers == list(range(1, n, 2)):
        return "layers % 2 == 1"
    return " or ".join(f"layers == {i}" for i in layers) or "false"
