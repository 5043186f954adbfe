"""The Mac self-check: every path a Mac takes, run on the owner's machine in about two minutes, in one report.

    python benchmarks/mac_check.py                 # on an Apple-silicon Mac: paste mac_check.md into an issue
    python benchmarks/mac_check.py --quick         # seconds, on any machine (the test suite runs it on Linux CPU)

What it checks, in order (each backend in its own process, as the training commands run):
1. the machine: chip, macOS, Python architecture (a Rosetta Python is called out), MLX and PyTorch versions, the
   GPU each backend sees, the dtype each picks by itself (--dtype auto) and why, MLX's Metal device info;
2. speed, memory and cross-backend parity: benchmarks/compare.py on the GPU backends (mlx-gpu, torch-mps; the CPU
   backends where there is no GPU) in fp32 and in bf16, the same init and batches for both: tokens/s, MFU against
   the measured matmul peak and the chip's known peak, peak memory (and what was measured), the largest loss
   difference between the backends;
3. resume: per backend, a run of 6 steps against a run stopped at step 3 and resumed with --resume latest: the
   losses of steps 4-6 must be the same (the training commands promise bit-exact resume).
Outputs in --out: mac_check.md (the report), mac_check.json, and the compare reports under compare/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_workers import available_backends  # noqa: E402
from nano_core.host import apple_gpu_has_bf16, cpu_brand, gpu_cores  # noqa: E402
from nano_core.metrics import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MICRO = {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 64}  # the resume check's model: correctness, not speed
RESUME_ARGS = ["--batch-size", "4", "--log-every", "1", "--eval-every", "1000", "--eval-steps", "1",
               "--sample-every", "1000", "--sample-tokens", "4", "--ckpt-every", "3", "--warmup-steps", "2",
               "--lr", "3e-3", "--dtype", "fp32"]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """A child in the repository root; its stdout and stderr kept for the report when it fails."""
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def translated() -> bool:
    """True under Rosetta 2 (an x86 Python on an Apple-silicon Mac): sysctl.proc_translated is 1 there."""
    if sys.platform != "darwin":
        return False
    out = subprocess.run(["sysctl", "-n", "sysctl.proc_translated"], capture_output=True, text=True).stdout.strip()
    return out == "1"


def framework_facts() -> dict:
    """Versions, devices and the automatic dtype of each backend, each read in a child (the frameworks load there)."""
    probe = ("import json, sys\n"
             "out = {}\n"
             "try:\n"
             "    import mlx.core as mx\n"
             "    from nano_mlx.backend import gpu_info, pick_dtype\n"
             "    gpu = mx.is_available(mx.gpu)\n"
             "    out['mlx'] = {'version': mx.__version__, 'gpu': gpu, 'auto_dtype': pick_dtype('auto', 'gpu' if gpu "
             "else 'cpu'), 'device_info': {k: str(v) for k, v in gpu_info().items()} if gpu else None}\n"
             "except ImportError as e:\n"
             "    out['mlx'] = {'missing': str(e)}\n"
             "try:\n"
             "    import torch\n"
             "    from nano_torch.backend import pick_device, pick_dtype\n"
             "    dev = pick_device('auto')\n"
             "    out['torch'] = {'version': torch.__version__, 'device': dev, 'auto_dtype': pick_dtype('auto', dev)}\n"
             "except ImportError as e:\n"
             "    out['torch'] = {'missing': str(e)}\n"
             "print(json.dumps(out))\n")
    proc = run([sys.executable, "-c", probe])
    if proc.returncode != 0:
        raise RuntimeError(f"the framework probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_facts() -> dict:
    brand = cpu_brand()
    return {"chip": brand, "gpu_cores": gpu_cores(), "bf16_hardware": apple_gpu_has_bf16(brand),
            "os": platform.platform(), "macos": platform.mac_ver()[0] or None, "python": platform.python_version(),
            "python_arch": platform.machine(), "rosetta": translated()}


def speed_and_parity(out: Path, backends: list[str], quick: bool) -> dict:
    """benchmarks/compare.py in fp32 and bf16; its reports, by dtype."""
    size = ["--quick"] if quick else ["--steps", "6", "--repeats", "2", "--warmup", "2"]
    cmd = [sys.executable, "benchmarks/compare.py", "--backends", ",".join(backends), "--dtype", "fp32,bf16",
           "--no-attention", "--out", str(out / "compare"), *size]
    proc = run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks/compare.py failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return {d: json.loads((out / "compare" / d / "report.json").read_text()) for d in ("fp32", "bf16")}


def resume_check(out: Path, framework: str, data: Path, config: Path) -> dict:
    """Losses of steps 4-6: straight through vs stopped at 3 and resumed."""
    module = f"nano_{framework}.train"
    common = [sys.executable, "-m", module, "--data", str(data), "--config", str(config), *RESUME_ARGS]
    straight, resumed = out / f"resume-{framework}-straight", out / f"resume-{framework}-resumed"
    for cmd in ([*common, "--max-steps", "6", "--out", str(straight)],
                [*common, "--max-steps", "3", "--out", str(resumed)],
                [sys.executable, "-m", module, "--resume", "latest", "--out", str(resumed), "--max-steps", "6"]):
        proc = run(cmd)
        if proc.returncode != 0:
            return {"ok": False, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    a, b = ({r["step"]: r["train_loss"] for r in read_metrics(d) if "train_loss" in r} for d in (straight, resumed))
    diff = max(abs(a[s] - b[s]) for s in (4, 5, 6))
    return {"ok": diff == 0.0, "max_abs_diff": diff, "losses": [a[s] for s in (4, 5, 6)]}


def prepare_micro(out: Path) -> tuple[Path, Path]:
    """A small shard set (the builtin text, vocab 512) and the micro model's config, inside --out."""
    from nano_core.prepare import prepare

    data = out / "data"
    if not (data / "manifest.json").is_file():
        prepare(["builtin"], data, vocab_size=512, val_tokens=8192, progress=False)
    config = out / "micro.json"
    config.write_text(json.dumps(MICRO))
    return data, config


