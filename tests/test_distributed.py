"""Two-process DDP on CPU (gloo) with `accelerate launch`, exactly as the recipe's docstring says to run it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_pretrain_argv
from testing_utils import free_port

from mmsr_peft import MMSRModel

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain.py"


def test_two_process_ddp_pretraining_with_a_token_level_fusion_and_the_encoders_top_blocks_training(
    data_dir, tmp_path
):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "2", "--fusion", "merge_attention")
    # the top block of each encoder trains: the states entering it are encoded by both processes, a share each
    argv += ["--text_finetune", "top_k", "--vision_finetune", "top_k", "--output_dir", str(tmp_path / "ddp")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*launch, str(RECIPE), *argv], env=env, capture_output=True, text=True, timeout=600)
    # Multi-process CPU runs sometimes abort at interpreter exit after all work is done (see ENVIRONMENT.md):
    # judge by what the run wrote, and show its log when that is missing.
    metrics_path = tmp_path / "ddp" / "metrics.json"
    assert metrics_path.is_file(), run.stderr[-4000:]
    metrics = json.loads(metrics_path.read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    # each process saw half of the sequences: 50 users / (16 per batch x 2 processes) = 2 steps per epoch
    assert metrics["history"][-1]["step"] == 4
    assert MMSRModel.from_pretrained(tmp_path / "ddp").config.fusion.type == "merge_attention"
    assert "encode text up to block 1" in run.stderr and "encode image up to block 1" in run.stderr


SHARDED_EVALUATION = """
import json, shutil, sys
import torch
from accelerate import Accelerator
from mmsr_peft import MMSRModel, cache
from mmsr_peft.data import image_files
from mmsr_peft.domains import build_corpus, load_domain
from mmsr_peft.evaluation import evaluate_exclusions
from mmsr_peft.training import precompute_frozen_states

base, data_dir, out, cache_dir = sys.argv[1:5]
accelerator = Accelerator(cpu=True)
model = MMSRModel.from_pretrained(base).requires_grad_(False)
corpus = build_corpus([load_domain("food", data_dir=data_dir)], 12, cold_start_fraction=0.2, seed=0)
raw = model.processor(corpus.catalog.records(range(len(corpus.catalog))))
inputs = precompute_frozen_states(model, raw)  # one process's work, for comparison
# the texts tokenised in two shares, gathered on both processes: the very tensors of one process alone
tokenised = model.processor(corpus.catalog.records(range(len(corpus.catalog))), accelerator=accelerator)
fields = ("item_index", "input_ids", "attention_mask", "has_text", "pixel_values", "has_image")
same_inputs = all(torch.equal(getattr(tokenised, name), getattr(raw, name)) for name in fields)
# the images through the decoded-image cache, shared out: count the images each process decodes and the cache writes
decoded, image_writes = [], []
decode, save_images = image_files.load_image, image_files.atomic_save_tensors
image_files.load_image = lambda path, size: (decoded.append(path), decode(path, size))[1]
image_files.atomic_save_tensors = lambda path, tensors: (image_writes.append(path), save_images(path, tensors))[1]
records = corpus.catalog.records(range(len(corpus.catalog)))
cached = model.processor(records, image_cache_dir=f"{cache_dir}-images", accelerator=accelerator)
same_inputs &= all(torch.equal(getattr(cached, name), getattr(raw, name)) for name in ("pixel_values", "has_image"))
accelerator.wait_for_everyone()  # the main process has written the cache: a second pass decodes nothing
again = model.processor(records, image_cache_dir=f"{cache_dir}-images", accelerator=accelerator)
same_inputs &= torch.equal(again.pixel_values, raw.pixel_values)
images = {"decoded": len(decoded), "writes": len(image_writes), "with_image": int(raw.has_image.sum())}

# the frozen encoders' outputs, shared out: count the items each process encodes and the cache files it writes
encoded, writes, tower = [], [], model.item_tower
for name in ("encode_text", "encode_image"):
    def counting(items, run=getattr(tower, name)):
        encoded.append(len(items))
        return run(items)
    setattr(tower, name, counting)
