"""Sample text from a nano checkpoint with PyTorch: the shared sampler (nano_core/generate.py) on nano_torch's backend.

    python -m nano_torch.generate --ckpt runs/torch-tiny-.../ckpt_0000300 --prompt "The" --max-new-tokens 100
"""
from nano_core import generate
from nano_torch.backend import Backend


def main(argv=None):
    return generate.main(Backend, argv)


if __name__ == "__main__":
    main()
