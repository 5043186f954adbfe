"""benchmarks/compare.py's outputs: step-time statistics, loss parity, the FLOP section, the stdout and markdown
tables and the PNG plots. Pure functions of the measurements; nothing here runs a model."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from harness import pyplot, save_figure, save_json, save_text
from nano_core.config import ModelConfig

PARITY_TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}
FLOP_CONVENTION = ("training FLOPs/token = 3 x forward (ModelConfig.estimate_flops); forward = 2*out*in per matmul "
                   "weight (a tied embedding counted once, as the head) + per layer 2*2*T_eff*n_head*head_dim for "
                   "QK^T and PV; T_eff = T (full) or min(window, T) (sliding); causal masking not discounted "
                   "(PaLM/nanoGPT convention); checked against an independent count in tests/test_flops.py")


# ----------------------------------------------------------------------------- numbers
def stats_ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    p25, med, p75 = np.percentile(ms, [25, 50, 75])
    return {"median": float(med), "p25": float(p25), "p75": float(p75), "iqr": float(p75 - p25),
            "min": float(ms.min()), "max": float(ms.max()), "n": int(ms.size)}


def flops_section(cfg: ModelConfig) -> dict:
    """FLOPs per token from the config, split into the matmul and the attention part (both forward)."""
    total = cfg.estimate_flops()
    matmul_fwd = 2 * cfg.matmul_params()
    return {"per_token_estimate": total, "convention": FLOP_CONVENTION,
            "breakdown": {"matmul_fwd": matmul_fwd, "attention_fwd": total // 3 - matmul_fwd}}


def parity(losses: dict[str, list[float]], val: dict[str, dict], dtype: str) -> dict:
    """Each backend's losses against the first one's, step by step, and the val loss."""
    names = list(losses)
    ref = np.asarray(losses[names[0]], dtype=np.float64)
    ref_val = val[names[0]]["val_loss"]
    tol = PARITY_TOLERANCE[dtype]
    pairs = {}
    for n in names[1:]:
        other = np.asarray(losses[n], dtype=np.float64)
        rel = np.abs(other - ref) / np.abs(ref)
        pairs[n] = {"max_rel_diff": float(rel.max()), "final_rel_diff": float(rel[-1]),
                    "max_abs_diff": float(np.abs(other - ref).max()), "rel_diff": rel.tolist(),
                    "val_loss_rel_diff": float(abs(val[n]["val_loss"] - ref_val) / abs(ref_val)),
                    "within_tolerance": bool(rel.max() <= tol)}
    return {"reference": names[0], "tolerance": tol, "dtype": dtype, "pairs": pairs}


# ----------------------------------------------------------------------------- tables
SUMMARY_HEADER = ["backend", "tok/s", "ms/step", "IQR ms", "min-max ms", "MFU", "MFU chip", "peak GFLOP/s",
                  "peak mem", "final loss", "val loss", "val bpb", "max rel dLoss"]
ATTN_HEADER = ["backend", "kind", "n_kv_head", "window", "fwd ms", "fwd+bwd ms", "fwd GFLOP/s"]


def _fmt_bytes(b) -> str:
    return "n/a" if not b else f"{b / 2**20:,.0f} MiB"


def _pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.1%}"


def summary_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, b in report["backends"].items():
        ms = b["ms_per_step"]
        pair = report["parity"]["pairs"].get(name)
        rows.append([name, f"{b['tok_per_s']:,.0f}", f"{ms['median']:,.1f}", f"{ms['iqr']:,.1f}",
                     f"{ms['min']:,.0f}-{ms['max']:,.0f}", _pct(b["mfu"]["measured"]), _pct(b["mfu"]["known"]),
                     f"{b['peak_flops']['measured'] / 1e9:,.0f}", _fmt_bytes(b["peak_memory"]["bytes"]),
                     f"{b['final_loss']:.4f}", f"{b['val']['val_loss']:.4f}", f"{b['val']['val_bpb']:.4f}",
                     "ref" if pair is None else f"{pair['max_rel_diff']:.1e}"])
    return rows


def attention_rows(att: dict) -> list[list[str]]:
    return [[r["backend"], r["kind"], r["n_kv_head"], "full" if r["window"] is None else r["window"],
             f"{r['fwd_ms']:.2f}", f"{r['fwd_bwd_ms']:.2f}", f"{r['fwd_gflops_per_s']:.1f}"] for r in att["rows"]]


def text_table(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def md_table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                     + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows])


def parity_lines(par: dict) -> list[str]:
    return [f"{n} vs {par['reference']}: max rel diff {p['max_rel_diff']:.2e}, final {p['final_rel_diff']:.2e}, "
            f"val loss rel diff {p['val_loss_rel_diff']:.2e} (tolerance {par['tolerance']:g}: "
            f"{'ok' if p['within_tolerance'] else 'above tolerance'})" for n, p in par["pairs"].items()]


def flops_line(fl: dict) -> str:
    b = fl["breakdown"]
    return (f"FLOPs/token (estimate_flops): {fl['per_token_estimate']:,} = 3 x ({b['matmul_fwd']:,} matmul + "
            f"{b['attention_fwd']:,} attention) forward")


def print_summary(report: dict, log=print) -> None:
    """The stdout part: the step table, FLOPs, parity, the attention table."""
    log("")
    log(text_table(SUMMARY_HEADER, summary_rows(report)))
    log(flops_line(report["flops"]))
    for line in parity_lines(report["parity"]):
        log(f"loss parity {line}")
    if report["attention"]["rows"]:
        log("")
        log(text_table(ATTN_HEADER, attention_rows(report["attention"])))


def write_markdown(report: dict, path: Path) -> None:
    run, att = report["run"], report["attention"]
    lines = [f"# nano backend comparison ({report['created']})", "",
             f"Model: {json.dumps({k: v for k, v in report['config'].items() if v is not None})}", "",
             f"Run: B={run['batch_size']} T={run['seq_len']} dtype={run['dtype']}, {run['warmup']} warm-up + "
             f"{run['steps']} x {run['repeats']} timed steps per backend (order alternated per repeat), "
             f"lr {run['lr']} ({run['schedule']}), data {run['data_source']}", "",
             "## Training step", "", md_table(SUMMARY_HEADER, summary_rows(report)), "",
             "MFU = estimate_flops x tok/s / peak; peak = measured matmul probe (MFU chip: the chip's known peak, "
             "when recognised). Steps: " + "; ".join(f"{n}: {b['step']}" for n, b in report["backends"].items())
             + ". Peak memory methods: " + "; ".join(
                 f"{n}: {b['peak_memory']['method']}" for n, b in report["backends"].items()), "",
             "## FLOPs", "", f"{flops_line(report['flops'])}. Convention: {report['flops']['convention']}.", "",
             "## Loss parity", ""]
    lines += [f"- {line}" for line in parity_lines(report["parity"])]
    lines += ["", "## Attention alone", ""]
    lines += ["(skipped)"] if att.get("skipped") else [
        f"B={att['batch_size']} T={att['seq_len']} n_head={att['n_head']} head_dim={att['head_dim']}; "
        f"{att['convention']}.", "", md_table(ATTN_HEADER, attention_rows(att))]
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in report["env"].items()]
    lines += ["", " ".join(f"![{Path(f).stem}]({f})" for f in report["files"] if f.endswith(".png")), ""]
    save_text(path, "\n".join(lines))


# ----------------------------------------------------------------------------- plots
def plot_loss(report: dict, path: Path) -> None:
    """Loss curves of every backend, and below them the relative difference to the reference."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for n, b in report["backends"].items():
        ax.plot(range(1, len(b["loss"]) + 1), b["loss"], marker="o", ms=3, lw=1.2, label=n)
    ax.axvspan(0.5, report["run"]["warmup"] + 0.5, color="gray", alpha=0.15, label="warm-up (untimed)")
    ax.set_ylabel("train loss (nats/token)")
    ax.set_title(f"same init, same batches ({report['run']['dtype']})")
    ax.legend()
    ax.grid(alpha=0.3)
    par = report["parity"]
    for n, p in par["pairs"].items():
        ax2.semilogy(range(1, len(p["rel_diff"]) + 1), np.maximum(p["rel_diff"], 1e-12), marker=".", label=n)
    ax2.axhline(par["tolerance"], color="red", ls="--", lw=1, label=f"tolerance {par['tolerance']:g}")
    ax2.set_ylabel(f"|rel diff| vs {par['reference']}")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_throughput(report: dict, path: Path) -> None:
    """Median tok/s per backend with the slowest..fastest step as whiskers, MFU on each bar."""
    plt = pyplot()
    names, run = list(report["backends"]), report["run"]
    toks = [report["backends"][n]["tok_per_s"] for n in names]
    tokens = run["batch_size"] * run["seq_len"]
    lo = [tokens / (report["backends"][n]["ms_per_step"]["max"] / 1e3) for n in names]
    hi = [tokens / (report["backends"][n]["ms_per_step"]["min"] / 1e3) for n in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, toks, color=[f"C{i}" for i in range(len(names))],
                  yerr=[np.subtract(toks, lo), np.subtract(hi, toks)], capsize=6)
    for bar, n in zip(bars, names):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() / 2,
                f"{bar.get_height():,.0f} tok/s\nMFU {_pct(report['backends'][n]['mfu']['measured'])}",
                ha="center", va="center", fontsize=9, color="white")
    ax.set_ylabel("tokens / s (median step; whiskers: slowest..fastest step)")
    ax.set_title(f"training throughput, B={run['batch_size']} T={run['seq_len']} {run['dtype']}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_attention(report: dict, path: Path) -> None:
    """Grouped bars per attention variant, one bar per backend; forward and forward+backward panels."""
    plt = pyplot()
    names, rows = list(report["backends"]), report["attention"]["rows"]
    variants = list(dict.fromkeys((r["kind"], r["n_kv_head"], r["window"]) for r in rows))
    labels = [f"{k} kv={kv}\n{'full' if w is None else f'win {w}'}" for k, kv, w in variants]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for ax, key, title in zip(axes, ("fwd_ms", "fwd_bwd_ms"), ("forward", "forward + backward")):
        for i, n in enumerate(names):
            vals = [next(r[key] for r in rows if r["backend"] == n and (r["kind"], r["n_kv_head"], r["window"]) == v)
                    for v in variants]
            ax.bar(np.arange(len(variants)) + i * width, vals, width, label=n)
        ax.set_xticks(np.arange(len(variants)) + width * (len(names) - 1) / 2, labels, fontsize=7)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"attention {title}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_all(report: dict, out: Path) -> None:
    """report.json, report.md and the plots named in report["files"]."""
    plots = {"loss.png": plot_loss, "throughput.png": plot_throughput, "attention.png": plot_attention}
    for name in report["files"]:
        if name in plots:
            plots[name](report, out / name)
    save_json(out / "report.json", report)
    write_markdown(report, out / "report.md")
