"""The benchmark suite's report: every figure with its target and pass/miss, as ``suite.json`` and as
the markdown table of ``suite.md`` (also shown in the README)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

GB = 1e9
WARM_TARGET = 2.0  # warm full verdict <= 2 x the import floor
MLP_TARGET = 1.5  # -k mlp <= 1.5 x the import floor
STREAMING_TARGET = 1.5  # streamed golden peak RSS <= 1.5 x (largest layer + non-layer parameters)
TEACHER_FORCED_TARGET = 0.1  # cold teacher-forced golden <= 1/10 of HF greedy generation


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    target: str = ""
    status: str = ""  # "pass", "miss", or "" for a figure without a target


def judged(ok: bool) -> str:
    return "pass" if ok else "miss"


def verdict_rows(v: dict) -> list[Row]:
    n = v["repeats"]
    floor = v["import_floor_s"]
    trained = ", tiny checkpoint trained" if v["cold_trained_checkpoint"] else ", tiny checkpoint reused"
    golden = v["warm_golden"]
    return [
        Row(f"import floor (median of {n})", f"{floor:.2f} s"),
        Row(
            "cold full verdict (graphs compiled, golden computed)",
            f"{v['cold_s']:.1f} s = {v['cold_over_floor']:.2f}x floor ({v['cold_verdict']}{trained})",
        ),
        Row(
            f"warm full verdict (median of {n})",
            f"{v['warm_s']:.1f} s = {v['warm_over_floor']:.2f}x floor ({v['warm_verdict']})",
            f"<= {WARM_TARGET:g}x floor",
            judged(v["warm_over_floor"] <= WARM_TARGET),
        ),
        Row(
            f"warm `-k mlp` (median of {n})",
            f"{v['mlp_s']:.1f} s = {v['mlp_over_floor']:.2f}x floor",
            f"<= {MLP_TARGET:g}x floor",
            judged(v["mlp_over_floor"] <= MLP_TARGET),
        ),
        Row(
            "warm golden: HF model time",
            f"{golden['hf_seconds']} s (cache {golden['cache']}, HF model loaded: {golden['hf_model_loaded']})",
            "0 s",
            judged(golden["hf_seconds"] == 0),
        ),
        Row(
            "cold golden: HF model time",
            f"{v['cold_golden']['hf_seconds']} s (cache {v['cold_golden']['cache']})",
        ),
    ]


def xdist_rows(x: dict) -> list[Row]:
    return [
        Row(
            "`-k component`, warm: `-n 2` vs `-n 0`",
            f"{x['n2_s']:.1f} s vs {x['n0_s']:.1f} s: speed-up {x['speedup']:.2f}x",
        )
    ]


def compile_rows(c: dict) -> list[Row]:
    rows = []
    for compiler, buckets in c.items():
        if buckets:
            cells = ", ".join(f"{graph} {seconds:.1f}" for graph, seconds in buckets.items())
            rows.append(Row(f"compile s per bucket ({compiler}, tiny Llama)", cells))
    return rows


def streaming_rows(s: dict) -> list[Row]:
    budget = s["budget_bytes"]
    size = f"{s['checkpoint_bytes'] / GB:.2f} GB checkpoint"
    return [
        Row(
            f"golden reference held whole ({size})",
            f"{s['whole']['seconds']:.1f} s, peak RSS {s['whole']['peak_rss_bytes'] / GB:.2f} GB",
        ),
        Row(
            f"golden reference streamed ({size})",
            f"{s['streaming']['seconds']:.1f} s, peak RSS {s['streaming']['peak_rss_bytes'] / GB:.2f} GB = "
            f"{s['streaming_ratio_raw']:.2f}x budget ({s['streaming_ratio_above_interpreter']:.2f}x above the "
            f"{s['interpreter_rss_bytes'] / GB:.2f} GB interpreter)",
            f"<= {STREAMING_TARGET:g}x (largest layer + non-layer = {budget / GB:.2f} GB)",
            judged(s["streaming_ratio_raw"] <= STREAMING_TARGET),
        ),
    ]


def golden_cost_rows(g: dict, checkpoint: dict) -> list[Row]:
    size = f"{checkpoint['parameters'] / 1e6:.0f}M Llama, {checkpoint['checkpoint_bytes'] / GB:.2f} GB"
    model = f"{size}, {len(g['new_tokens'])} prompts x {g['new_tokens'][0]} tokens"
    return [
        Row(
            f"cold teacher-forced golden, streamed, vs HF greedy generation ({model})",
            f"{g['teacher_forced_streamed_s']:.1f} s vs {g['hf_generate_s']:.1f} s = "
            f"{g['streamed_over_generate']:.3f}",
            f"<= {TEACHER_FORCED_TARGET:g}",
            judged(g["streamed_over_generate"] <= TEACHER_FORCED_TARGET),
        ),
        Row(
            "teacher-forced scoring, model held whole, vs HF greedy generation (same run)",
            f"{g['teacher_forced_whole_s']:.1f} s vs {g['hf_generate_s']:.1f} s = {g['whole_over_generate']:.3f}",
        ),
    ]


def decode_rows(port: dict, hf: dict, checkpoint: dict) -> list[Row]:
    rate = port.get("decode_tokens_per_s")
    if not rate:
        return [Row("port decode tokens/s", f"not measured: generate {port['status']} {port['message']}")]
    return [
        Row(
            f"port decode tokens/s vs HF `generate` ({checkpoint['parameters'] / 1e6:.0f}M Llama, same run)",
            f"{rate:.1f} vs {hf['hf_decode_tokens_per_s']:.1f}",
            ">= HF",
            judged(rate >= hf["hf_decode_tokens_per_s"]),
        )
    ]


def rows(report: dict) -> list[Row]:
    """The table's rows from whatever sections the report holds; a section that failed says so."""
    builders = [
        ("verdict", lambda r: verdict_rows(r["verdict"])),
        ("xdist", lambda r: xdist_rows(r["xdist"])),
        ("compile", lambda r: compile_rows(r["compile"])),
        ("streaming", lambda r: streaming_rows(r["streaming"])),
        ("llama_checkpoint", lambda r: []),
        ("golden_cost", lambda r: golden_cost_rows(r["golden_cost"], r["llama_checkpoint"])),
        ("port_decode", lambda r: decode_rows(r["port_decode"], r["golden_cost"], r["llama_checkpoint"])),
    ]
    out: list[Row] = []
    for section, build in builders:
        value = report.get(section)
        if value is None:
            continue
        if isinstance(value, dict) and "error" in value:
            out.append(Row(section, f"not measured: {value['error']}", status="error"))
            continue
        try:
            out.extend(build(report))
        except (KeyError, TypeError) as exc:  # a section whose dependency failed
            out.append(Row(section, f"not measured: missing {exc}", status="error"))
    return out


