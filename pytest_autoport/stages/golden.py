"""Stage ``golden``: the compiled port against the FP32 HuggingFace golden.

token mode (default): free-running greedy match >= threshold; teacher-forced match reported beside it.
Every mode: scoring parity, the teacher-forced logits (one context-encoding pass of prompt + golden
continuation) against HF's at every scored position (see golden_scoring.py).
logit mode: NxD Inference style top-k logit check on the token-generation logits (calibrated to the
dtype by default, NxDI's fixed tolerances with --autoport-logit-tolerance=nxdi).
all: both gates.
Every mode: decode-step parity, each golden token fed through the token-generation graphs and every
step's logits compared with HF's at the same position (see golden_decode.py).
At every divergence: the position, both tokens, the golden's top-1 - top-2 margin (a near-tie or a
real error?) and whether the port's token is in the golden's top 5.
"""

from __future__ import annotations

import torch

from ..discrete import margin_aware_token_match
from ..errors import StageFailure
from ..numerics_tokens import teacher_forced_match, token_match
from .golden_decode import decode_parity, hf_low_precision, logit_figures
from .golden_reference import reference_figures, reference_note, streamed_windows, streaming
from .golden_scoring import scoring_parity


def run(session) -> dict:
    mode = session.options.golden_mode
    ported = session.golden_run.tokens
    threshold = session.spec.validation.token_match_threshold
    if streaming(session):
        # the port's own continuation scored; the golden token at each position is the streamed
        # reference's argmax after the port's prefix
        scored, cache_figures = ported, {}
        golden_logits = streamed_windows(session, scored, torch.float32)
        golden = [g.argmax(-1).tolist() for g in golden_logits]
    else:
        reference = session.golden_reference
        scored = golden = reference.tokens
        golden_logits, cache_figures = reference.logits, reference.figures()
    port_logits = _port_teacher_forced_logits(session, scored)
    free = token_match(golden, ported)
    forced = [teacher_forced_match(g, p) for g, p in zip(golden_logits, port_logits)]
    forced_matched = sum(f["matched"] for f in forced)
    forced_total = sum(f["total"] for f in forced)
    divergences = _divergences(session, golden_logits, forced)
    free_divergences = _free_running_divergences(
        session, golden, ported, golden_logits, free.first_divergence
    )
    figures = {
        "mode": mode,
        "token_match": round(free.rate, 4),
        "teacher_forced_match": round(forced_matched / forced_total, 4) if forced_total else 1.0,
        "threshold": threshold,
        "matched": free.matched,
        "total": free.total,
        "first_divergence": free.first_divergence,
        "divergences": divergences,
        "free_running_divergences": free_divergences,
        **cache_figures,
    }
    hf_lp = hf_low_precision(session, scored)  # HF in the port's low precision; None for FP32
    figures.update(
        margin_aware_token_match(free, forced, golden_logits, ported, session.spec.port.dtype, hf_lp)
    )
    figures.update(reference_figures(session))
    problems = []
    if mode in ("token", "all") and figures["token_match_margin_aware"] < threshold:
        problems.append(
            reference_note(session)
            + f"greedy token match {free.rate:.1%} is below the threshold {threshold:.0%} "
            f"(teacher-forced {figures['teacher_forced_match']:.1%}"
            + (f"; {figures['near_tie_note']})" if figures["near_tie_note"] else ")")
        )
        problems += [f"  {d['text']}" for d in free_divergences]
        if figures["teacher_forced_match"] >= threshold:
            problems.append(
                "teacher-forced scoring (one context-encoding pass) agrees with the golden: the fault is in "
                "the token-generation path (KV-cache writes, decode positions, token-generation buckets)"
            )
    figures["scoring_parity"], scoring_problem = scoring_parity(
        session, scored, golden_logits, port_logits, hf_lp
    )
    if scoring_problem:
        problems.append(reference_note(session) + scoring_problem)
    figures["decode_parity"], decode_problem, decode_run = decode_parity(
        session, scored, golden_logits, hf_lp
    )
    if decode_problem:
        problems.append(reference_note(session) + decode_problem)
    if mode in ("logit", "all"):
        logit, logit_problem = logit_figures(session, decode_run, (golden_logits, port_logits))
        figures.update(logit)
        if logit_problem:
            problems.append(logit_problem)
    figures["hf_model_loaded"] = "hf_model" in vars(session)
    if problems:
        detail = "\n".join(f"  {d['text']}" for d in divergences[:10])
        raise StageFailure(
            "\n".join(problems) + ("\ndivergences (teacher-forced):\n" + detail if detail else ""), figures
        )
    return figures


