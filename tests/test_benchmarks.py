"""The benchmarks run and end with their JSON figures (no timing is asserted)."""

import json

from benchmarks import extract, reduce


def last_json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_reduce_benchmark_prints_its_figures(capsys):
    reduce.run(images=20, channels=64)
    figures = last_json_line(capsys)
    assert figures["bench"] == "reduce" and figures["descriptors"] == 20 * 49
    assert figures["max_component_mismatch"] < 1e-4  # the streamed fit found sklearn's components


def test_extract_benchmark_prints_its_figures(capsys):
    extract.run(images=6, batch_size=4, per_image=2)
    figures = last_json_line(capsys)
    assert figures["bench"] == "extract"
    assert {"pipeline_ips", "bare_model_ips", "per_image_predict_ips", "ratio_vs_bare", "speedup_vs_per_image"} <= set(figures)
    assert 0 < figures["store_bytes_per_image"] < 49 * 2048  # 8-bit codes, compressed
    assert all(figures[k] > 0 for k in ("pipeline_ips", "bare_model_ips", "per_image_predict_ips"))


def test_neighbours_benchmark_prints_its_figures(capsys):
    from benchmarks import neighbours

    neighbours.run(images=60, words=(20,), tree_queries=60)
    figures = last_json_line(capsys)
    assert figures["bench"] == "neighbours"
    assert [run["distance"] for run in figures["runs"]] == ["tfidf/cosine", "raw/euclidean"]
    assert all(run["identical"] is True for run in figures["runs"])


def test_scale_benchmark_prints_each_stage(capsys):
    from benchmarks import scale

    scale.run(images=300, words=20, rank=8, sample_images_=100, sample_size=2000)
    figures = last_json_line(capsys)
    assert figures["bench"] == "scale" and figures["n_images"] == 300
    for stage in ("reduction", "codebook", "histograms", "neighbours"):
        assert figures[f"{stage}_peak_rss_mb"] > 0 and figures[f"{stage}_seconds"] >= 0
    assert figures["assignment_ips"] > 0


def test_cms_benchmark_prints_its_figures(capsys):
    from benchmarks import cms

    cms.run(images=50, databases=("sqlite",))
    figures = last_json_line(capsys)
    assert figures["bench"] == "cms" and figures["rows"] == 250 and figures["sqlite_rows_per_s"] > 0
