"""The names users give: a near miss is named back (`alexnet.names.did_you_mean`)."""

import pytest

from alexnet.names import did_you_mean

CHOICES = ["fashion-mnist", "mnist", "cifar10", "cifar100", "alexnet_owt.IMAGENET1K_V1"]


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("MNIST", "did you mean 'mnist'? "),  # case alone: the choice as it is spelled
        ("cifar-10", "did you mean 'cifar10'? "),
        ("fashion_mnist", "did you mean 'fashion-mnist'? "),
        ("alexnet_owt.imagenet1k_v1", "did you mean 'alexnet_owt.IMAGENET1K_V1'? "),
        ("imagenet", ""),  # nothing close: no guess
        ("", ""),
        (3, ""),  # a value of the wrong type is another refusal's to name
    ],
)
def test_a_near_miss_is_named(given, hint):
    assert did_you_mean(given, CHOICES) == hint


def test_choices_that_are_not_names_are_skipped():
    assert did_you_mean("nne", [None, "none", 1]) == "did you mean 'none'? "
