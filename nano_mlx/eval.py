"""Evaluate a nano checkpoint with MLX: the shared tasks (nano_core/eval.py) on nano_mlx's backend.

    python -m nano_mlx.eval --ckpt runs/mlx-tiny-... --tasks bpb,wikitext2,hellaswag --limit 500
"""
from nano_core import eval as evaluation
from nano_mlx.backend import Backend


def main(argv=None):
    return evaluation.main(Backend, argv)


if __name__ == "__main__":
    main()