def machine_line(report: dict) -> str:
    m = report["machine"]
    load = lambda key: "/".join(f"{x:.2f}" for x in m[key])  # noqa: E731
    return (
        f"{m['cpus']} x {m['cpu_model']}, {m['mem_total_bytes'] / GB:.1f} GB RAM, torch {m['torch']}, "
        f"transformers {m['transformers']}, OMP_NUM_THREADS={m['omp_num_threads']}; load average (1/5/15 min) "
        f"{load('load_average_before')} before, {load('load_average_after')} after"
    )


def markdown(report: dict) -> str:
    waited = (
        f", {report['lock_wait_s']:.0f} s of it waiting for /tmp/bigmem.lock"
        if report.get("lock_wait_s")
        else ""
    )
    lines = [
        f"Command: `{report['command']}` ({report['mode']} mode, {report['duration_s']:.0f} s{waited}, "
        f"{report['started_at']})",
        "",
        f"Machine: {machine_line(report)}",
        "",
        *([] if report.get("complete", True) else ["Incomplete: the suite stopped or is still running.", ""]),
        *(
            [
                "Quick mode: small checkpoints and one repeat, a smoke run; the targets are meant for the full mode.",
                "",
            ]
            if report["mode"] == "quick"
            else []
        ),
        "| figure | value | target | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['figure']} | {r['value']} | {r['target'] or '-'} | {r['status'] or '-'} |"
        for r in report["table"]
    ]
    return "\n".join(lines) + "\n"


def write(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """``suite.json`` and ``suite.md`` in ``out_dir``; the report gains its table rows."""
    report["table"] = [asdict(r) for r in rows(report)]
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "suite.json", out_dir / "suite.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
