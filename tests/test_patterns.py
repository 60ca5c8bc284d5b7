import pytest
import torch

from sparse_trt.core.errors import PatternError
from sparse_trt.core.patterns import (
    NM,
    Unstructured,
    nm_violations,
    parse_pattern,
    pattern_from_dict,
    pattern_to_dict,
)


@pytest.mark.parametrize("text,expected", [("2:4", NM(2, 4)), ("4:8", NM(4, 8)), ("2:5", NM(2, 5)), (" 1 : 3 ", NM(1, 3)),
                                           ("0.5", Unstructured(0.5)), ("70%", Unstructured(0.7))])
def test_parse_valid(text, expected):
    p = parse_pattern(text)
    assert p == expected
    assert pattern_from_dict(pattern_to_dict(p)) == p


@pytest.mark.parametrize("text", ["4:2", "0:4", "4:4", "abc", "1.0", "0", "-0.2", "2:", ""])
def test_parse_invalid_names_input(text):
    with pytest.raises(PatternError) as e:
        parse_pattern(text)
    assert e.value.fix  # always suggests a fix
    assert text.strip() in str(e.value) or "outside" in str(e.value)


def test_sparsity_values():
    assert NM(2, 4).sparsity == 0.5 and NM(2, 4).is_2of4
    assert abs(NM(2, 5).sparsity - 0.6) < 1e-9
    assert str(NM(4, 8)) == "4:8" and str(Unstructured(0.5)) == "0.5"


def test_nm_violations_along_input_dim():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    assert nm_violations(w, NM(2, 4), in_dim=1) == 0
    w[0, 1] = 3.0
    assert nm_violations(w, NM(2, 4), in_dim=1) == 1
    # transposed storage (GPT-2 Conv1D): groups run along dim 0
    assert nm_violations(w.t().contiguous(), NM(2, 4), in_dim=0) == 1
