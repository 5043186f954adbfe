"""Train a nano GPT with PyTorch (CUDA, MPS or CPU): the shared loop (nano_core/loop.py) on nano_torch's backend.

    python -m nano_torch.train                      # whole pipeline: data, default preset, eval, sample, checkpoint
    python -m nano_torch.train --preset tiny --source ../shared/data/fineweb_edu --source ../shared/data/gutenberg
    python -m nano_torch.train --resume latest --out runs/torch-tiny-...   # continue exactly where it stopped
"""
from nano_core import loop
from nano_torch.backend import Backend


def main(argv=None):
    return loop.main(Backend, argv)


if __name__ == "__main__":
    main()
