import numpy as np
import pytest

from pipeline.output import read_similarities, write_similarities


@pytest.mark.parametrize("ids", [np.array([7, 3, 9], dtype=np.int64), np.array(["a-7", "ü3", "9"])])
def test_similarities_file_layout(tmp_path, ids):
    ppn = np.array(["11", "22", "22"])
    filename = np.array(["0001.jpg", "0002.jpg", "Blatt ä.jpg"])
    neighbours = np.array([[1, 2], [0, 2], [1, 0]])
    distances = np.array([[0.1, 0.2], [0.1, 0.3], [0.0, 0.2]])
    write_similarities(tmp_path / "s.hdf5", ids, ppn, filename, neighbours, distances, {"metric": "euclidean"})
    result = read_similarities(tmp_path / "s.hdf5")
    assert result["ids"].tolist() == ids.tolist()
    assert result["ids"].dtype == ids.dtype or result["ids"].dtype.kind == "U"
    assert result["neighbours"].tolist() == ids[neighbours].tolist()
    assert result["distances"].dtype == np.float32
    assert result["similarities"].shape == (3, 2, 2)
    assert result["similarities"][2].tolist() == [["22", "0002.jpg"], ["11", "0001.jpg"]]
    assert result["attrs"]["k"] == 2 and result["attrs"]["metric"] == "euclidean"
    assert "created" in result["attrs"] and "pipeline_version" in result["attrs"]


def test_similarities_are_byte_strings(tmp_path):
    import h5py

    write_similarities(
        tmp_path / "s.hdf5",
        np.array([1, 2]),
        np.array(["5", "6"]),
        np.array(["a", "b"]),
        np.array([[1], [0]]),
        np.array([[0.5], [0.5]]),
        {},
    )
    with h5py.File(tmp_path / "s.hdf5") as f:
        assert f["similarities"].dtype.kind == "S"
        assert f["similarities"][0, 0].tolist() == [b"6", b"b"]
