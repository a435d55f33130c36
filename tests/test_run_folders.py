"""Run folders hold one run: refused when they hold another, emptied on --overwrite_output_dir, locked while written;
what a command writes there beside the weights."""

import json

import pytest

from mmsr_peft.arguments import BaselineArguments
from mmsr_peft.errors import RunFolderBusy
from mmsr_peft.run_folders import LOCK_FILE, RunFolderLock, check_output_dir, claim_output_dir
from mmsr_peft.run_outputs import write_run_outputs


def previous_run(folder):
    (folder / "checkpoints" / "checkpoint_3").mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "notes.txt").write_text("the old run's")


def test_a_folder_with_a_run_is_refused_unless_the_run_replaces_or_continues_it(tmp_path):
    check_output_dir(str(tmp_path / "new"))  # a new folder, or an empty one, is fine
    check_output_dir(str(tmp_path))
    previous_run(tmp_path)
    with pytest.raises(ValueError, match=r"already holds a run \(metrics.json, checkpoints\)"):
        check_output_dir(str(tmp_path))
    check_output_dir(str(tmp_path), overwrite=True)
    check_output_dir(str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="is the --base folder"):  # never over what the run reads
        check_output_dir(str(tmp_path), {"--base": str(tmp_path)}, overwrite=True)


def test_overwrite_never_deletes_what_the_run_reads_or_a_folder_that_is_not_a_run(tmp_path):
    previous_run(tmp_path)
    (tmp_path / "base").mkdir()
    with pytest.raises(
        ValueError, match=rf"holds the --base folder {tmp_path / 'base'}: --overwrite_output_dir would"
    ):
        check_output_dir(str(tmp_path), {"--base": str(tmp_path / "base")}, overwrite=True)
    check_output_dir(str(tmp_path), {"--base": str(tmp_path / "base")}, resume=True)  # resuming deletes nothing
    (tmp_path / "home").mkdir()
    for name in ("thesis.tex", "photos"):
        (tmp_path / "home" / name).touch()
    with pytest.raises(ValueError, match=r"holds files but no run \(photos, thesis.tex\): --overwrite_output_dir"):
        check_output_dir(str(tmp_path / "home"), overwrite=True)
    (tmp_path / "stopped" / "logs").mkdir(parents=True)  # a run stopped before its first validation
    check_output_dir(str(tmp_path / "stopped"), overwrite=True)


def test_overwrite_empties_the_folder_and_resume_keeps_it(tmp_path):
    previous_run(tmp_path)
    with claim_output_dir(str(tmp_path), resume=True, overwrite=True):
        assert (tmp_path / "checkpoints" / "checkpoint_3").is_dir()  # the run goes on from its state
    with claim_output_dir(str(tmp_path), overwrite=True):
        assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]  # nothing of the old run is left to mix in
    check_output_dir(str(tmp_path))
    assert not any(tmp_path.iterdir())  # the lock goes with the run


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    with pytest.raises(FileNotFoundError), claim_output_dir(str(tmp_path / "run")):
        assert (tmp_path / "run" / LOCK_FILE).is_file()
        (tmp_path / "no-such-domain" / "items.parquet").read_bytes()  # the run fails before writing anything
    assert not (tmp_path / "run").exists()


def test_a_second_run_on_a_folder_being_written_stops_at_once(tmp_path):
    with claim_output_dir(str(tmp_path / "run")):
        with pytest.raises(RunFolderBusy, match="another run is writing"):
            RunFolderLock(tmp_path / "run")
        with claim_output_dir(str(tmp_path / "run"), main_process=False):  # other processes of the run do not lock
            pass
    RunFolderLock(tmp_path / "run").release()  # released when the run is done


def test_run_outputs_of_an_untrained_run_and_an_unknown_card(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown card 'model'; valid: base, adapter"):
        write_run_outputs(folder, {"test": {}}, (BaselineArguments(),), card="model")
    assert not folder.exists()  # refused before anything is written

    write_run_outputs(folder, {"test": {"all": {"ndcg@10": 0.5}}}, (BaselineArguments(baseline="knn_text"),))
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "run_args.json"]  # no curves, no card
    assert json.loads((folder / "metrics.json").read_text()) == {"test": {"all": {"ndcg@10": 0.5}}}
    assert json.loads((folder / "run_args.json").read_text())["baseline"] == "knn_text"
