import re

import pytest

from alexnet.config import Config, config_from_dict, list_recipes, load_config
from alexnet.errors import AlexNetError, ConfigError


def test_builtin_recipes_resolve():
    names = list_recipes()
    assert {"paper-imagenet", "torchvision-imagenet", "d2l-fashion-mnist", "fashion-mnist", "cifar10"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.recipe == name and cfg.train.epochs > 0


def test_paper_recipe_is_the_paper():
    cfg = load_config("paper-imagenet")
    assert (cfg.model.name, cfg.data.batch_size, cfg.optim.momentum, cfg.optim.weight_decay) == (
        "alexnet_paper",
        128,
        0.9,
        5e-4,
    )
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.max_drops, cfg.train.epochs) == (0.01, "plateau", 3, 90)
    assert cfg.data.pca_std == 0.1 and cfg.data.ten_crop and cfg.data.resize == 256


def test_d2l_recipe_matches_the_chapter():
    cfg = load_config("d2l-fashion-mnist")
    assert (cfg.model.name, cfg.data.batch_size, cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs) == (
        "alexnet_d2l",
        128,
        0.01,
        0.0,
        10,
    )


def test_overrides_and_fields():
    cfg = load_config(
        "fashion-mnist", ["optim.lr=0.3", "model.overrides.width=0.5", "data.flip=false"], train__epochs=7
    )
    assert cfg.optim.lr == 0.3 and cfg.data.flip is False and cfg.train.epochs == 7
    assert cfg.model.overrides == {"input_size": 28, "width": 0.5, "pool_first": True}  # merged with the recipe's
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], r"unknown key optim.lrr; valid keys: \["),
        (["train.lr=0.1"], r"unknown key train.lr; did you mean optim.lr\? valid keys"),  # a key of another section
        (["data.epochs=3"], r"unknown key data.epochs; did you mean train.epochs\?"),
        (["optimizer.lr=1"], "unknown section"),
        (["optim.lr=fast"], "wrong type"),
        (["train.epochs=1.5"], "wrong type"),
        (["train.bf16_copies=1"], r"train.bf16_copies=1 has the wrong type; expected bool$"),
        (["lr=1"], "section.key=value"),
        (["data.ten_crop=true", "data.flip_tta=true"], "exclusive"),
        (["data.ten_crop=true", "data.translate_tta=2"], "exclusive"),
        (["data.translate_tta=-1"], "out of range"),
        (["optim.lr=inf"], r"optim.lr=inf is out of range; expected a finite value in \(0, inf\)"),
        (["optim.lr=nan"], "out of range"),
        (["data.std=[0.5, 0, 0.5]"], "above 0"),
        (["data.std=[nan]"], "above 0"),
        (["data.mean=[inf]"], "finite numbers"),
        (['data.pad_mode="zeros"'], "data.pad_mode"),
        (["data.translate_tta=28"], "less than the model's input, 28 px"),
        (["data.alternate_flips=true", "data.flip=false"], "needs data.flip=true"),
        (["data.alternate_flips=true", "data.mean_image=true"], "one of them"),
        (['optim.schedule="plateau"', "train.val_every=2"], "every epoch"),
        # NumPy's seed range, named as such (NumPy said "Seed must be between 0 and 2**32 - 1" mid-run)
        (["train.seed=-1"], r"train.seed=-1 is out of range; expected a finite value in \[0, 4294967295\]$"),
        (["train.seed=4294967296"], "out of range"),
        (["data.val_seed=-3"], "data.val_seed=-3 is out of range"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(AlexNetError, match=message):
        load_config("fashion-mnist", overrides)


def test_unknown_recipe_names_the_choices():
    with pytest.raises(AlexNetError, match="paper-imagenet"):
        load_config("papr")


def test_recipe_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nname = "alexnet_owt"\n[train]\nepochs = 2\n')
    cfg = load_config(str(path))
    assert cfg.model.name == "alexnet_owt" and cfg.train.epochs == 2


def test_freeze_takes_a_depth_as_a_number_or_a_string():
    """The docs write `model.freeze=1`; TOML reads that as a number, `--freeze 1` gives a string."""
    assert load_config("fashion-mnist", ["model.freeze=1"]).model.freeze == 1
    assert load_config("fashion-mnist", ['model.freeze="features"']).model.freeze == "features"
    with pytest.raises(AlexNetError, match="model.freeze=True has the wrong type"):
        load_config("fashion-mnist", ["model.freeze=true"])
    from alexnet.models import create_model
    from alexnet.training.finetune import freeze

    for depth in (0, "0"):  # the number as the string: --set model.freeze=0 trained with nothing frozen
        with pytest.raises(ConfigError, match="a depth from 1 to"):
            freeze(create_model("alexnet_small", num_classes=10), depth)
    assert freeze(create_model("alexnet_small", num_classes=10), None) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c.data, "batch_size", "256"), "data.batch_size='256' has the wrong type; expected int"),
        (lambda c: setattr(c.data, "batch_size", 0), "data.batch_size=0 is out of range"),
        (lambda c: setattr(c.optim, "lr", -1.0), "optim.lr=-1.0 is out of range"),
        (lambda c: setattr(c.data, "std", [True, 1, 1]), "data.std=[True, 1, 1] has the wrong type"),
        (lambda c: setattr(c.model, "name", "alexnet"), "unknown model 'alexnet'"),
        (lambda c: setattr(c, "data", {"batch_size": 8}), "data is a dict; expected a DataConfig"),
        (lambda c: setattr(c.model, "overrides", None), "overrides=None has the wrong type; expected dict[str, Any]"),
    ],
)
def test_fit_checks_a_config_changed_in_python_before_it_writes_anything(tmp_path, monkeypatch, change, message):
    """`alexnet.fit(cfg)` after `cfg.data.batch_size = 0` said ZeroDivisionError; `cfg.optim.lr = -1` reached torch's
    SGD; a bool in `data.std` trained the whole run and then failed writing the weights' metadata."""
    from alexnet.training.fit import fit

    monkeypatch.chdir(tmp_path)
    cfg = load_config("fashion-mnist", ['data.dataset="fake"'], train__out=str(tmp_path / "run"))
    change(cfg)
    with pytest.raises(ConfigError, match=re.escape(message)):
        fit(cfg)
    assert list(tmp_path.iterdir()) == []


def test_validate_makes_the_types_load_config_makes():
    cfg = Config()
    cfg.optim.lr, cfg.data.mean = 1, [0, 0, 0]
    cfg.validate()
    assert type(cfg.optim.lr) is float and all(type(v) is float for v in cfg.data.mean)


def test_a_saved_config_with_a_key_this_version_lacks_says_a_newer_one_wrote_it():
    """A checkpoint's config with a key unknown here: no field was ever renamed or removed, so a later alexnet
    wrote it (before: the list of valid keys, as for a typing mistake in a recipe)."""
    from alexnet.version import __version__

    saved = Config().to_dict()
    assert config_from_dict(saved).to_dict() == saved  # every field of this version reads back
    saved["train"]["resharding"] = "auto"
    with pytest.raises(
        AlexNetError,
        match=rf"unknown key train\.resharding, written by a newer alexnet than this one \({__version__}\): upgrade",
    ):
        config_from_dict(saved)


def test_the_mnist_recipe_never_mirrors_a_digit():
    """A mirrored digit is another digit (or none): the recipe translates instead, and scores no mirror."""
    cfg = load_config("mnist")
    assert (cfg.data.dataset, cfg.data.flip, cfg.data.flip_tta, cfg.data.pad) == ("mnist", False, False, 2)
