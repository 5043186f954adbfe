"""nano's HellaSwag figures equal lm-evaluation-harness's on the same exported model. lm-eval itself is not
installed here, so the reference is a plain transformers loop doing what lm-eval 0.4's HFLM does for
`--tasks hellaswag --model_args pretrained=DIR,add_bos_token=True`: context = the process_docs query, continuation
= " " + choice, encoded whole and split after the context's tokens (HFLM._encode_pair), BOS first; acc = argmax of
the summed log-likelihoods, acc_norm = argmax of that over len(choice) in characters."""
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nano_core import eval_tasks  # noqa: E402
from nano_core.config import ModelConfig  # noqa: E402
from nano_core.export import export_model  # noqa: E402
from nano_core.init import init_weights  # noqa: E402
from nano_torch.backend import Backend  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402

ITEMS = 36  # enough that acc_norm differs from acc and from the per-byte figure on this model


def lm_eval_loop(path, items):
    """(logliks, acc, acc_norm) the way lm-eval scores `items` on the HF model in `path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    lls, acc, acc_norm = [], [], []
    for item in items:
        context, choices = eval_tasks.lm_eval_request(item)
        row = []
        for choice in choices:
            whole = tok.encode(context + " " + choice)
            n_ctx = len(tok.encode(context))
            ids = [tok.bos_token_id] + whole
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
            row.append(sum(logp[i, ids[i + 1]].item() for i in range(n_ctx, len(ids) - 1)))
        lls.append(row)
        acc.append(int(np.argmax(row)) == item["label"])
        acc_norm.append(int(np.argmax(np.array(row) / [len(c) for c in choices])) == item["label"])
    return np.array(lls), float(np.mean(acc)), float(np.mean(acc_norm))


def test_nanos_hellaswag_equals_lm_evals_formula_on_the_exported_model(shared_data, tmp_path):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    tok = BPETokenizer.train([text], vocab_size=400, progress=False, num_workers=1)
    cfg = ModelConfig.from_preset("nanochat-3x192", vocab_size=400, n_layer=2, n_embd=96, n_head=2, seq_len=256)
    w = {k: (a * 3).astype(np.float32) for k, a in init_weights(cfg, 0).items()}
    export_model(cfg, w, tok, tmp_path / "hf")
    path = shared_data / "hellaswag" / "hellaswag_val.jsonl"
    items = eval_tasks.read_hellaswag(path, limit=ITEMS)
    be = Backend(device="cpu", dtype="fp32")
    scorer = eval_tasks.Scorer(be, be.build_model(cfg, w), tok, batch_size=8, progress=False)
    with be.inference(scorer.model):
        ours = eval_tasks.task_hellaswag(scorer, path, ITEMS)
    lls, acc, acc_norm = lm_eval_loop(tmp_path / "hf", items)
    np.testing.assert_allclose(ours["logliks"], lls, rtol=0, atol=1e-3)
    assert (ours["acc"], ours["acc_norm"]) == (acc, acc_norm)
    assert ours["acc_norm"] not in (ours["acc"], ours["acc_per_byte"])  # the check tells the definitions apart
    assert ours["truncated_items"] == 0
