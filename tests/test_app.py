"""`mmsr-app`: the page's endpoints, served on a local port and called through `gradio_client`, give the same top-k
as `MMSRModel.recommend`, for the base and for an adapter, and bad requests are refused with a clear message."""

import json
from pathlib import Path

import gradio_client
import pytest
import torch
from conftest import TINY_TRAIN_FLAGS
from peft import LoraConfig
from testing_utils import free_port

from mmsr_peft import MMSRModel, load_domain
from mmsr_peft.app import BASE, Recommender, serve
from mmsr_peft.arguments import AppArguments, PublishArguments, parse_args
from mmsr_peft.lora import lora_target_modules


@pytest.fixture(scope="module")
def adapter_dir(base_dir, tmp_path_factory):
    """A LoRA adapter `office` on the tiny base, with non-zero weights so that it ranks differently from the base."""
    model = MMSRModel.from_pretrained(base_dir)
    model.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(model), init_lora_weights=False), "office")
    folder = tmp_path_factory.mktemp("adapters") / "office"
    model.save_adapter(folder, "office")
    return folder


@pytest.fixture(scope="module")
def app(base_dir, adapter_dir, data_dir):
    port = free_port()
    argv = ["--model", str(base_dir), "--domain", "office", "--data_dir", str(data_dir), "--port", str(port)]
    (args,) = parse_args((AppArguments,), [*argv, "--adapters", str(adapter_dir), "--k", "5"])
    running = serve(args, block=False)
    yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    running.close()


def expected(model, catalog, history, k):
    top = model.recommend([history], catalog, k=k)
    return top.item_ids[0], top.scores[0, : len(top.item_ids[0])].tolist()


def test_the_recommend_endpoint_answers_like_recommend_for_the_base_and_the_adapter(
    app, base_dir, adapter_dir, data_dir
):
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    history = catalog.item_ids[3:7]
    model = MMSRModel.from_pretrained(base_dir)
    base_ids, base_scores = expected(model, catalog, history, 5)
    model.load_adapter(adapter_dir)
    adapted_ids, adapted_scores = expected(model, catalog, history, 5)
    assert adapted_ids != base_ids  # the adapter changes the ranking: the test can tell which model answered

    for adapter, ids, scores in [(BASE, base_ids, base_scores), ("office", adapted_ids, adapted_scores)]:
        answer = app.predict(history, adapter, 5, api_name="/recommend")
        assert [row["item_id"] for row in answer] == ids
        assert [row["score"] for row in answer] == pytest.approx(scores, abs=1e-5)
        assert not {row["item_id"] for row in answer} & set(history)
    assert answer[0]["title"] == catalog.texts[catalog.index[adapted_ids[0]]].split(". ")[0][:80]


def test_the_page_shows_the_history_the_top_k_and_the_base_beside_an_adapter(app, data_dir):
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    history = catalog.item_ids[:2]
    history_shelf, top_shelf, base_shelf = app.predict(history, "office", 4, True, api_name="/shelves")
    top = app.predict(history, "office", 4, api_name="/recommend")
    assert len(history_shelf) == 2 and len(top_shelf["value"]) == 4
    assert top_shelf["label"] == "Top 4: office" and base_shelf["visible"] is True and len(base_shelf["value"]) == 4
    for shown, row in zip(top_shelf["value"], top, strict=True):
        assert shown["caption"] == f"{row['title']} · {row['score']:.3f}"
        image = catalog.images[catalog.index[row["item_id"]]]  # copied into Gradio's cache, served from there
        if image:
            assert Path(shown["image"]).read_bytes() == Path(image).read_bytes()
        else:
            assert Path(shown["image"]).name.startswith("mmsr-app-")  # the blank tile
    _, _, base_shelf = app.predict(history, BASE, 4, True, api_name="/shelves")
    assert base_shelf["visible"] is False  # nothing to compare the base with


@pytest.mark.parametrize(
    "history, adapter, k, message",
    [
        (["no-such-item"], BASE, 5, "item ids not in catalog 'office': ['no-such-item']"),
        ([], "arts", 5, "unknown adapter 'arts'; loaded: ['base', 'office']"),
        ([], BASE, 0, "k must be an integer in [1, 50], got 0"),
    ],
)
def test_a_bad_request_is_refused_naming_the_value(base_dir, data_dir, history, adapter, k, message):
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    model = MMSRModel.from_pretrained(base_dir)
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model, ["fusion"])), "office")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Recommender(model, catalog, ["office"]).recommend(history, adapter, k)


