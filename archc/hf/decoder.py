"""The shape every decoder-only family shares, and the `.arch` text written for it.

A family module reads its config into a `Decoder` (which norm, which positions, which FFN, how
the block combines its sublayers) and maps its tensors onto the parameter names this template
gives. The text is what a user would write by hand: `let` constants, one `repeat`, plain calls.
Every feature is a library option or a spec construct: a scaled rope is bound once
(`rope_cfg = rope(..., scaling = "llama3", ...)`), a layer picks its window and rope (local vs
global, or `none` for NoPE layers) with an `if` on the layer index, and a q/k norm the library
lacks is a small block written into the spec (Gemma's 1 + w, Cohere's per-head weights).

Parameter names of the template:
    embed_tokens, embed_positions, embed_norm,
    layers.N.{input_norm, self_attn.{q,k,v,o,q_norm,k_norm}, post_attention_norm,
              pre_feedforward_norm, post_feedforward_norm,
              mlp.{fc,proj | gate,up,down | router,experts.*}},
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
    embed_dim: int = 0  # OPT-350m: embeddings this wide, projected in to d and out before the head
    final_norm: bool = True
    position_offset: int = 0
    positions_from_mask: bool = False  # OPT: positions count only unmasked tokens
    embed_scale: bool = False  # x * sqrt(d)
    embed_norm: bool = False
    embed_mult: float = 1.0  # Granite's multipliers: embeddings, residual branches
    residual_mult: float = 1.0
    residual_from_norm: bool = False  # Bloom's post-LN residual: h + f(h) with h = norm(x)
    logits_mult: float = 1.0  # logits * mult / div (Cohere's logit_scale, Granite's scaling)
    logits_div: float = 1.0
    alibi: bool = False
    rope: dict | None = None  # theta, fraction | dim, interleaved, scaling and its options
    local_rope: dict | None = None  # the rope of windowed layers, when theirs differs (Gemma 3)
    nope_layers: list[int] | None = None  # layers without positions (SmolLM3)
    qk_norm: str | None = None  # per `head` (Qwen3, Gemma 3), over `all` of q and k (OLMo 2),
    # or per head with weights of each head's own (`head_weights`: Cohere, StableLM)
    qkv_bias: bool = False
    out_bias: bool = False
    scale: str | None = None  # a score-scale expression, e.g. "256 ** -0.5"
    softcap: float = 0.0
    window: int = 0
    window_layers: list[int] | None = None  # None: every layer (when window > 0)
    block: str = "sequential"  # sequential | parallel | parallel_two_norms | sandwich | post |
    # post_ln (norm(x + f(x)): OPT-350m)
    ffn: str = "glu"  # glu | mlp | moe
    act: str = "silu"
    ffn_bias: bool = False
    experts: int = 0
    top_k: int = 0
    head: str = "untied"  # untied | tied | none
    head_bias: bool = False
    final_softcap: float = 0.0
    comment: list[str] = field(default_factory=list)
    serving: str | None = None  # the `serving ...` statement (archc.serving.statement)

    # ------------------------------------------------------------ the text
    def _serving(self) -> list[str]:
        """The `serving` statement's lines, laid out as `archc fmt` would."""
        if not self.serving:
            return []
        from archc.fmt import format_text

        return format_text(f"model m {{\n  {self.serving}\n}}\n").splitlines()[1:-1]

    def render(self) -> str:
        lets = [f"vocab = {self.vocab}", f"d = {self.d}", f"heads = {self.heads}"]
        if self.kv_heads and self.kv_heads != self.heads:
            lets.append(f"kv_heads = {self.kv_heads}")
        if self.head_dim and self.head_dim * self.heads != self.d:
            lets.append(f"head_dim = {self.head_dim}")
        if self.embed_dim:
            lets.append(f"embed_dim = {self.embed_dim}")
        lets += [f"ff = {self.ff}", f"layers = {self.layers}", f"eps = {self.eps!r}"]
        if self.window:
            lets.append(f"window = {self.window}")
        lines = [f"# {c}" for c in self.comment]
        if self.qk_norm and self.norm == "rms_norm_offset":  # Gemma's (1 + w), as a qk norm
            lines += ["block offset_rms_norm(x, eps) {",
                      "  return rms_norm(x, eps, unit_offset = true) as _", "}", ""]
        if self.qk_norm == "head_weights":
            lines += ["# LayerNorm without bias over each head, with a weight of its own per head",
                      "block head_layer_norm(x, eps) {  # [B, T, heads, head_dim]",
                      "  weight = param(dim(x, -2), dim(x, -1), init = ones)",
                      "  xc = x - mean(x, keepdims = true)",
                      "  return xc / sqrt(mean(xc * xc, keepdims = true) + eps) * weight", "}",
                      ""]
        let = wrap("let ", lets, "", width=96, indent=4)
        lines += [f"model {self.name} {{", *("  " + x for x in let), *self._serving(), "",
                  "  input input_ids: int64[batch, seq]",
                  "  input attention_mask: int64[batch, seq]", "",
                  f"  x = embed(input_ids, vocab, {'embed_dim' if self.embed_dim else 'd'})"
                  " as embed_tokens"]
        if self.embed_dim:
            lines.append("  x = linear(x, d, bias = false) as project_in")
        if self.embed_scale:
            lines.append("  x = x * sqrt(d)")
        if self.embed_mult != 1.0:
            lines.append(f"  x = x * {self.embed_mult!r}")
        for name, r in self._ropes().items():
            for key in ("short_factor", "long_factor"):  # long lists get a name of their own
                if len(r.get(key) or ()) > 8:
                    var = key if name == "rope_cfg" else f"local_{key}"
                    lines += wrap(f"  {var} = [", [repr(float(v)) for v in r[key]], "]",
                                   width=96, indent=4)
                    r = {**r, key: var}
            lines += wrap(f"  {name} = rope(", _rope_args(r), ")", width=96, indent=4)
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
        if self._ropes():
            opts.append("rope = r" if self._rope_choice() else "rope = rope_cfg")
        elif self.rope is not None:
            opts.append(f"rope = rope({', '.join(_rope_args(self.rope))})")
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
        if self.qk_norm:
            fn = {"rms_norm_offset": "offset_rms_norm"}.get(self.norm, self.norm)
            if self.qk_norm == "head_weights":
                fn = "head_layer_norm"
            opts += [f"{'qk_norm_all' if self.qk_norm == 'all' else 'qk_norm'} = {fn}",
                     "qk_eps = eps"]
        src = "x" if self.block in ("post", "post_ln") else "h"
        return wrap(f"attention({src}, ", opts, ") as self_attn")

    def _ropes(self) -> dict[str, dict]:
        """Ropes bound once at model level: scaled ones, and any a layer chooses between."""
        if self.rope is None or not (self.local_rope or self.nope_layers or
                                     set(self.rope) - {"theta", "fraction", "dim", "interleaved"}):
            return {}
        ropes = {"rope_cfg": self.rope}
        if self.local_rope:
            ropes["rope_local"] = self.local_rope
        return ropes

    def _rope_choice(self) -> str | None:
        """The `if` that picks each layer's rope (and window), or None when all layers share."""
        if self.local_rope and self.window and self.window_layers is not None:
            cond = _layer_condition(self.window_layers, self.layers)
            return f"if {cond} {{ w = window  r = rope_local }} else {{ w = 0  r = rope_cfg }}"
        if self.local_rope and self.window:  # every layer windowed
            return "r = rope_local"
        if self.nope_layers:
            cond = _layer_condition(self.nope_layers, self.layers)
            return f"if {cond} {{ r = none }} else {{ r = rope_cfg }}"
        return None

    def _ffn(self, x: str) -> str:
        bias = str(self.ffn_bias).lower()
        if self.ffn == "moe":
            return f"moe({x}, {self.experts}, {self.top_k}, ff, act = {self.act}) as mlp"
        if self.ffn == "glu":
            return f"glu({x}, ff, act = {self.act}, bias = {bias}) as mlp"
        return f"mlp({x}, ff, act = {self.act}, bias = {bias}) as mlp"

    def _layer(self) -> list[str]:
        out = []
        choice = self._rope_choice()
        if self.window and self.window_layers is not None and not (choice and self.local_rope):
            cond = _layer_condition(self.window_layers, self.layers)
            out.append(f"if {cond} {{ w = window }} else {{ w = 0 }}")
        if choice:
            out.append(choice)
        if self.block not in ("post", "post_ln"):
            out.append(f"h = {self._norm('x')} as input_norm")
        attn = self._attention()
        out += ["a = " + attn[0], *attn[1:]]
        if self.block in ("sandwich", "post"):  # a norm after each sublayer (and before: sandwich)
            out.append(f"x = x + {self._norm('a')} as post_attention_norm")
            if self.block == "sandwich":
                out.append(f"h = {self._norm('x')} as pre_feedforward_norm")
            out.append(f"f = {self._ffn('h' if self.block == 'sandwich' else 'x')}")
            out.append(f"x = x + {self._norm('f')} as post_feedforward_norm")
        elif self.block == "post_ln":  # the original Transformer's norm after each residual
            out.append(f"x = {self._norm('x + a')} as input_norm")
            out.append(f"x = {self._norm('x + ' + self._ffn('x'))} as post_attention_norm")
        elif self.block == "parallel":  # attention and FFN read the same normed input
            out.append(f"x = x + a + {self._ffn('h')}")
        elif self.block == "parallel_two_norms":
            out.append(f"g = {self._norm('x')} as post_attention_norm")
            out.append(f"x = x + a + {self._ffn('g')}")
        else:
            res = "h" if self.residual_from_norm else "x"
            out.append(f"x = {res} + {self._residual('a')}")
            out.append(f"h = {self._norm('x')} as post_attention_norm")
            out.append(f"x = {res} + {self._residual(self._ffn('h'))}")
        return out

    def _residual(self, branch: str) -> str:
        if self.residual_mult == 1.0:
            return branch
        return f"({branch}) * {self.residual_mult!r}" if " as " in branch else \
            f"{branch} * {self.residual_mult!r}"

    def _head(self) -> list[str]:
        final = f"{self._norm('x')} as norm" if self.final_norm else "x"
        if self.embed_dim:
            final = f"linear({final}, embed_dim, bias = false) as project_out"
        if self.head == "none":
            return [f"  output last_hidden_state = {final}"]
        opts = ["vocab"]
        if self.head == "tied":
            opts.append("tied = embed_tokens")
        if self.head_bias:
            opts.append("bias = true")
        logits = f"lm_head(y, {', '.join(opts)})"
        if self.logits_mult != 1.0:
            logits += f" * {self.logits_mult!r}"
        if self.logits_div != 1.0:
            logits += f" / {self.logits_div!r}"
        if self.final_softcap:
            logits = f"softcap({logits}, {self.final_softcap!r})"
        return [f"  y = {final}", f"  output logits = {logits}"]


