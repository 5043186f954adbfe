"""Evaluate a nano checkpoint with PyTorch: the shared tasks (nano_core/eval.py, eval_tasks.py) on nano_torch's backend.

    python -m nano_torch.eval --ckpt runs/torch-tiny-... --tasks bpb,wikitext2,hellaswag --limit 500
"""
from nano_core import eval as evaluation
from nano_torch.backend import Backend


def main(argv=None):
    return evaluation.main(Backend, argv)


if __name__ == "__main__":
    main()
