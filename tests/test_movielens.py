"""MovieLens-100k, the built-in real domain: prepared from the recbole wheel's files, with posters when present."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import POSTERS

from mmsr_peft.cli import data_main
from mmsr_peft.data.movielens import item_text
from mmsr_peft.domains import load_domain
from mmsr_peft.errors import DataError


@pytest.fixture(scope="module")
def ml_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    argv = ["movielens", "--data_dir", str(root)] + (["--posters", str(POSTERS)] if POSTERS.is_dir() else [])
    assert data_main(argv) == 0
    return root


def test_ml100k_has_the_known_counts_text_and_order(ml_dir):
    domain = load_domain("ml-100k", source="movielens", data_dir=str(ml_dir))
    assert not domain.synthetic and domain.manifest["source"] == "movielens"
    assert len(domain.catalog) == 1682 and len(domain.sequences) == 943
    assert domain.sequences.stats == {
        "interactions": 100000,
        "users": 943,
        "users_kept": 943,
        "users_dropped_short": 0,
    }
    assert (
        domain.catalog.texts[domain.catalog.index["1"]] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    )
    # each user's items follow the timestamps; equal timestamps keep the file's row order
    table = pq.read_table(domain.folder / "interactions.parquet").to_pydict()
    rows = [
        (t, r, i)
        for r, (u, i, t) in enumerate(zip(table["user_id"], table["item_id"], table["timestamp"], strict=True))
        if u == "1"
    ]
    expected = [domain.catalog.index[i] for _, _, i in sorted(rows)]
    assert domain.sequences.items[domain.sequences.user_ids.index("1")].tolist() == expected


@pytest.mark.skipif(not POSTERS.is_dir(), reason=f"poster folder {POSTERS} not present (set MMSR_POSTERS)")
def test_posters_become_item_images(ml_dir):
    domain = load_domain("ml-100k", source="movielens", data_dir=str(ml_dir))
    with_image = [p for p in domain.catalog.images if p is not None]
    assert len(with_image) == len(list(POSTERS.glob("*.jpg"))) == domain.manifest["counts"]["items_with_image"]
    assert all(Path(p).is_relative_to(domain.folder.resolve()) for p in with_image)  # copied in, not pointed to


def test_item_text_and_registry_errors(ml_dir):
    assert item_text("Heat", "1995", "Action Crime Thriller") == "Heat (1995). Genres: Action, Crime, Thriller."
    assert item_text("Untitled", "", "") == "Untitled."
    with pytest.raises(DataError, match="its domains: ml-100k"):
        load_domain("office", source="movielens", data_dir=str(ml_dir))
    with pytest.raises(DataError, match="mmsr-data movielens"):
        load_domain("ml-100k", source="movielens", data_dir=str(ml_dir / "elsewhere"))
    assert data_main(["movielens", "--data_dir", str(ml_dir)]) == 2  # exists: refuses without --overwrite


def test_a_failed_prepare_leaves_no_folder_behind(tmp_path, capsys):
    assert data_main(["movielens", "--data_dir", str(tmp_path / "data"), "--posters", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "make_poster, message",
    [
        (lambda path, tmp: path.symlink_to("/etc/passwd"), "a link to /etc/passwd, outside the folder"),
        (lambda path, tmp: path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n"), "not a usable image (not_an_image"),
    ],
    ids=["link out of the folder", "not an image"],
)
def test_posters_are_validated_at_import_and_links_are_not_followed(make_poster, message, tmp_path, capsys):
    from PIL import Image

    posters = tmp_path / "posters"
    posters.mkdir()
    Image.new("RGB", (12, 18), "red").save(posters / "2.jpg")  # a real poster beside the bad one
    make_poster(posters / "1.jpg", tmp_path)
    assert data_main(["movielens", "--data_dir", str(tmp_path / "data"), "--posters", str(posters)]) == 2
    error = capsys.readouterr().err
    assert str(posters / "1.jpg") in error and message in error, error
    assert not (tmp_path / "data").exists()  # nothing written, not even the parent folders


@pytest.mark.slow
def test_the_readme_path_after_the_demo_adapts_a_base_to_movielens(ml_dir, base_dir, tmp_path, capsys):
    """README, "Next": `mmsr-data movielens ...` (the `ml_dir` fixture), then `mmsr-adapt --target ml-100k
    --data_source movielens --base <the demo's base>` (a tiny base here, one epoch), then the downstream example."""
    from mmsr_peft import MMSRModel
    from mmsr_peft.cli import adapt_main

    out = tmp_path / "adapter"
    argv = ["--target", "ml-100k", "--data_source", "movielens", "--base", str(base_dir), "--data_dir", str(ml_dir)]
    fast = [
        "--num_epochs",
        "1",
        "--batch_size",
        "256",
        "--components",
        "fusion",
    ]  # frozen encoders: their outputs cached
    assert adapt_main([*argv, *fast, "--output_dir", str(out)]) == 0
    assert "Target ml-100k (movielens), test split" in capsys.readouterr().out
    model = MMSRModel.from_pretrained(base_dir)
    model.load_adapter(out, adapter_name="ml-100k")
    catalog = load_domain("ml-100k", source="movielens", data_dir=str(ml_dir)).catalog
    top = model.recommend([["1", "50", "181"]], catalog, k=10)
    assert len(top.item_ids[0]) == 10 and not {"1", "50", "181"} & set(top.item_ids[0])
