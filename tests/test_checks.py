"""The shared argument checks (scope/_checks.py): a wrong type is a TypeError, a bad value a
ValueError, both naming the argument; numpy and torch scalars count as the numbers they hold."""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from scope import _checks

# ----------------------------------------------------------------------------- integers


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3), np.array(3)])
def test_integers_from_python_numpy_and_torch(value):
    result = _checks.integer(value, "k")
    assert result == 3 and type(result) is int
    assert _checks.positive_int(value, "k") == 3
    assert _checks.non_negative_int(value, "k") == 3
    assert _checks.index(value, 4, "feature") == 3


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        np.bool_(True),
        torch.tensor(True),
        2.0,
        2.5,
        np.float32(2.0),
        torch.tensor(2.0),
        "3",
        None,
        [3],
        torch.tensor([3]),
        np.array([3]),
        1 + 0j,
    ],
)
def test_non_integers_are_type_errors_naming_the_argument(value):
    with pytest.raises(TypeError, match=r"^k must be an integer, got "):
        _checks.integer(value, "k")
    with pytest.raises(TypeError, match=r"^k must be an integer"):
        _checks.positive_int(value, "k")
    with pytest.raises(TypeError, match=r"^feature must be an integer"):
        _checks.index(value, 10, "feature")


def test_bool_is_not_an_integer_even_though_python_says_so():
    assert isinstance(True, int)
    with pytest.raises(TypeError, match=r"k must be an integer, got True \(bool\)"):
        _checks.integer(True, "k")


def test_bad_integer_values_are_value_errors():
    with pytest.raises(ValueError, match=r"^k must be a positive integer, got 0\.$"):
        _checks.positive_int(0, "k")
    with pytest.raises(ValueError, match=r"^k must be a positive integer, got -2\.$"):
        _checks.positive_int(np.int64(-2), "k")
    assert _checks.non_negative_int(0, "n") == 0
    with pytest.raises(ValueError, match=r"^n must be a non-negative integer, got -1\.$"):
        _checks.non_negative_int(-1, "n")


@pytest.mark.parametrize("value", [48, -1, 10_000, np.int64(48), torch.tensor(-1)])
def test_index_out_of_range_names_the_index_and_the_valid_range(value):
    with pytest.raises(
        ValueError,
        match=rf"^feature {int(value)} is out of range: there are 48 features "
        r"\(valid indices 0\.\.47\)\.$",
    ):
        _checks.index(value, 48, "feature")
    with pytest.raises(ValueError, match=rf"layer {int(value)} is out of range: there are 48 layers"):
        _checks.index(value, 48, "layer", what="layers")
    assert _checks.index(47, 48, "feature") == 47 and _checks.index(0, 48, "feature") == 0


# ----------------------------------------------------------------------------- real numbers


@pytest.mark.parametrize(
    "value,expected",
    [
        (2, 2.0),
        (2.5, 2.5),
        (np.float32(0.5), 0.5),
        (np.int64(4), 4.0),
        (torch.tensor(1.5), 1.5),
        (torch.tensor(3), 3.0),
        (torch.tensor(0.25, dtype=torch.bfloat16), 0.25),
    ],
)
def test_numbers_from_python_numpy_and_torch(value, expected):
    result = _checks.number(value, "value")
    assert result == expected and type(result) is float
    assert _checks.finite(value, "value") == expected


@pytest.mark.parametrize("value", [True, np.bool_(False), "1.0", None, 1 + 2j, torch.tensor([1.0]), [1.0]])
def test_non_numbers_are_type_errors(value):
    with pytest.raises(TypeError, match=r"^value must be a number, got "):
        _checks.number(value, "value")
    with pytest.raises(TypeError, match=r"^value must be a number"):
        _checks.finite(value, "value")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"), torch.tensor(float("inf"))])
def test_non_finite_numbers_are_value_errors(value):
    assert math.isnan(_checks.number(value, "value")) or math.isinf(_checks.number(value, "value"))
    with pytest.raises(ValueError, match=r"^value must be a finite number, got "):
        _checks.finite(value, "value")


# ----------------------------------------------------------------------------- choices and text


def test_choice():
    assert _checks.choice("max", ("act", "max"), "unit") == "max"
    with pytest.raises(ValueError, match=r"^unit must be one of 'act', 'max', got 'maximum'\.$"):
        _checks.choice("maximum", ("act", "max"), "unit")
    with pytest.raises(TypeError, match=r"^unit must be one of 'act', 'max', got 1\.$"):
        _checks.choice(1, ("act", "max"), "unit")


