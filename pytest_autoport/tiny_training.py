"""Training a tiny checkpoint on the bundled corpus, so its next-token distributions are peaked like a
real model's and its greedy output is readable text rather than noise."""

from __future__ import annotations

import sys
import time

CORPUS_WINDOW = 64


def train_on_corpus(
    model, tokenizer, text: str, *, steps: int, seed: int, lr: float = 3e-3, batch: int = 16
) -> dict:
    """Next-token training on random windows of ``text``; deterministic for a seed and torch version."""
    import torch
    from tqdm import tqdm

    ids = torch.tensor(tokenizer(text)["input_ids"])
    limit = getattr(model.config, "max_position_embeddings", CORPUS_WINDOW + 1)
    window = min(CORPUS_WINDOW, len(ids) - 1, limit - 1)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.perf_counter()
    loss_value = float("nan")
    progress = tqdm(
        range(steps), desc=f"training tiny {model.config.model_type}", disable=not sys.stderr.isatty()
    )
    for _ in progress:
        starts = torch.randint(0, len(ids) - window, (batch,), generator=generator)
        inputs = torch.stack([ids[s : s + window + 1] for s in starts.tolist()])
        loss = model(input_ids=inputs, labels=inputs, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        progress.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    return {
        "steps": steps,
        "final_loss": round(loss_value, 4),
        "seconds": round(time.perf_counter() - start, 2),
    }