def wrap(head: str, opts: list[str], tail: str, indent: int = 14, width: int = 84) -> list[str]:
    """`head` + the comma-separated `opts` + `tail`, broken into lines of at most `width`
    columns, continuation lines indented by `indent` spaces."""
    lines, cur = [], head
    for i, o in enumerate(opts):
        piece = o + (", " if i < len(opts) - 1 else "")
        if len(cur) + len(piece) > width and cur.strip() != head.strip():
            lines.append(cur.rstrip())
            cur = " " * indent
        cur += piece
    lines.append(cur + tail)
    return lines


_ROPE_ARGS = ("theta", "dim", "fraction", "interleaved", "scaling", "factor", "original_max",
              "max_pos", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow",
              "attention_factor", "mscale", "mscale_all_dim", "truncate", "short_factor",
              "long_factor")


def _rope_args(r: dict) -> list[str]:
    """`rope(...)` options from a dict of checked config values (numbers, bools, a scaling name
    from rope.SCALINGS, lists of numbers), in a fixed order; defaults are left out."""
    args = []
    for key in _ROPE_ARGS:
        v = r.get(key)
        if v is None or (key == "fraction" and (r.get("dim") or v == 1.0)) or \
                (key == "interleaved" and not v):
            continue
        if isinstance(v, bool):
            v = str(v).lower()
        elif isinstance(v, str) and key != "scaling":  # a list bound to a name above
            pass
        elif isinstance(v, list):
            v = "[" + ", ".join(repr(float(x)) for x in v) + "]"
        elif key in ("dim", "original_max", "max_pos"):
            v = int(v)
        elif key == "scaling":  # quoted: a bare `linear` would name the library block
            v = f'"{v}"'
        else:
            v = repr(float(v))
        args.append(f"{key} = {v}")
    return args


def _layer_condition(layers: list[int], n: int) -> str:
    """A condition on the layer index that holds for exactly `layers` of 0..n-1: a period
    (every p-th layer, or all but every p-th, as Gemma 3's 5 local : 1 global) or a list."""
    for period in range(2, n):
        for op in ("==", "!="):
            for r in range(period):
                if layers == [i for i in range(n) if (i % period == r) == (op == "==")]:
                    return f"layers % {period} {op} {r}"
    return " or ".join(f"layers == {i}" for i in layers) or "false"
