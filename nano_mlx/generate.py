"""Sample text from a nano checkpoint with MLX: the shared sampler (nano_core/generate.py) on nano_mlx's backend.

    python -m nano_mlx.generate --ckpt runs/mlx-tiny-.../ckpt_0000300 --prompt "The" --max-new-tokens 100
"""
if __name__ == "__main__":
    # First, before the imports below load mlx: on Linux MLX's CPU wheel multiplies on a bundled reference BLAS (~30x
    # slower than OpenBLAS), and LD_PRELOAD only acts when a process starts, so this re-runs the command once with an
    # installed OpenBLAS preloaded (nano_core/host.py). Done here it costs one interpreter start, not an MLX import.
    from nano_core.host import use_openblas_for_mlx

    use_openblas_for_mlx()

from nano_core import generate  # noqa: E402 -- after the re-run above
from nano_mlx.backend import Backend  # noqa: E402


def main(argv=None):
    return generate.main(Backend, argv)


if __name__ == "__main__":
    main()
