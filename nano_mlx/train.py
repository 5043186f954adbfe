"""Train a nano GPT with MLX (Metal GPU or CPU): the shared loop (nano_core/loop.py) on nano_mlx's backend.

    python -m nano_mlx.train                        # whole pipeline: data, default preset, eval, sample, checkpoint
    python -m nano_mlx.train --preset tiny --source ../shared/data/fineweb_edu --source ../shared/data/gutenberg
    python -m nano_mlx.train --resume latest --out runs/mlx-tiny-...   # continue exactly where it stopped
"""
if __name__ == "__main__":
    # First, before the imports below load mlx: on Linux MLX's CPU wheel multiplies on a bundled reference BLAS (~30x
    # slower than OpenBLAS), and LD_PRELOAD only acts when a process starts, so this re-runs the command once with an
    # installed OpenBLAS preloaded (nano_core/host.py). Done here it costs one interpreter start, not an MLX import.
    from nano_core.host import use_openblas_for_mlx

    use_openblas_for_mlx()

from nano_core import loop  # noqa: E402 -- after the re-run above
from nano_mlx.backend import Backend  # noqa: E402


def main(argv=None):
    return loop.main(Backend, argv)


if __name__ == "__main__":
    main()