def test_text_and_texts():
    assert _checks.text("hi") == "hi"
    with pytest.raises(TypeError, match=r"^prompt must be a string, got list\.$"):
        _checks.text(["hi"], "prompt")
    assert _checks.texts("one") == ["one"]
    assert _checks.texts(("a", "b")) == ["a", "b"]
    assert _checks.texts(t for t in "ab") == ["a", "b"]
    assert _checks.texts([]) == []
    with pytest.raises(TypeError, match=r"^texts must be a string or a list of strings, got int\.$"):
        _checks.texts(3)
    with pytest.raises(TypeError, match=r"^texts must hold strings; item 1 is a int: 2\.$"):
        _checks.texts(["a", 2])


# ----------------------------------------------------------------------------- torch settings


def test_dtype_from_a_dtype_or_its_name():
    assert _checks.dtype(torch.bfloat16) is torch.bfloat16
    assert _checks.dtype("bfloat16") is torch.bfloat16
    assert _checks.dtype("torch.float16") is torch.float16
    assert _checks.dtype_name(None) == "float32"
    assert _checks.dtype_name(torch.bfloat16) == "bfloat16"
    assert _checks.dtype_name("torch.float32") == "float32"
    with pytest.raises(ValueError, match=r"Unknown dtype 'float33'.*'bfloat16'"):
        _checks.dtype("float33")
    with pytest.raises(ValueError, match=r"Unknown dtype 'nn'"):
        _checks.dtype("nn")  # an attribute of torch, but not a dtype
    with pytest.raises(TypeError, match=r"dtype must be a torch\.dtype or its name, got 32"):
        _checks.dtype(32)


def test_device():
    assert _checks.device("cpu") == "cpu"
    assert _checks.device(torch.device("cpu")) == "cpu"
    assert _checks.device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"Unknown device 'gpu0'.*'cpu' or 'cuda'"):
        _checks.device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_value_error_naming_the_fix():
    with pytest.raises(ValueError, match=r"device='cuda:0' but this machine has no CUDA GPU.*use device='cpu'"):
        _checks.device("cuda:0")


def test_importing_the_checks_needs_no_torch():
    code = (
        "import sys; from scope import _checks; _checks.positive_int(3, 'k'); _checks.finite(1.5, 'x'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------- renamed keywords


@_checks.renamed(prompts="texts", coeff="value")
def _sweep(model, texts=None, *, value=1.0):
    """A stand-in with two renamed keywords."""
    return model, texts, value


def test_renamed_keyword_warns_and_gives_the_same_result():
    expected = _sweep("m", ["a"], value=2.0)
    with pytest.warns(DeprecationWarning, match=r"^_sweep\(prompts=\.\.\.\) is deprecated; use texts=\.$"):
        assert _sweep("m", prompts=["a"], value=2.0) == expected
    with pytest.warns(DeprecationWarning, match=r"_sweep\(coeff=\.\.\.\) is deprecated; use value="):
        assert _sweep("m", ["a"], coeff=2.0) == expected


def test_renamed_keyword_warning_points_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _sweep("m", prompts=["a"])
    assert len(caught) == 1 and caught[0].filename == __file__


def test_new_names_do_not_warn_and_both_names_are_a_type_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _sweep("m", texts=["a"]) == ("m", ["a"], 1.0)
    with pytest.raises(TypeError, match=r"_sweep\(\) got both prompts= and its new name texts="):
        _sweep("m", prompts=["a"], texts=["b"])


def test_renamed_keeps_the_function_s_name_and_doc():
    assert _sweep.__name__ == "_sweep" and _sweep.__doc__ == "A stand-in with two renamed keywords."


def test_seeds_are_bounded_to_what_torch_generators_take():
    import torch

    for good in (0, 2**64 - 1, np.uint64(2**64 - 1)):
        torch.Generator().manual_seed(_checks.seed(good))  # the bound is torch's own
    with pytest.raises(ValueError):
        torch.Generator().manual_seed(2**64)
    for bad in (2**64, 2**70, -1):
        with pytest.raises(
            ValueError, match=rf"seed must be an integer in 0\.\.2\*\*64 - 1 \({2**64 - 1}\), got {bad}"
        ):
            _checks.seed(bad)
    with pytest.raises(TypeError, match="seed must be an integer"):
        _checks.seed(1.5)