def test_an_adapter_named_like_the_base_and_an_unknown_start_history_are_errors(base_dir, data_dir):
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    with pytest.raises(ValueError, match="an adapter may not be named 'base'"):
        Recommender(MMSRModel.from_pretrained(base_dir), catalog, [BASE])
    argv = ["--model", str(base_dir), "--domain", "office", "--data_dir", str(data_dir), "--history", "nope"]
    (args,) = parse_args((AppArguments,), argv)
    with pytest.raises(ValueError, match=r"--history: item ids not in catalog 'office': \['nope'\]"):
        serve(args, block=False)
    with pytest.raises(ValueError, match=r"--k must be in \[1, 50\], got 80"):
        parse_args((AppArguments,), [*argv[:6], "--k", "80"])


def test_cached_catalog_embeddings_follow_the_adapter(base_dir, adapter_dir, data_dir):
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    model = MMSRModel.from_pretrained(base_dir)
    model.load_adapter(adapter_dir)
    recommender = Recommender(model, catalog, ["office"])
    first = recommender.recommend(catalog.item_ids[:3], BASE, 5)
    recommender.recommend(catalog.item_ids[:3], "office", 5)
    assert recommender.recommend(catalog.item_ids[:3], BASE, 5) == first  # same code path twice: exact
    assert torch.equal(recommender._embeddings[BASE], recommender._embeddings[BASE])
    assert not torch.allclose(recommender._embeddings[BASE], recommender._embeddings["office"])


def test_publish_space_pushes_a_page_that_serves_the_published_adapter(base_dir, data_dir, tmp_path):
    from huggingface_hub import snapshot_download

    from mmsr_peft.app import serve_space
    from mmsr_peft.cli import adapt_main, publish_main

    run = tmp_path / "office"  # an adapter as mmsr-adapt writes it (the card needs its metrics)
    argv = ["--target", "office", "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(run)]
    assert adapt_main([*argv, *TINY_TRAIN_FLAGS, "--num_epochs", "1"]) == 0
    assert publish_main(["--folder", str(base_dir), "--repo_id", "org/app-base"]) == 0
    argv = ["--folder", str(run), "--repo_id", "org/app-office", "--base_repo_id", "org/app-base"]
    space_argv = ["--space", "org/app-demo", "--domain", "office", "--data_dir", str(data_dir)]
    assert publish_main([*argv, *space_argv]) == 0
    space = Path(snapshot_download("org/app-demo", repo_type="space", local_dir=tmp_path / "space"))
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    config = {"model": "org/app-base", "adapters": ["org/app-office"], "k": 10}
    assert json.loads((space / "space.json").read_text()) == config
    readme = (space / "README.md").read_text()
    assert "\nsdk: gradio\n" in readme and "\n- org/app-base\n- org/app-office\n" in readme
    assert (space / "requirements.txt").read_text().startswith("mmsr-peft[app]==")
    assert len(list((space / "catalog/images").iterdir())) == sum(image is not None for image in catalog.images)

    port = free_port()
    running = serve_space(space / "app.py", block=False, port=port)  # what the Space runs, model from the Hub
    try:
        answer = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            catalog.item_ids[:3], "app-office", 5, api_name="/recommend"
        )
    finally:
        running.close()
    model = MMSRModel.from_pretrained(base_dir)
    model.load_adapter(run)
    ids, scores = expected(model, catalog, catalog.item_ids[:3], 5)
    assert [row["item_id"] for row in answer] == ids
    assert [row["score"] for row in answer] == pytest.approx(scores, abs=1e-5)


def test_space_needs_a_domain_and_the_main_branch(base_dir):
    argv = ["--folder", str(base_dir), "--repo_id", "org/x", "--space", "org/x-demo"]
    with pytest.raises(ValueError, match="--space needs --domain"):
        parse_args((PublishArguments,), argv)
    with pytest.raises(ValueError, match="--space loads the model from main; it cannot show --revision 'dev'"):
        parse_args((PublishArguments,), [*argv, "--domain", "office", "--revision", "dev"])
