"""nano's HellaSwag equals lm-evaluation-harness's on the same exported model: a short nanochat run is exported, then
lm-eval itself (its `hf` model, its hellaswag `process_docs`, its multiple-choice acc / acc_norm) scores the same
items that `python -m nano_torch.eval` scores. The items come from ../shared/data with ctx_a / ctx_b split out
(lm-eval's Rowan/hellaswag rows carry them); the dataset is read from a local JSON file, the hub is never asked."""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

ITEMS = 32


def run(args, env):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def local_items(shared_data, path, n: int) -> None:
    """The first n validation items, with ctx split into ctx_a / ctx_b at the last '. ' (a sentence end)."""
    rows = []
    with open(shared_data / "hellaswag" / "hellaswag_val.jsonl") as f:
        for line in f:
            item = json.loads(line)
            head, sep, tail = item["ctx"].rpartition(". ")
            ctx_a, ctx_b = (head + ".", tail) if sep else (item["ctx"], "")
            rows.append({**item, "ctx_a": ctx_a, "ctx_b": ctx_b, "label": str(item["label"])})
            if len(rows) == n:
                break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def lm_eval_task(task_dir, items) -> str:
    """lm-eval's own hellaswag task definition, pointed at a local JSON file (its utils.py copied beside it)."""
    from lm_eval.tasks.hellaswag import utils

    task_dir.mkdir()
    shutil.copy(utils.__file__, task_dir / "utils.py")
    (task_dir / "nano_hellaswag.yaml").write_text(f"""task: nano_hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {items}
output_type: multiple_choice
validation_split: validation
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    return "nano_hellaswag_local"


def test_nano_hellaswag_acc_and_acc_norm_equal_lm_evals_on_the_exported_model(shared_data, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    env = {**os.environ, "NANO_CACHE": str(tmp_path / "cache"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run(["nano_torch.train", "--preset", "nanochat-3x192", "--source", str(shared_data / "tinyshakespeare"),
         "--vocab-size", "512", "--batch-size", "8", "--max-steps", "30", "--eval-every", "0", "--eval-steps", "1",
         "--sample-every", "0", "--sample-tokens", "4", "--dtype", "fp32", "--lr", "3e-3",
         "--out", str(tmp_path / "run")], env)
    run(["nano_core.export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf")], env)
    items = tmp_path / "items.jsonl"
    local_items(shared_data, items, ITEMS)

    run(["nano_torch.eval", "--ckpt", str(tmp_path / "run"), "--tasks", "hellaswag", "--hellaswag", str(items),
         "--device", "cpu", "--dtype", "fp32"], env)
    ours = json.loads(next((tmp_path / "run").glob("eval-ckpt_*.json")).read_text())["tasks"]["hellaswag"]
    assert ours["items"] == ITEMS

    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    task = lm_eval_task(tmp_path / "tasks", items)
    out = simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},add_bos_token=True,dtype=float32",
                          tasks=[task], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                          batch_size=4, device="cpu", log_samples=True)
    theirs = out["results"][task]
    assert theirs["acc,none"] == ours["acc"] and theirs["acc_norm,none"] == ours["acc_norm"]
    # and item by item: the same summed log-likelihood of every ending (fp32 on both sides)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    lm_lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    assert len(lm_lls) == ITEMS
    worst = max(abs(a - b) for mine, its in zip(ours["logliks"], lm_lls) for a, b in zip(mine, its))
    assert worst < 1e-3, worst
