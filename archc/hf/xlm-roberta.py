"""xlm-roberta: roberta with a multilingual vocabulary (`XLMRobertaModel`,
`XLMRobertaForMaskedLM`); the same layout under the same `roberta.` prefix. (The module name
is the config's `model_type`, hyphen included.)"""

from __future__ import annotations

from archc.hf import roberta

describe = roberta.describe
weights = roberta.weights
