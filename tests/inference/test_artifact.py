"""The trained-model artifact: metadata validated before anything is allocated, finite weights, safe labels."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from alexnet.artifacts.checkpoint import META_KEY, load_weights
from alexnet.artifacts.loader import load_trained
from alexnet.artifacts.trained import (
    FORMAT_VERSION,
    InvalidMetadataError,
    ModelMeta,
    display_label,
)
from alexnet.cli import main
from alexnet.errors import NonFiniteWeightsError
from tests.conftest import make_weights
from tests.helpers import solid_photo


def _rewrite(path, edit, tensors_edit=None):
    """Re-save weights at ``path`` with their metadata passed through ``edit`` (a tampered file)."""
    tensors, meta = load_weights(path)
    edit(meta)
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["model"].update(variant="alexnet_2013"), "model.variant='alexnet_2013'"),
        (lambda m: m["model"].update(num_classes=10_000_000), "model.num_classes=10000000"),
        (lambda m: m["model"].update(num_classes=5), "4 class names for a model with num_classes=5"),
        (lambda m: m.update(classes=["a", "b", "c"]), "3 class names"),
        (lambda m: m.update(classes=["a", "a", "b", "c"]), "class names repeat"),
        (lambda m: m["data"].update(std=[0.0, 1.0, 1.0]), "data.std"),
        (lambda m: m["data"].update(std=[float("nan")] * 3), "data.std"),
        (lambda m: m["data"].update(mean=[0.5]), "data.mean"),
        (lambda m: m["data"].update(input_size=-3), "data.input_size=-3"),
        (lambda m: m["data"].update(stored_size=0), "data.stored_size=0"),
        # one view's central crop of 40 from 32 px would be its last 4 × 4 pixels (x[..., -4:36, -4:36]), padding or not
        (lambda m: m["data"].update(crop=40, stored_size=32, pad=4), "data.crop=40 is larger than the stored image"),
        (lambda m: m["model"].update(overrides={"width": 1e9}), "model.overrides"),
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer than this alexnet reads"),
        (lambda m: m.pop("data"), "'data' must be an object"),
        (lambda m: m.setdefault("provenance", {}).update(eval_views={"flip": "yes"}), "provenance.eval_views"),
        (
            lambda m: m.setdefault("provenance", {}).update(
                eval_views={"ten_crop": False, "flip": True, "translate": 10**9}
            ),
            "provenance.eval_views",
        ),
    ],
)
def test_tampered_metadata_is_refused_naming_the_field(tmp_path, edit, message, monkeypatch):
    import alexnet.artifacts.trained as artifact

    path = _rewrite(make_weights(tmp_path / "w.safetensors"), edit)
    built = []
    monkeypatch.setattr(artifact.ModelDescription, "build", lambda self: built.append(self))
    with pytest.raises(InvalidMetadataError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_trained(path)
    assert not built  # refused before any network was allocated


def test_eval_views_come_from_the_record_or_are_one_view(tmp_path):
    plain = load_trained(make_weights(tmp_path / "plain.safetensors"))
    assert plain.eval_views == {"ten_crop": False, "flip": False, "translate": 0}
    views = {"ten_crop": False, "flip": True, "translate": 2}
    path = _rewrite(
        make_weights(tmp_path / "w.safetensors"), lambda m: m.setdefault("provenance", {}).update(eval_views=views)
    )
    assert load_trained(path).eval_views == views


def test_huge_class_count_fails_fast_through_the_cli(tmp_path, capsys):
    path = _rewrite(make_weights(tmp_path / "w.safetensors"), lambda m: m["model"].update(num_classes=10_000_000))
    assert main(["predict", "--checkpoint", str(path), str(solid_photo(tmp_path / "a.png"))]) == 2
    err = capsys.readouterr().err
    assert "num_classes=10000000" in err and len(err.strip().splitlines()) == 1


def test_metadata_round_trips_and_old_files_still_load(tmp_path):
    path = make_weights(tmp_path / "w.safetensors")
    _, tree = load_weights(path)
    meta = ModelMeta.from_dict(tree, "w")
    again = ModelMeta.from_dict(json.loads(json.dumps(meta.to_dict())), "w")
    assert again == meta and meta.format_version == FORMAT_VERSION  # the fixture has no format_version: version 1
    trained = load_trained(path)
    assert trained.classes == [f"label_{i}" for i in range(4)] and trained.preprocessing.input_size == 32


def test_non_finite_weights_are_refused_by_predict_and_eval(tmp_path, capsys):
    def poison(tensors):
        key = next(k for k in tensors if k.endswith("weight"))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")

    path = _rewrite(make_weights(tmp_path / "w.safetensors"), lambda m: None, poison)
    with pytest.raises(NonFiniteWeightsError, match="non-finite"):
        load_trained(path)
    assert main(["predict", "--checkpoint", str(path), str(solid_photo(tmp_path / "a.png"))]) == 2
    assert main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("non-finite weights") == 2 and "nan%" not in err


def test_class_names_never_reach_the_terminal_raw(tmp_path, capsys):
    evil = ["\x1b[2J\x1b[31mpwned", "line\nbreak", "ok", "\u202eeman"]
    path = _rewrite(make_weights(tmp_path / "w.safetensors"), lambda m: m.update(classes=evil))
    assert [display_label(c) for c in evil] == ["\\x1b[2J\\x1b[31mpwned", "line\\x0abreak", "ok", "\\u202eeman"]
    assert display_label(os.fsdecode(b"bad\xffname.jpg")) == "bad\\xffname.jpg"  # a file name's non-UTF-8 byte
    assert main(["predict", "--checkpoint", str(path), "--topk", "4", str(solid_photo(tmp_path / "a.png"))]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and len(out.splitlines()) == 1 and "\\x1b[2J" in out


def test_a_checkpoint_loads_through_the_same_validation(tmp_path):
    from alexnet.artifacts.checkpoint import load_checkpoint, save_checkpoint
    from alexnet.training.fit import fit
    from tests.conftest import tiny_config

    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert load_trained(tmp_path / "run" / "last.pt").config.data.dataset == "fake"
    state["model_config"]["num_classes"] = 10_000_000
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(InvalidMetadataError, match="num_classes=10000000"):
        load_trained(tmp_path / "bad.pt")


def test_tampered_weights_keep_their_tensor_count(tmp_path):
    # the helper itself: a rewrite keeps the tensors bitwise
    path = make_weights(tmp_path / "w.safetensors")
    before = load_file(str(path))
    _rewrite(path, lambda m: None)
    after = load_file(str(path))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
