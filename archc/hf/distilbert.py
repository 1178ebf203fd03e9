"""distilbert: bert without token types or pooler, its own tensor names (`q_lin`, `sa_layer_norm`,
`ffn.lin1`, ...) and LayerNorm eps 1e-12 everywhere; `DistilBertForMaskedLM` has a
`vocab_transform` + activation + `vocab_layer_norm` head tied to the word embeddings with its
own bias. With `sinusoidal_pos_embds` the position table is sinusoidal but stored in the
checkpoint like a learned one, so it loads the same way."""

from __future__ import annotations

from archc.hf import bert, llama
from archc.hf.config import HFConfig

NAMES = {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
         "o": "attention.out_lin", "attention_norm": "sa_layer_norm", "mlp.fc": "ffn.lin1",
         "mlp.proj": "ffn.lin2", "mlp_norm": "output_layer_norm"}


def shape(c: HFConfig) -> bert.Encoder:
    return bert.Encoder(c.get("vocab_size"), bert.size(c, "dim"), bert.size(c, "n_heads"),
                        bert.size(c, "hidden_dim"), bert.size(c, "n_layers"),
                        c.get("max_position_embeddings"), 0, 1e-12,
                        llama.act(c.get("activation", default="gelu")))


def describe(c: HFConfig, tensors=None) -> str:
    s = shape(c)
    return bert.render(c, "pos_embed(input_ids, max_pos, d)", lets=f", max_pos = {s.rows}", s=s,
                       pooler=False)


def weights(c: HFConfig, spec: str, t) -> dict:
    s = shape(c)
    p = "distilbert." if t.has("distilbert.embeddings.word_embeddings.weight") else ""
    out = {"word_embeddings.weight": t.take(f"{p}embeddings.word_embeddings.weight",
                                            (s.vocab, s.d)),
           "position_embeddings.weight": t.take(f"{p}embeddings.position_embeddings.weight",
                                                (s.rows, s.d))}
    bert.common.norm(out, t, f"{p}embeddings.LayerNorm", "embed_norm", s.d)
    for i in range(s.layers):
        bert.layer_weights(out, t, f"{p}transformer.layer.{i}", f"layers.{i}", s, names=NAMES)
    if bert.heads_of(c)[1]:
        bert.mlm_weights(out, t, s, "vocab")
    return out
