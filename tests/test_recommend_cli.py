"""`mmsr-recommend`: a file of histories in, the same top-k as `MMSRModel.recommend` out."""

import json

import numpy as np
import pytest

from mmsr_peft import MMSRModel, load_domain
from mmsr_peft.cli import recommend_main
from mmsr_peft.evaluation import EvalSet, evaluate


def run(base_dir, data_dir, source, output, *extra):
    argv = ["--model", str(base_dir), "--domain", "office", "--data_dir", str(data_dir), "--k", "5"]
    return recommend_main([*argv, "--input", str(source), "--output", str(output), *extra])


def test_jsonl_and_csv_give_the_top_k_of_recommend_for_every_user(base_dir, data_dir, tmp_path):
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    histories = {"a": catalog.item_ids[:3], "b": catalog.item_ids[10:12], "c": []}
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"user_id": u, "history": h}) + "\n" for u, h in histories.items()))
    assert run(base_dir, data_dir, source, tmp_path / "out.jsonl") == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = MMSRModel.from_pretrained(base_dir).recommend(list(histories.values()), catalog, k=5)
    assert [line["user_id"] for line in lines] == ["a", "b", "c"]
    # exact: recommend's code path on the same batch of 3 users (the same shapes, so the same kernels)
    assert [line["items"] for line in lines] == expected.item_ids
    assert all(not set(line["items"]) & set(histories[line["user_id"]]) for line in lines)  # no own items
    assert run(base_dir, data_dir, source, tmp_path / "small.jsonl", "--batch_size", "2") == 0
    small = [json.loads(line) for line in (tmp_path / "small.jsonl").read_text().splitlines()]
    for line, other in zip(lines, small, strict=True):  # other batch shapes: equal up to float rounding
        assert other["scores"] == pytest.approx(line["scores"], abs=1e-5)

    rows = ["user_id,item_id"] + [f"{u},{i}" for u, h in histories.items() for i in h]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    assert run(base_dir, data_dir, tmp_path / "in.csv", tmp_path / "csv.jsonl") == 0
    from_csv = [json.loads(line) for line in (tmp_path / "csv.jsonl").read_text().splitlines()]
    assert [line["items"] for line in from_csv] == expected.item_ids[:2]  # a CSV has no row for an empty history


def test_unknown_items_fail_naming_the_line_unless_skipped(base_dir, data_dir, tmp_path, capsys):
    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"user_id": "a", "history": catalog.item_ids[:2]})
        + "\n"
        + json.dumps({"user_id": "b", "history": [catalog.item_ids[3], "no-such-item"]})
        + "\n"
    )
    output = tmp_path / "out.jsonl"
    assert run(base_dir, data_dir, source, output) == 2
    error = capsys.readouterr().err
    assert f"{source}: line 2: item ids not in the catalog of office: ['no-such-item']" in error
    assert not output.exists()  # nothing written
    assert run(base_dir, data_dir, source, output, "--skip_unknown") == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert "unknown" not in lines[0] and lines[1]["unknown"] == ["no-such-item"] and len(lines[1]["items"]) == 5


@pytest.mark.parametrize(
    "content, message",
    [("{not json\n", "line 1: not valid JSON"), ('{"user_id": "a", "history": "x"}\n', "line 1: expected")],
)
def test_malformed_input_is_refused_by_line(base_dir, data_dir, tmp_path, capsys, content, message):
    (tmp_path / "in.jsonl").write_text(content)
    assert run(base_dir, data_dir, tmp_path / "in.jsonl", tmp_path / "out.jsonl") == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"user_id": "a", "history": []}', '{"user_id": "b", "history": []}', '{"user_id": "a", "history": []}'],
         "lines 1 and 3: the same user_id 'a'"),
        (['{"history": []}', '{"user_id": "1", "history": []}'], "lines 1 and 2: the same user_id '1'"),  # line 1 is "1"
    ],
)  # fmt: skip
def test_a_repeated_user_id_is_refused_naming_both_lines(base_dir, data_dir, tmp_path, capsys, lines, message):
    """One output line per input line: a second history of a user would silently replace the first."""
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert run(base_dir, data_dir, tmp_path / "in.jsonl", tmp_path / "out.jsonl") == 2
    assert f"{tmp_path / 'in.jsonl'}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_recommend_on_a_model_cast_to_bfloat16(base_dir, data_dir):
    import torch

    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    histories = [catalog.item_ids[:3], catalog.item_ids[10:12]]
    model = MMSRModel.from_pretrained(base_dir).to(torch.bfloat16)
    top = model.recommend(histories, catalog, k=5)
    assert top.scores.shape == (2, 5) and torch.isfinite(top.scores).all()  # float32 catalog, bfloat16 encoder
    rows = [[catalog.index[item] for item in history] for history in histories]
    cases = EvalSet(
        "office", [np.array(row[:-1]) for row in rows], np.array([row[-1] for row in rows]), (0, len(catalog))
    )
    metrics = evaluate(model, model.processor(catalog.records(range(len(catalog)))), [cases], progress=False)
    assert 0 <= metrics["all"]["ndcg@10"] <= 1


def test_recommend_checks_given_catalog_embeddings_and_keeps_the_training_mode(base_dir, data_dir):
    import torch

    catalog = load_domain("office", data_dir=str(data_dir)).catalog
    model = MMSRModel.from_pretrained(base_dir)
    embeddings = model.embed_catalog(model.processor(catalog.records(range(len(catalog)))))
    model.train()
    with pytest.raises(ValueError, match=rf"catalog_embeddings: shape \(5, {embeddings.shape[1]}\), expected "):
        model.recommend([catalog.item_ids[:3]], catalog, catalog_embeddings=embeddings[:5])
    histories = [catalog.item_ids[:3]]
    expected = model.recommend(histories, catalog, k=5)
    assert model.training
    assert model.recommend(histories, catalog, k=5, catalog_embeddings=embeddings).item_ids == expected.item_ids
    with pytest.raises((RuntimeError, NotImplementedError)):  # fails inside: back in training mode all the same
        model.recommend(histories, catalog, k=5, catalog_embeddings=torch.empty(embeddings.shape, device="meta"))
    assert model.training
