"""Evaluate a nano checkpoint with MLX: the shared tasks (nano_core/eval.py, eval_tasks.py) on nano_mlx's backend.

    python -m nano_mlx.eval --ckpt runs/mlx-tiny-... --tasks bpb,wikitext2,hellaswag --limit 500
"""
if __name__ == "__main__":
    # First, before the imports below load mlx: on Linux MLX's CPU wheel multiplies on a bundled reference BLAS (~30x
    # slower than OpenBLAS), and LD_PRELOAD only acts when a process starts, so this re-runs the command once with an
    # installed OpenBLAS preloaded (nano_core/host.py). Done here it costs one interpreter start, not an MLX import.
    from nano_core.host import use_openblas_for_mlx

    use_openblas_for_mlx()

from nano_core import eval as evaluation  # noqa: E402 -- after the re-run above
from nano_mlx.backend import Backend  # noqa: E402


def main(argv=None):
    return evaluation.main(Backend, argv)


if __name__ == "__main__":
    main()
