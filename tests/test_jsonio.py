import pytest

from sparse_trt.core.errors import ManifestError
from sparse_trt.core.jsonio import read_json_object


def test_read_json_object(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"a": 1}')
    assert read_json_object(p, ManifestError, fix="x") == {"a": 1}
    for text, needle in (("{bad", "not readable JSON"), ("[1, 2]", "does not hold a JSON object")):
        p.write_text(text)
        with pytest.raises(ManifestError) as e:
            read_json_object(p, ManifestError, fix="re-export it")
        assert needle in str(e.value) and str(p) in str(e.value) and e.value.fix == "re-export it"
    with pytest.raises(ManifestError):
        read_json_object(tmp_path / "missing.json", ManifestError, fix="x")
