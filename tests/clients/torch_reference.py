"""Reference answers computed by PyTorch itself, run with the cached torch venv's Python
(scripts/install-torch-python.sh), since PyTorch is not in the test venv (~2.5 GB of CUDA
wheels). Each command reads a JSON request on stdin and writes a JSON answer on stdout:

  embed FOLDER          {"texts": [...]} -> {"embeddings": [[...]], "input_ids": [[...]], "attention_mask": [[...]]}
                        sentence-transformers' own encode(), and its tokenizer's ids (padded)
  classify FOLDER       {"texts": [...]} -> {"logits": [[...]]}: transformers' BertForSequenceClassification
  make-classifier SRC DEST LABELS
                        a BertForSequenceClassification with SRC's encoder weights and a seeded
                        random head, saved by save_pretrained (safetensors) with SRC's tokenizer
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def embed(folder: str) -> dict:
    from sentence_transformers import SentenceTransformer

    texts = json.load(sys.stdin)["texts"]
    model = SentenceTransformer(folder, device="cpu")
    embeddings = model.encode(texts, convert_to_numpy=True, batch_size=len(texts))
    tokens = model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_seq_length)
    return {
        "embeddings": embeddings.tolist(),
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
    }


def classify(folder: str) -> dict:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    texts = json.load(sys.stdin)["texts"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return {"logits": model(**batch).logits.tolist()}


def make_classifier(source: str, dest: str, labels: str) -> dict:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    n = int(labels)
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(source, num_labels=n, id2label={i: f"class{i}" for i in range(n)})
    config.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(config)
    model.bert.load_state_dict(BertModel.from_pretrained(source).state_dict(), strict=False)
    model.eval().save_pretrained(dest, safe_serialization=True)
    for name in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
        if (Path(source) / name).exists():
            shutil.copyfile(Path(source) / name, Path(dest) / name)
    return {"saved": dest}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    answer = {"embed": embed, "classify": classify, "make-classifier": make_classifier}[command](*args)
    json.dump(answer, sys.stdout)
