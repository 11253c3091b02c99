"""Training a tiny checkpoint on the bundled corpus, so its next-token distributions are peaked like a
real model's and its greedy output is readable text rather than noise.

Decoder-only models learn next-token prediction on random windows of the corpus. Encoder-decoder models
learn to continue text: the encoder reads a corpus passage (closed by ``</s>``, as T5's tokenizer closes
every input) and the decoder writes the text that follows it.
"""

from __future__ import annotations

import time
from pathlib import Path

CORPUS_WINDOW = 64
SOURCE_TOKENS = 32  # encoder-decoder: longest passage the encoder reads
TARGET_TOKENS = 32  # encoder-decoder: continuation the decoder writes
TRAINER_SOURCE = Path(__file__)


def train_on_corpus(
    model, tokenizer, text: str, *, steps: int, seed: int, lr: float = 3e-3, batch: int = 16
) -> dict:
    """Train ``model`` in place, on one thread: deterministic for a seed and torch version, whatever
    the core count or ``OMP_NUM_THREADS``."""
    import torch

    from .progress import progress as progress_bar

    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    generator = torch.Generator().manual_seed(seed)
    if model.config.is_encoder_decoder:
        sample = _continuation_batches(ids, tokenizer, generator, batch)
    else:
        sample = _window_batches(ids, model.config, generator, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = _schedule(optimizer, lr, steps)
    model.train()
    start = time.perf_counter()
    loss_value = float("nan")
    progress = progress_bar(range(steps), desc=f"training tiny {model.config.model_type}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sums' order, hence the weights, must not depend on the machine's cores
    try:
        for _ in progress:
            loss = model(**next(sample), use_cache=False).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            loss_value = float(loss.detach())
            progress.set_postfix(loss=f"{loss_value:.3f}")
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return {
        "steps": steps,
        "final_loss": round(loss_value, 4),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _window_batches(ids, config, generator, batch: int):
    import torch

    limit = getattr(config, "max_position_embeddings", CORPUS_WINDOW + 1)
    window = min(CORPUS_WINDOW, len(ids) - 1, limit - 1)
    while True:
        starts = torch.randint(0, len(ids) - window, (batch,), generator=generator).tolist()
        inputs = torch.stack([ids[s : s + window + 1] for s in starts])
        yield {"input_ids": inputs, "labels": inputs}


def _continuation_batches(ids, tokenizer, generator, batch: int):
    """Passages end where a prompt written as text ends: before a token that starts with whitespace.
    Each such position is equally likely, so passages at the start of the corpus (where prompts are
    usually taken from) are as well learnt as those in the middle."""
    import torch

    starts_word = [tokenizer.decode([t]).startswith((" ", "\n")) for t in ids.tolist()]
    ends = torch.tensor([p for p in range(1, len(ids) - TARGET_TOKENS) if starts_word[p]])
    if len(ends) == 0:
        raise ValueError(f"the corpus is too short for continuation training: {len(ids)} tokens")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    while True:
        picked = ends[torch.randint(0, len(ends), (batch,), generator=generator)].tolist()
        lengths = torch.randint(1, SOURCE_TOKENS + 1, (batch,), generator=generator).tolist()
        sources = [ids[max(0, end - n) : end].tolist() + [eos] for end, n in zip(picked, lengths)]
        width = max(map(len, sources))
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in sources])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sources])
        labels = torch.stack([ids[end : end + TARGET_TOKENS] for end in picked])
        yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _schedule(optimizer, lr: float, steps: int):
    """One cycle with a tenth of the steps warming up; a short run warms up for 2.5 steps (the one
    cycle divides by its warm-up length less one), and a run of one or two steps keeps ``lr``."""
    import torch

    if steps < 3:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    share = max(0.1, 2.5 / steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=share)