def _port_teacher_forced_logits(session, continuations: list[list[int]]) -> list[torch.Tensor]:
    """The compiled port's logits predicting each continuation token, scoring prompt + continuation in
    one pass (encoder-decoder: the decoder scores start token + continuation given the prompt as
    encoder input)."""
    if session.is_encoder_decoder:
        start = session.hf_config.decoder_start_token_id
        port_all = session.compiled_model.score(
            [[start] + t for t in continuations], sources=session.prompt_ids
        )
        windows = [slice(0, len(t)) for t in continuations]
    else:
        port_all = session.compiled_model.score([p + t for p, t in zip(session.prompt_ids, continuations)])
        windows = [slice(len(p) - 1, len(p) - 1 + len(t)) for p, t in zip(session.prompt_ids, continuations)]
    return [logits[window] for logits, window in zip(port_all, windows)]


def _divergences(session, golden_logits, forced) -> list[dict]:
    decode = session.tokenizer.decode
    out = []
    for prompt_index, result in enumerate(forced):
        for d in result["divergences"]:
            out.append(
                {
                    "prompt": prompt_index,
                    "position": d["position"],
                    "golden_token": d["golden_token"],
                    "port_token": d["port_token"],
                    "golden_text": decode([d["golden_token"]]),
                    "port_text": decode([d["port_token"]]),
                    "golden_margin": round(d["golden_margin"], 6),
                    "port_token_in_golden_top5": d["port_token_in_golden_top5"],
                }
            )
    for d in out:
        kind = "near-tie" if d["golden_margin"] < 0.01 else "real divergence"
        d["text"] = (
            f"prompt {d['prompt']} new token {d['position']}: golden {d['golden_token']} {d['golden_text']!r} vs "
            f"port {d['port_token']} {d['port_text']!r}; golden margin {d['golden_margin']:.4g} ({kind}); "
            f"port token in golden top-5: {d['port_token_in_golden_top5']}"
        )
    return out


def _free_running_divergences(session, golden, ported, golden_logits, first_divergence) -> list[dict]:
    """The first divergence of each prompt's free-running continuation, with the golden's margin there."""
    decode = session.tokenizer.decode
    out = []
    for i, pos in enumerate(first_divergence):
        if pos is None:
            continue
        port_token = ported[i][pos] if pos < len(ported[i]) else None
        top = torch.topk(golden_logits[i][pos], 5)
        margin = float(top.values[0] - top.values[1])
        d = {
            "prompt": i,
            "position": pos,
            "golden_token": golden[i][pos],
            "port_token": port_token,
            "golden_margin": round(margin, 6),
            "port_token_in_golden_top5": port_token in top.indices.tolist(),
        }
        d["text"] = (
            f"prompt {i}: free-running output diverges at new token {pos}: golden {d['golden_token']} "
            f"{decode([d['golden_token']])!r} vs port {port_token} "
            f"{decode([port_token]) if port_token is not None else ''!r}; golden margin {margin:.4g} "
            f"({'near-tie' if margin < 0.01 else 'real divergence'})"
        )
        out.append(d)
    return out


def _merge_max(dicts) -> dict:
    merged: dict = {}
    for d in dicts:
        for key, value in d.items():
            merged[key] = max(merged.get(key, 0.0), value)
    return merged
