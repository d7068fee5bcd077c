"""Exports a sentence-transformers BERT folder to ONNX the way users do (torch.onnx.export of
the encoder with its mean pooling and L2 normalisation), and writes the request data for one
sentence, tokenised with the folder's own tokenizer, for the benchmark clients.

Runs in the PyTorch venv of scripts/install-torch-python.sh:

    python export_encoder_onnx.py FOLDER OUT_DIR SENTENCE

OUT_DIR gets model.onnx (inputs input_ids, attention_mask, token_type_ids: INT64
[batch, sequence]; output embedding: FP32 [batch, hidden]), tokens.json (the sentence's
token ids, as a V2 JSON body for one row) and embedding.json (sentence-transformers' own
embedding of the sentence, to check the served answers against).
"""

import json
import sys
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


class Embed(torch.nn.Module):
    """The encoder, then mean pooling over real tokens and L2 normalisation."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def main():
    folder, out, sentence = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    out.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(str(folder), device="cpu")
    pooling = model[1].get_config_dict()
    if pooling.get("pooling_mode") != "mean" or len(model) != 3:
        sys.exit(f"{folder}: only mean pooling + Normalize is exported here, got {pooling}")
    tokens = model.tokenizer(sentence, return_tensors="pt")
    args = tuple(tokens[n] for n in NAMES)
    with torch.no_grad():
        torch.onnx.export(
            Embed(model[0].auto_model.eval()),
            args,
            str(out / "model.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=NAMES,
            output_names=["embedding"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in NAMES} | {"embedding": {0: "batch"}},
        )
    length = tokens["input_ids"].shape[1]
    body = {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": [1, length], "data": tokens[n][0].tolist()}
            for n in NAMES
        ]
    }
    (out / "tokens.json").write_text(json.dumps(body))
    reference = model.encode([sentence], normalize_embeddings=False)[0].tolist()
    (out / "embedding.json").write_text(json.dumps(reference))
    print(f"exported {out / 'model.onnx'} ({length} tokens for the sentence)")


if __name__ == "__main__":
    main()
