import json

import pytest

from mvcap.bench import BenchConfig, format_table, parse_method, run_benchmark
from mvcap.refine import RefineConfig


def test_parse_method():
    kind, cfg = parse_method("dense-flow-refit@cam2", RefineConfig())
    assert kind == "dense" and (cfg.predictor, cfg.fusion, cfg.views) == ("flow", "refit", ("cam2",))
    assert parse_method("init", RefineConfig()) == ("init", None)
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("dense-magic", RefineConfig())
    with pytest.raises(ValueError, match="@view"):
        parse_method("gt@cam1", RefineConfig())


def test_gt_row_reads_zero_and_init_does_not(body_model, tiny_session, tmp_path):
    report = run_benchmark(
        [tiny_session],
        BenchConfig(methods=("init", "gt", "sparse-gt-keypoints")),
        model=body_model,
        progress=False,
        log=lambda m: None,
    )
    rows = report["methods"]
    for key in ("MPJPE", "PA-MPJPE", "N-MPJPE", "PVE", "PA-PVE", "N-PVE"):
        assert rows["gt"][key] < 1e-3
        assert rows["init"][key] > 10
    assert rows["sparse-gt-keypoints"]["MPJPE"] < rows["init"]["MPJPE"]
    table = format_table(report)
    assert table.splitlines()[0].startswith("| method | MPJPE") and "| gt | 0.0 |" in table
    json.dumps(report, default=str)


def test_appearance_ablation_methods(body_model):
    from mvcap.bench import parse_method
    from mvcap.refine import RefineConfig, estimate_appearance
    from mvcap.synth import make_subject

    kind, cfg = parse_method("dense-learned-joint+wrongtexture@cam01", RefineConfig())
    assert kind == "dense" and cfg.appearance == "wrong" and cfg.views == ("cam01",) and cfg.predictor == "learned"
    assert parse_method("dense-flow-refit+notexture", RefineConfig())[1].appearance == "none"
    with pytest.raises(ValueError, match="unknown method suffix"):
        parse_method("dense-flow-joint+sepia", RefineConfig())
    import numpy as np

    subject = make_subject(np.random.default_rng(0), body_model, "s")
    own = estimate_appearance(body_model, subject, "subject")["texture"]
    wrong = estimate_appearance(body_model, subject, "wrong")["texture"]
    assert own.shape == wrong.shape and (own != wrong).any()
    assert estimate_appearance(body_model, subject, "none") == {}
