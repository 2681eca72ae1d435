"""Load fedrank exports as a user would: transformers + peft (+ torch) only, no fedrank.

Run by the tests in a subprocess: ``python plain_load.py jobs.json out.json``. Each job
names an export folder, the texts to classify, and the plain loading calls to try
besides the one the folder's README.md documents (its ``python`` block, run as
written with the folder's path put in). For each call the result is the logits, or
the error it raised.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import torch
from peft import AutoPeftModelForSequenceClassification, PeftModel
from transformers import AutoModelForSequenceClassification

PLACEHOLDER = '"path/to/this/folder"'


def documented(folder: str) -> tuple[Any, Any]:
    """The tokenizer and model of the README's own code (it must also run its example)."""
    with open(f"{folder}/README.md", encoding="utf-8") as handle:
        readme = handle.read()
    found = re.search(r"```python\n(.*?)```", readme, re.S)
    assert found is not None, "the README has no python block"
    code = found.group(1)
    assert PLACEHOLDER in code
    scope: dict[str, Any] = {}
    exec(code.replace(PLACEHOLDER, repr(folder)), scope)
    assert scope["predicted"].shape == (1,)
    return scope["tokenizer"], scope["model"]


def naive(call: str, job: dict[str, Any]) -> Any:
    """A plain call a user might write instead of the documented one."""
    folder = job["folder"]
    if call == "auto-peft":
        return AutoPeftModelForSequenceClassification.from_pretrained(folder)
    if call == "transformers":
        return AutoModelForSequenceClassification.from_pretrained(folder)
    if call == "peft-on-base":
        base = AutoModelForSequenceClassification.from_pretrained(
            job["base"], num_labels=job["num_labels"]
        )
        return PeftModel.from_pretrained(base, folder)
    raise ValueError(call)


def logits(tokenizer: Any, model: Any, texts: list[str]) -> list[list[float]]:
    """Logits of ``texts`` in batches of 16, each padded to its longest text."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 16):
            batch = tokenizer(
                texts[start : start + 16], truncation=True, padding=True, return_tensors="pt"
            )
            out.append(model(**batch).logits)
    return torch.cat(out).tolist()  # type: ignore[no-any-return]


def main(jobs_file: str, out_file: str) -> None:
    with open(jobs_file, encoding="utf-8") as handle:
        jobs = json.load(handle)
    results = []
    for job in jobs:
        tokenizer, model = documented(job["folder"])
        result: dict[str, Any] = {"documented": logits(tokenizer, model, job["texts"])}
        for call in job.get("also", []):
            try:
                result[call] = logits(tokenizer, naive(call, job), job["texts"])
            except Exception as err:  # what a user would see: any loud failure counts
                result[call] = {"error": f"{type(err).__name__}: {err}"}
        results.append(result)
    imported = sorted(m for m in sys.modules if m == "fedrank" or m.startswith("fedrank."))
    with open(out_file, "w", encoding="utf-8") as handle:
        json.dump({"results": results, "fedrank_modules": imported}, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
