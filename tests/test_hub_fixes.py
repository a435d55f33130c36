"""mmsr-publish and the model cards, on the cases a review found wrong: the real huggingface_hub client against
tests/hub_server.py (failures are made by the server, never by patching the client)."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import HUB, TINY_TRAIN_FLAGS
from hub_server import HubError, HubRequestHandler

from mmsr_peft import MMSRModel
from mmsr_peft.cards import adapter_card, base_card
from mmsr_peft.cli import adapt_main, publish_main
from mmsr_peft.hub import card_edited

PLACEHOLDERS = ("More Information Needed", "{{", "}}", "TODO", "[TBD]")


@pytest.fixture(scope="module")
def lora_dir(base_dir, data_dir, tmp_path_factory):
    """A LoRA adapter for office with per-component ranks and alphas, trained on half the users, ended by
    --max_steps (25 users: 2 steps an epoch)."""
    out = tmp_path_factory.mktemp("lora-fixes")
    argv = ["--target", "office", "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(out)]
    argv += ["--rank_pattern", "text=16", "--alpha_pattern", "fusion=32", "--train_user_fraction", "0.5"]
    assert adapt_main([*argv, *TINY_TRAIN_FLAGS, "--num_epochs", "3", "--max_steps", "3"]) == 0
    return out


def _card_inputs(folder: Path, to: Path, **run_args) -> Path:
    """The JSON files of `folder` (what a card reads) copied to `to`, with `run_args` changed."""
    to.mkdir()
    for path in folder.glob("*.json"):
        shutil.copy(path, to / path.name)
    args = json.loads((to / "run_args.json").read_text())
    (to / "run_args.json").write_text(json.dumps({**args, **run_args}))
    return to


def _edit_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _repo(repo_id: str, repo_type: str = "model"):
    return HUB.storage.repos.get((repo_type, repo_id))


# 1. --private and a repo that exists


def test_private_into_an_existing_public_repo_is_refused_before_any_upload(base_dir, capsys):
    HUB.create_repo("org/fix-public")
    assert publish_main(["--folder", str(base_dir), "--repo_id", "org/fix-public", "--private"]) == 2
    assert "org/fix-public: the model repo already exists and is public" in capsys.readouterr().err
    assert not _repo("org/fix-public").private and "model.safetensors" not in HUB.list_files("org/fix-public")
    assert publish_main(["--folder", str(base_dir), "--repo_id", "org/fix-private", "--private"]) == 0
    assert _repo("org/fix-private").private  # a new repo is created private


def test_private_with_a_public_space_is_refused_before_the_model_goes_up(base_dir, data_dir, capsys):
    HUB.create_repo("org/fix-public-demo", repo_type="space")
    argv = ["--folder", str(base_dir), "--repo_id", "org/fix-private-2", "--private", "--space", "org/fix-public-demo"]
    assert publish_main([*argv, "--domain", "office", "--data_dir", str(data_dir)]) == 2
    assert "org/fix-public-demo: the space repo already exists and is public" in capsys.readouterr().err
    assert _repo("org/fix-private-2") is None and not _repo("org/fix-public-demo", "space").private


# 2. a hand-edited card the Hub does not answer for


def test_a_card_that_cannot_be_read_is_not_overwritten_even_if_cached(base_dir, monkeypatch, capsys):
    argv = ["--folder", str(base_dir), "--repo_id", "org/fix-card"]
    assert publish_main(argv) == 0 and publish_main(argv) == 0  # the second one read (and cached) our card
    HUB.write_file("org/fix-card", "README.md", b"# Our own card\n")
    head = HUB.head("org/fix-card")
    original = HubRequestHandler.handle_resolve

    def unavailable(self, repo, rev, path, prefix=""):
        if path == "README.md":
            raise HubError(501, "Not Implemented")  # a 5xx the client does not retry
        return original(self, repo, rev, path, prefix)

    monkeypatch.setattr(HubRequestHandler, "handle_resolve", unavailable)
    assert publish_main(argv) == 2
    err = capsys.readouterr().err
    assert "org/fix-card: cannot read its README.md on the Hub" in err and "nothing was uploaded" in err
    assert HUB.read_file("org/fix-card", "README.md") == b"# Our own card\n" and HUB.head("org/fix-card") == head
    assert publish_main([*argv, "--overwrite_card"]) == 0  # the card is not read then: replaced, as asked
    assert not card_edited(HUB.read_file("org/fix-card", "README.md").decode())


# 3. a folder without metrics.json / run_args.json


def test_a_merged_checkpoint_is_published_with_a_short_truthful_card(base_dir, lora_dir, tmp_path):
    model = MMSRModel.from_pretrained(base_dir)
    model.load_adapter(lora_dir, adapter_name="office")
    model.save_merged(tmp_path / "merged", "office")
    argv = ["--folder", str(tmp_path / "merged"), "--repo_id", "org/fix-merged"]
    assert publish_main([*argv, "--dry_run"]) == 0 and publish_main(argv) == 0
    card = HUB.read_file("org/fix-merged", "README.md").decode()
    assert "without a training record" in card and "| text encoder | `tiny-bert` |" in card
    assert "## Evaluation" not in card and "synthetic world" not in card
    assert not [p for p in PLACEHOLDERS if p in card]


def test_an_adapter_without_metrics_fails_in_the_dry_run_and_creates_no_repo(lora_dir, tmp_path, capsys):
    folder = Path(shutil.copytree(lora_dir, tmp_path / "lora", ignore=shutil.ignore_patterns("checkpoints")))
    (folder / "metrics.json").unlink()
    argv = ["--folder", str(folder), "--repo_id", "org/fix-nometrics", "--base_repo_id", "org/fix-base"]
    for extra in (["--dry_run"], []):
        assert publish_main([*argv, *extra]) == 2
        assert f"{folder / 'metrics.json'}: needed to write the model card" in capsys.readouterr().err
    assert _repo("org/fix-nometrics") is None


# 4. the Space fails after the model's commit


def test_a_failed_space_says_the_model_was_published(base_dir, data_dir, monkeypatch, capsys):
    original = HubRequestHandler.handle_preupload

    def space_down(self, kind, repo, rev):
        if kind == "spaces":
            raise HubError(403, "Spaces are disabled")
        return original(self, kind, repo, rev)

    monkeypatch.setattr(HubRequestHandler, "handle_preupload", space_down)
    argv = ["--folder", str(base_dir), "--repo_id", "org/fix-base-n", "--space", "org/fix-demo-n"]
    assert publish_main([*argv, "--domain", "office", "--data_dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    commit = f"{HUB.url}/org/fix-base-n/commit/{HUB.head('org/fix-base-n')}"
    assert "org/fix-demo-n: the Space was not pushed" in err and f"published to org/fix-base-n: {commit}" in err
    assert "nothing was published" not in err and "model.safetensors" in HUB.list_files("org/fix-base-n")


# 5. a Space pushed again with another domain


def test_a_space_pushed_again_holds_only_the_new_catalog(base_dir, data_dir):
    argv = ["--folder", str(base_dir), "--repo_id", "org/fix-base-s", "--space", "org/fix-demo-s"]
    assert publish_main([*argv, "--domain", "office", "--data_dir", str(data_dir)]) == 0
    assert any("office-" in f for f in HUB.list_files("org/fix-demo-s", repo_type="space"))
    assert publish_main([*argv, "--domain", "arts", "--data_dir", str(data_dir)]) == 0
    files = HUB.list_files("org/fix-demo-s", repo_type="space")
    assert not [f for f in files if "office" in f] and any("arts-" in f for f in files)
    assert {"app.py", "space.json", "requirements.txt", "README.md", "catalog/items.parquet"} <= set(files)


# 6, 8. an adapter trained on a revision of a Hub base


def test_an_adapter_of_a_hub_base_keeps_its_repo_id_and_revision(lora_dir, tmp_path):
    folder = Path(shutil.copytree(lora_dir, tmp_path / "lora", ignore=shutil.ignore_patterns("checkpoints")))
    _edit_json(folder / "adapter_config.json", base_model_name_or_path="org/fix-hub-base")
    _edit_json(folder / "mmsr_adapter.json", base_model="org/fix-hub-base")
    _edit_json(folder / "run_args.json", base="org/fix-hub-base", revision="v1")
    assert publish_main(["--folder", str(folder), "--repo_id", "org/fix-lora-rev"]) == 0
    run_args = json.loads(HUB.read_file("org/fix-lora-rev", "run_args.json"))
    assert run_args["base"] == "org/fix-hub-base" and run_args["revision"] == "v1"
    config = json.loads(HUB.read_file("org/fix-lora-rev", "adapter_config.json"))
    assert config["base_model_name_or_path"] == "org/fix-hub-base" and config["revision"] == "v1"
    card = HUB.read_file("org/fix-lora-rev", "README.md").decode()
    assert 'MMSRModel.from_pretrained("org/fix-hub-base", revision="v1")' in card and "revision `v1`" in card
    assert "base_model: org/fix-hub-base" in card


# 7. local paths of the encoders


def test_local_encoder_paths_are_not_published(base_dir, tmp_path):
    folder = Path(shutil.copytree(base_dir, tmp_path / "base", ignore=shutil.ignore_patterns("checkpoints")))
    config = json.loads((folder / "config.json").read_text())
    config["text"]["source"] = str(tmp_path / "encoders" / "my-bert")
    config["vision"]["source"] = f"hf:{tmp_path / 'encoders' / 'my-vit'}"
    (folder / "config.json").write_text(json.dumps(config))
    assert publish_main(["--folder", str(folder), "--repo_id", "org/fix-local-encoders"]) == 0
    published = json.loads(HUB.read_file("org/fix-local-encoders", "config.json"))
    assert published["text"]["source"] == "my-bert" and published["vision"]["source"] == "hf:my-vit"
    card = HUB.read_file("org/fix-local-encoders", "README.md").decode()
    assert "| text encoder | `my-bert` |" in card and "| vision encoder | `hf:my-vit` |" in card
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(published)
    assert published["text"]["backbone"] == config["text"]["backbone"]  # the rest stays as it is


# 9-13. what the cards state


def test_the_lora_card_names_each_components_rank_and_alpha(lora_dir):
    card = adapter_card(lora_dir, "org/lora", "org/base")
    components = json.loads((lora_dir / "mmsr_adapter.json").read_text())["lora"]["components"]
    assert {c: (s["r"], s["lora_alpha"]) for c, s in components.items()} == {
        "text": (16, 16),
        "vision": (8, 16),
        "fusion": (8, 32),
    }
    assert (
        "Adapted components: text (rank 16, alpha 16), vision (rank 8, alpha 16), fusion (rank 8, alpha 32);" in card
    )


def test_the_quick_start_loads_the_domain_from_the_runs_source(lora_dir, tmp_path):
    assert 'catalog = load_domain("office").catalog  # first: mmsr-data synthetic' in adapter_card(
        lora_dir, "o/l", "o/b"
    )
    folder = _card_inputs(lora_dir, tmp_path / "ml", data_source="movielens")
    card = adapter_card(folder, "org/lora", "org/base")
    assert 'catalog = load_domain("office", source="movielens").catalog  # first: mmsr-data movielens' in card


def test_the_data_table_states_the_users_trained_on(lora_dir):
    stats = json.loads((lora_dir / "metrics.json").read_text())["data"]["office"]
    assert stats["train_users"] < stats["users_kept"]  # --train_user_fraction 0.5
    card = adapter_card(lora_dir, "org/lora", "org/base")
    assert f"| {stats['train_users']} ({stats['train_sequences']} sequences) |" in card
    assert "`--train_user_fraction 0.5`" in card and "cold-start items (held out of training)" in card


def test_the_card_names_the_runs_optimizer(base_dir, tmp_path):
    assert "AdamW lr" in base_card(base_dir, "org/base")
    card = base_card(_card_inputs(base_dir, tmp_path / "base", optim="adamw8bit"), "org/base")
    assert "8-bit AdamW (bitsandbytes) lr" in card and ", AdamW lr" not in card


def test_a_run_ended_by_max_steps_says_so(base_dir, lora_dir, tmp_path):
    assert json.loads((lora_dir / "metrics.json").read_text())["stopped_by"] == "max_steps"
    card = adapter_card(lora_dir, "org/lora", "org/base")
    assert "Training: 3 steps (`--max_steps`)," in card and "epochs at most" not in card
    folder = _card_inputs(base_dir, tmp_path / "base", max_steps=2)
    _edit_json(folder / "metrics.json", stopped_by="max_steps")
    card = base_card(folder, "org/base")
    assert "Training: 2 steps (`--max_steps`)," in card and "epochs at most" not in card
