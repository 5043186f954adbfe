"""Train a nano GPT with MLX (Metal GPU or CPU): the shared loop (nano_core/loop.py) on nano_mlx's backend.

    python -m nano_mlx.train                        # whole pipeline: data, default preset, eval, sample, checkpoint
    python -m nano_mlx.train --preset tiny --source ../shared/data/fineweb_edu --source ../shared/data/gutenberg
    python -m nano_mlx.train --resume latest --out runs/mlx-tiny-...   # continue exactly where it stopped
"""
from nano_core import loop
from nano_mlx.backend import Backend


def main(argv=None):
    return loop.main(Backend, argv)


if __name__ == "__main__":
    main()
