import pytest


@pytest.fixture(scope="module", autouse=True)
def _torchrun_temporaries(request, tmp_path_factory):
    """torchrun's agent makes a ``torchelastic_*`` log directory under ``$TMPDIR`` for every launch and leaves it:
    the modules that launch it point their children's ``TMPDIR`` at pytest's temporary directory, which pytest
    prunes. (Not every module: the C++ compilers of other tests' children keep inductor's cache in ``/tmp``.)"""
    if request.module.__name__.rsplit(".", 1)[-1] not in ("test_distributed", "test_model_parallel"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("torchrun")))
        yield
