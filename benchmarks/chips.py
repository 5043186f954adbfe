"""Known peak GPU throughput of Apple silicon (M1 to M4 families), for the MFU denominator of benchmarks/compare.py.

A measured matmul probe is always reported too; this table only adds the number the vendor (or the standard
derivation) gives, so an MFU can be read against the chip's paper peak as well as against what a matmul reaches.

Figures are FP32 TFLOPS of the full GPU configuration of each chip. Sources:
  * Apple newsroom press releases give FP32 "teraflops" for M1 (2.6, Nov 2020), M1 Pro (5.2) and M1 Max (10.4,
    Oct 2021), M1 Ultra (21, Mar 2022), M2 (3.6, Jun 2022), M2 Pro (6.8) and M2 Max (13.6, Jan 2023), M2 Ultra
    (27.2, Jun 2023).
  * Apple stopped quoting TFLOPS from M3 on. For M3/M4 the figure is the usual derivation used by Wikipedia's
    "Apple M3"/"Apple M4" GPU tables: cores x 128 FP32 ALUs x 2 FLOPs (FMA) x GPU clock (M3 family ~1.6 GHz,
    M4 family ~1.6-1.8 GHz).
  * FP16: Apple GPUs since M1 issue FP16 FMAs at the FP32 rate (Wikipedia lists equal FP16/FP32 figures for the
    M-series), so the fp16/bf16 peak is taken equal to fp32. bf16 is emulated on M1/M2 GPUs, so an MFU against
    this figure is an upper bound of what bf16 can reach there.
Chips sold with fewer GPU cores (binned parts) scale linearly with the core count when it can be detected. The brand
string and the core count come from nano_core.host (cpu_brand, gpu_cores).
"""
from __future__ import annotations

import re

# chip -> (GPU cores of the full configuration, FP32 TFLOPS of that configuration)
APPLE_GPU_TFLOPS: dict[str, tuple[int, float]] = {
    "M1": (8, 2.6),          # Apple newsroom, Nov 2020
    "M1 Pro": (16, 5.2),     # Apple newsroom, Oct 2021
    "M1 Max": (32, 10.4),    # Apple newsroom, Oct 2021
    "M1 Ultra": (64, 21.0),  # Apple newsroom, Mar 2022
    "M2": (10, 3.6),         # Apple newsroom, Jun 2022
    "M2 Pro": (19, 6.8),     # Apple newsroom, Jan 2023
    "M2 Max": (38, 13.6),    # Apple newsroom, Jan 2023
    "M2 Ultra": (76, 27.2),  # Apple newsroom, Jun 2023
    "M3": (10, 4.1),         # derived: 10 x 128 x 2 x ~1.6 GHz (Wikipedia "Apple M3")
    "M3 Pro": (18, 7.4),     # derived: 18 x 128 x 2 x ~1.6 GHz
    "M3 Max": (40, 16.4),    # derived: 40 x 128 x 2 x ~1.6 GHz
    "M3 Ultra": (80, 32.8),  # derived: 2 x M3 Max
    "M4": (10, 4.3),         # derived: 10 x 128 x 2 x ~1.7 GHz (Wikipedia "Apple M4")
    "M4 Pro": (20, 8.5),     # derived: 20 x 128 x 2 x ~1.7 GHz
    "M4 Max": (40, 17.0),    # derived: 40 x 128 x 2 x ~1.7 GHz
}
FP16_OVER_FP32 = 1.0  # see the module docstring


def apple_chip(brand: str) -> str | None:
    """'Apple M3 Max' -> 'M3 Max'; None when the brand string is not a known Apple M-series chip."""
    m = re.search(r"\b(M[1-4])(?:\s+(Pro|Max|Ultra))?\b", brand)
    if not m or "Apple" not in brand:
        return None
    name = m.group(1) + (f" {m.group(2)}" if m.group(2) else "")
    return name if name in APPLE_GPU_TFLOPS else None


def known_gpu_peak(brand: str, dtype: str, cores: int | None = None) -> tuple[float, str] | None:
    """(peak FLOP/s, where the figure comes from) for the GPU of a recognised Apple chip, else None."""
    chip = apple_chip(brand)
    if chip is None:
        return None
    full_cores, tflops = APPLE_GPU_TFLOPS[chip]
    scale = cores / full_cores if cores else 1.0
    peak = tflops * 1e12 * scale * (FP16_OVER_FP32 if dtype != "fp32" else 1.0)
    cores_note = f"{cores} of {full_cores} cores" if cores else f"{full_cores}-core configuration assumed"
    return peak, f"Apple {chip} GPU {tflops * scale:.1f} TFLOPS {dtype} ({cores_note}; table in benchmarks/chips.py)"