save = cache.atomic_save_tensors
cache.atomic_save_tensors = lambda path, tensors: (writes.append(path), save(path, tensors))[1]
shared = precompute_frozen_states(model, raw, 5, cache_dir, accelerator)
same = all(
    torch.allclose(getattr(getattr(shared, kind), part).float(), getattr(getattr(inputs, kind), part).float(), atol=1e-6)
    for kind in ("text_states", "image_states") for part in ("pooled", "tokens", "mask")
)
# a cache folder per process, one holding every item and the other none (machines without a shared folder): a
# clear error on both, not processes sharing out different items and waiting on each other for ever
own_cache = f"{cache_dir}-rank{accelerator.process_index}"
if accelerator.is_main_process:
    shutil.copytree(cache_dir, own_cache)
accelerator.wait_for_everyone()
try:
    precompute_frozen_states(model, raw, 5, own_cache, accelerator)
    split = "no error"
except ValueError as err:
    split = str(err)
with open(f"{out}.rank{accelerator.process_index}", "w") as file:
    distinct = sum(len({bytes(d.tolist()) for d in cache.content_digests(raw, kind)}) for kind in ("text", "image"))
    file.write(json.dumps({
        "encoded": sum(encoded), "writes": len(writes), "same": same, "distinct": distinct,
        "same_inputs": same_inputs, "split": split, "images": images,
    }))
sharded = evaluate_exclusions(model, inputs, corpus.test, batch_size=7, progress=False, accelerator=accelerator)
alone = evaluate_exclusions(model, inputs, corpus.test, batch_size=7, progress=False)
if accelerator.is_main_process:
    open(out, "w").write(json.dumps({"sharded": sharded, "alone": alone, "processes": accelerator.num_processes}))
accelerator.wait_for_everyone()
"""


def test_two_processes_encode_and_evaluate_each_their_share_with_the_results_of_one(base_dir, data_dir, tmp_path):
    script = tmp_path / "evaluate.py"
    script.write_text(SHARDED_EVALUATION)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    out = tmp_path / "metrics.json"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [*launch, str(script), str(base_dir), str(data_dir), str(out), str(tmp_path / "cache")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert out.is_file(), run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2
    # frozen encoders: each process encoded half of the distinct texts and images, all got the whole, the main
    # process alone wrote the two cache files (text and image)
    ranks = [json.loads(Path(f"{out}.rank{i}").read_text()) for i in (0, 1)]
    assert all(rank["same"] and rank["same_inputs"] for rank in ranks) and [rank["writes"] for rank in ranks] == [2, 0]
    assert ranks[0]["encoded"] + ranks[1]["encoded"] == ranks[0]["distinct"]  # each distinct content once in all
    assert 0 < ranks[1]["encoded"] <= ranks[0]["encoded"] <= ranks[1]["encoded"] + 2  # halves: 2 kinds split in two
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    # images: each process decoded its half, all got them all, the main process alone wrote the image cache, and a
    # second pass read every image from it
    images = [rank["images"] for rank in ranks]
    assert images[0]["decoded"] + images[1]["decoded"] == images[0]["with_image"] > 0
    assert images[1]["decoded"] > 0 and [image["writes"] for image in images] == [1, 0]
    for rank in ranks:  # per-process cache folders that disagree: both processes stop with the reason
        assert "every machine of the run shares" in rank["split"], rank["split"]
    sharded, alone = result["sharded"], result["alone"]
    assert sharded.keys() == alone.keys() and "food cold, among cold items" in sharded["history"]
    assert any(" popularity " in key for key in sharded["history"])
    for exclude in alone:  # each process embedded half the catalog and ranked half the users: rounding at most
        for row, metrics in alone[exclude].items():
            assert sharded[exclude][row] == pytest.approx(metrics, abs=1e-9), (exclude, row)
