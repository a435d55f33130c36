"""Publishing to and loading from a Hub over real HTTP: the real huggingface_hub client against tests/hub_server.py."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import HUB, TINY_TRAIN_FLAGS

from mmsr_peft import MMSRModel, load_domain
from mmsr_peft.cli import adapt_main, publish_main
from mmsr_peft.errors import CheckpointError
from mmsr_peft.hub import card_edited, sign_card
from mmsr_peft.side import SIDE_CONFIG_FILE, SIDE_WEIGHTS_FILE, SideAdapterConfig

PLACEHOLDERS = ("More Information Needed", "{{", "}}", "TODO", "[TBD]")


@pytest.fixture(scope="module")
def published(base_dir, data_dir, tmp_path_factory):
    """A tiny base and two adapters (office, arts), published under org/…; returns local folders and repo ids."""
    folders = {"base": base_dir}
    for target in ("office", "arts"):
        out = tmp_path_factory.mktemp(target)
        argv = ["--target", target, "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(out)]
        argv += ["--lora_top_k", "1"] if target == "arts" else []  # LoRA in the encoders' top blocks only
        assert adapt_main([*argv, *TINY_TRAIN_FLAGS, "--num_epochs", "1"]) == 0
        folders[target] = out
    repos = {"base": "org/mmsr-base", "office": "org/mmsr-lora-office", "arts": "org/mmsr-lora-arts"}
    assert publish_main(["--folder", str(base_dir), "--repo_id", repos["base"]]) == 0
    for target in ("office", "arts"):
        argv = ["--folder", str(folders[target]), "--repo_id", repos[target], "--base_repo_id", repos["base"]]
        assert publish_main(argv) == 0
    return folders, repos


def _client_env(hf_home, offline=False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_OFFLINE")}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=HUB.url, HF_TOKEN=HUB.token, HF_HUB_DISABLE_XET="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def test_new_process_loads_base_and_adapters_by_repo_id_online_then_offline(published, data_dir, tmp_path):
    folders, repos = published
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    histories = [catalog.item_ids[:4], catalog.item_ids[20:22]]
    model = MMSRModel.from_pretrained(folders["base"])
    model.load_adapter(folders["office"], adapter_name="office")
    model.load_adapter(folders["arts"], adapter_name="arts")
    expected = {}
    for name in ("office", "arts"):
        model.set_adapter(name)
        expected[name] = model.recommend(histories, catalog, k=8).item_ids

    script = textwrap.dedent(f"""
        import json
        from peft import PeftModel
        from mmsr_peft import MMSRModel, load_domain
        model = MMSRModel.from_pretrained({repos["base"]!r}, revision="main")
        model.load_adapter({repos["office"]!r}, adapter_name="office")
        model.load_adapter({repos["arts"]!r}, adapter_name="arts")
        catalog = load_domain("office", data_dir={str(data_dir)!r}).catalog
        out = {{}}
        for name in ("office", "arts"):
            model.set_adapter(name)
            out[name] = model.recommend({histories!r}, catalog, k=8).item_ids
        plain = PeftModel.from_pretrained(MMSRModel.from_pretrained({repos["base"]!r}), {repos["office"]!r})
        out["plain_peft"] = plain.recommend({histories!r}, catalog, k=8).item_ids
        print(json.dumps(out))
    """)
    hf_home = tmp_path / "fresh-hf-home"
    for offline in (False, True):
        run = subprocess.run(
            [sys.executable, "-c", script], env=_client_env(hf_home, offline), capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-3000:]
        loaded = json.loads(run.stdout.strip().splitlines()[-1])
        assert loaded["office"] == expected["office"] and loaded["arts"] == expected["arts"], offline
        assert loaded["plain_peft"] == expected["office"]
    assert expected["office"] != expected["arts"]  # the adapters really differ


def test_an_adapter_not_in_the_cache_offline_is_reported_as_offline_not_as_unchecked(base_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    model = MMSRModel.from_pretrained(base_dir)
    for force in (False, True):  # force=True would skip the base check, and still fail
        with pytest.raises(CheckpointError) as info:
            model.load_adapter("org/never-downloaded", "office", force=force)
        message = str(info.value)
        assert "org/never-downloaded: not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
        assert "force=True" not in message and "mmsr_adapter.json" not in message
    assert model.list_adapters() == []


def test_published_cards_validate_and_hold_results_and_protocol(published):
    from huggingface_hub import ModelCard

    _, repos = published
    for kind, repo in repos.items():
        text = HUB.read_file(repo, "README.md").decode()
        card = ModelCard(text)
        assert card.data.library_name == ("mmsr_peft" if kind == "base" else "peft")
        assert card.data.eval_results and card.data.eval_results[0].metric_type == "hr@10"
        if kind != "base":
            assert card.data.base_model == repos["base"]
            assert f'load_adapter("{repo}"' in text and "| zero-shot base |" in text
            assert ("Adapted components: text (LoRA in its top block)," in text) == (kind == "arts")
        assert "full ranking" in text and "leave-one-out" in text and "NDCG@10" in text
        assert f'from_pretrained("{repos["base"]}")' in text
        assert not [p for p in PLACEHOLDERS if p in text], kind
    config = json.loads(HUB.read_file(repos["office"], "adapter_config.json"))
    assert config["base_model_name_or_path"] == repos["base"]
    files = HUB.list_files(repos["base"])
    assert "model.safetensors" in files and not [f for f in files if f.startswith("checkpoints")]


def test_hand_edited_card_survives_a_second_publish_unless_overwritten(published, tmp_path):
    folders, repos = published
    HUB.write_file(repos["base"], "README.md", b"# Our own card\n\nWritten on the website.\n")
    assert publish_main(["--folder", str(folders["base"]), "--repo_id", repos["base"]]) == 0
    assert HUB.read_file(repos["base"], "README.md") == b"# Our own card\n\nWritten on the website.\n"
    assert publish_main(["--folder", str(folders["base"]), "--repo_id", repos["base"], "--overwrite_card"]) == 0
    assert b"Our own card" not in HUB.read_file(repos["base"], "README.md")
    # a card of ours that nobody edited is refreshed without the flag: retrain (here: change the metrics), publish
    retrained = tmp_path / "retrained"
    shutil.copytree(folders["base"], retrained, ignore=shutil.ignore_patterns("checkpoints"))
    metrics = json.loads((retrained / "metrics.json").read_text())
    metrics["best_epoch"] = 97
    (retrained / "metrics.json").write_text(json.dumps(metrics))
    assert publish_main(["--folder", str(retrained), "--repo_id", repos["base"], "--commit_message", "again"]) == 0
    assert b"(epoch 97)" in HUB.read_file(repos["base"], "README.md")


def test_republishing_replaces_the_model_files_an_earlier_publish_left(published, tmp_path):
    folders, repos = published
    side = Path(shutil.copytree(folders["office"], tmp_path / "side", ignore=shutil.ignore_patterns("checkpoints")))
    model = MMSRModel.from_pretrained(folders["base"])
    model.add_adapter(SideAdapterConfig(), "office")
    model.save_adapter(side, "office")  # the run folder now holds a side adapter
    argv = ["--repo_id", "org/mmsr-office-v2", "--base_repo_id", repos["base"]]
    assert publish_main(["--folder", str(side), *argv]) == 0
    assert SIDE_WEIGHTS_FILE in HUB.list_files("org/mmsr-office-v2")
    HUB.write_file("org/mmsr-office-v2", "notes.md", b"Our notes\n")
    assert publish_main(["--folder", str(folders["office"]), *argv]) == 0  # a LoRA adapter now
    files = HUB.list_files("org/mmsr-office-v2")
    assert "adapter_model.safetensors" in files and "notes.md" in files  # a file that is no model's stays
    assert SIDE_CONFIG_FILE not in files and SIDE_WEIGHTS_FILE not in files  # else load_adapter reads the side one


def test_card_signature_detects_edits():
    card = sign_card("---\nlibrary_name: mmsr_peft\n---\n\n# A card\n")
    assert not card_edited(card) and not card_edited(sign_card(card))  # signing twice keeps one mark
    assert card_edited(card.replace("A card", "Our card")) and card_edited("# written by hand\n")


def test_published_run_args_keep_settings_but_not_local_paths(published):
    folders, repos = published
    local = json.loads((folders["office"] / "run_args.json").read_text())
    remote = json.loads(HUB.read_file(repos["office"], "run_args.json"))
    assert remote["learning_rate"] == local["learning_rate"] and remote["base"] == repos["base"]
    assert remote["data_dir"] == Path(local["data_dir"]).name and str(folders["office"]) not in json.dumps(remote)
    assert "/tmp" not in json.dumps(remote)


def test_model_arguments_that_are_local_paths_are_published_without_them(tmp_path):
    from mmsr_peft.hub import RUN_ARGS, _strip_local_paths

    (tmp_path / "run").mkdir()
    (tmp_path / "staging").mkdir()
    run_args = {"text_model": "/home/me/models/bert-small", "vision_model": "hf:/home/me/vit-tiny"}
    run_args.update(fusion_init_from="./bert-fusion", base="org/mmsr-base")
    (tmp_path / "run" / RUN_ARGS).write_text(json.dumps(run_args))
    (tmp_path / "staging" / RUN_ARGS).symlink_to(tmp_path / "run" / RUN_ARGS)
    _strip_local_paths(tmp_path / "staging", tmp_path / "run", None)
    published = json.loads((tmp_path / "staging" / RUN_ARGS).read_text())
    assert published["text_model"] == "bert-small" and published["vision_model"] == "hf:vit-tiny"
    assert published["fusion_init_from"] == "bert-fusion"
    # names of Hub models and presets stay whole
    run_args.update(text_model="sentence-transformers/all-MiniLM-L6-v2", vision_model="hf:google/vit-base-patch16-224")
    (tmp_path / "run" / RUN_ARGS).write_text(json.dumps({**run_args, "fusion_init_from": "minilm"}))
    _strip_local_paths(tmp_path / "staging", tmp_path / "run", None)
    published = json.loads((tmp_path / "staging" / RUN_ARGS).read_text())
    assert published["text_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert published["vision_model"] == "hf:google/vit-base-patch16-224" and published["fusion_init_from"] == "minilm"


def test_a_link_in_the_folder_is_refused(base_dir, tmp_path, capsys):
    folder = Path(shutil.copytree(base_dir, tmp_path / "base"))
    (folder / "notes.txt").symlink_to("/etc/passwd")
    assert publish_main(["--folder", str(folder), "--repo_id", "org/linked", "--dry_run"]) == 2
    assert f"{folder / 'notes.txt'}: a link" in capsys.readouterr().err


def test_publish_to_a_branch(published):
    folders, repos = published
    argv = ["--folder", str(folders["office"]), "--repo_id", repos["office"], "--base_repo_id", repos["base"]]
    assert publish_main([*argv, "--revision", "v2"]) == 0
    assert "adapter_model.safetensors" in HUB.list_files(repos["office"], revision="v2")


def test_dry_run_lists_files_and_sizes_without_network(base_dir):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    script = f"from mmsr_peft.cli import publish_main; raise SystemExit(publish_main(['--folder', {str(base_dir)!r}, '--repo_id', 'org/x', '--dry_run']))"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    size = (base_dir / "model.safetensors").stat().st_size
    assert f"model.safetensors  {size:,} bytes" in run.stdout and "checkpoints" not in run.stdout


@pytest.mark.parametrize(
    "option, value", [("--repo_id", "../evil"), ("--repo_id", "a/b/c"), ("--base_repo_id", "../../evil")]
)
def test_repo_ids_the_hub_would_refuse_are_refused_before_anything_is_written(option, value, base_dir, capsys):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in base_dir.iterdir())
    argv = {"--repo_id": "org/x", "--base_repo_id": "org/base", option: value}
    assert publish_main(["--folder", str(base_dir), "--dry_run", *[x for kv in argv.items() for x in kv]]) == 2
    assert f"{option} {value!r} is not a Hub repo id" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in base_dir.iterdir()) == before


def test_publishing_without_network_says_so_in_one_line(base_dir):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    script = f"from mmsr_peft.cli import publish_main; raise SystemExit(publish_main(['--folder', {str(base_dir)!r}, '--repo_id', 'org/x']))"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().startswith("error: org/x: cannot reach the Hub at http://127.0.0.1:9")
    assert "nothing was published" in run.stderr and "Traceback" not in run.stderr


def test_repo_with_only_pickle_weights_is_refused(base_dir, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("org/pickled", exist_ok=True)
    for name in ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        api.upload_file(path_or_fileobj=str(base_dir / name), path_in_repo=name, repo_id="org/pickled")
    state = MMSRModel.from_pretrained(base_dir).state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    api.upload_file(
        path_or_fileobj=str(tmp_path / "pytorch_model.bin"), path_in_repo="pytorch_model.bin", repo_id="org/pickled"
    )
    with pytest.raises(CheckpointError, match="only pickle weights"):
        MMSRModel.from_pretrained("org/pickled")
    assert MMSRModel.from_pretrained("org/pickled", allow_pickle=True).config.item_tower == "multimodal"


def test_unknown_repo_is_a_clear_error():
    with pytest.raises(CheckpointError, match="no such repo on the Hub"):
        MMSRModel.from_pretrained("org/does-not-exist")


def test_publishing_a_folder_without_safetensors_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    assert publish_main(["--folder", str(tmp_path), "--repo_id", "org/bad"]) != 0
    assert "only safetensors weights are published" in capsys.readouterr().err
