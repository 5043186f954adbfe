"""Sample text from a nano checkpoint with MLX: the shared sampler (nano_core/generate.py) on nano_mlx's backend.

    python -m nano_mlx.generate --ckpt runs/mlx-tiny-.../ckpt_0000300 --prompt "The" --max-new-tokens 100
"""
from nano_core import generate
from nano_mlx.backend import Backend


def main(argv=None):
    return generate.main(Backend, argv)


if __name__ == "__main__":
    main()
