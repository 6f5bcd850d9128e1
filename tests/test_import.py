"""`import jaxinterp` is light and changes nothing global; every public name resolves."""

import subprocess
import sys

import jaxinterp as ji


def test_every_public_name_resolves_and_is_listed():
    for name in ji.__all__:
        assert getattr(ji, name) is not None, name
    assert set(ji.__all__) <= set(dir(ji))
    assert ji.HookedTransformer.__module__ == "jaxinterp.models.transformer"
    assert ji.sae.__name__ == "jaxinterp.sae"


def test_import_loads_no_heavy_or_global_state_changing_module():
    code = ("import sys, jaxinterp as ji; ji.HookedTransformer; ji.run_with_cache; "
            "print(' '.join(m for m in ('tensorflow_datasets', 'matplotlib', 'torch', "
            "'orbax', 'equinox') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == ["equinox"], loaded  # the models are Equinox modules; nothing else
    bare = subprocess.run([sys.executable, "-c", "import sys, jaxinterp; "
                           "print('equinox' in sys.modules, 'jax' in sys.modules)"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert bare == ["False", "False"], "import jaxinterp alone defers every heavy import"


def test_unknown_name_is_an_attribute_error():
    try:
        ji.no_such_thing  # noqa: B018
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("expected AttributeError")