def report_md(r: dict) -> str:
    m, f = r["machine"], r["frameworks"]
    lines = ["# nano Mac self-check", "",
             f"- chip: {m['chip']} ({m['gpu_cores'] or '?'} GPU cores; bf16 in hardware: {m['bf16_hardware']})",
             f"- {m['os']}; Python {m['python']} {m['python_arch']}" + (" UNDER ROSETTA: install a native arm64 "
                                                                        "Python" if m["rosetta"] else ""),
             f"- MLX: {f['mlx'].get('version', f['mlx'].get('missing'))}, GPU {f['mlx'].get('gpu')}, auto dtype "
             f"{f['mlx'].get('auto_dtype')}",
             f"- PyTorch: {f['torch'].get('version', f['torch'].get('missing'))}, device {f['torch'].get('device')}, "
             f"auto dtype {f['torch'].get('auto_dtype')}", "",
             "| dtype | backend | tok/s | MFU (measured peak) | MFU (chip's peak) | memory | max loss diff |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for dtype, rep in r["compare"].items():
        pairs = rep["parity"]["pairs"]
        for name, b in rep["backends"].items():
            known = b["mfu"].get("known")
            diff = pairs.get(name, {}).get("max_rel_diff")
            lines.append(f"| {dtype} | {name} | {b['tok_per_s']:,.0f} | {b['mfu']['measured']:.1%} | "
                         f"{'-' if known is None else format(known, '.1%')} | "
                         f"{b['peak_memory']['bytes'] / 2**20:,.0f} MiB ({b['peak_memory']['method']}) | "
                         f"{'reference' if diff is None else format(diff, '.1e')} |")
    lines += ["", "| resume (steps 4-6 after --resume latest) | identical | max abs diff |", "|---|---|---:|"]
    for fw, res in r["resume"].items():
        lines.append(f"| {fw} | {res['ok']} | {res.get('max_abs_diff', res.get('error'))} |")
    lines += ["", f"took {r['seconds']:.0f} s; `python benchmarks/mac_check.py {' '.join(r['argv'])}`"]
    return "\n".join(lines) + "\n"


def mac_check(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    avail = available_backends()
    gpu = [b for b in avail if b in ("mlx-gpu", "torch-mps", "torch-cuda")]
    backends = gpu or [b for b in avail if b.endswith("-cpu")]
    if not backends:
        raise ValueError("neither MLX nor PyTorch is installed; pip install -e '.[all]'")
    result = {"machine": machine_facts(), "frameworks": framework_facts(), "backends": backends}
    print(f"mac_check: {result['machine']['chip']}; backends {', '.join(backends)}", flush=True)
    result["compare"] = speed_and_parity(out, backends, args.quick)
    data, config = prepare_micro(out)
    result["resume"] = {fw: resume_check(out, fw, data, config)
                        for fw in dict.fromkeys(b.split("-")[0] for b in backends)}
    result["seconds"], result["argv"] = time.time() - t0, sys.argv[1:]
    (out / "mac_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "mac_check.md").write_text(report_md(result))
    print(report_md(result))
    print(f"wrote {out / 'mac_check.md'}: paste it into an issue")
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    stamp = time.strftime('%Y%m%d-%H%M%S')
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"mac-check-{stamp}"),
                   help="output directory")
    p.add_argument("--quick", action="store_true", help="a very small model and few steps (seconds; CI)")
    args = p.parse_args(argv)
    try:
        return mac_check(args)
    except (ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
