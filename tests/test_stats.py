"""datasets.stats on fixtures (known counts) and on the full CIL development set."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from datasets.stats import compute_stats, get_args_parser, main
from datasets.voc import VOCDataset
from karyogram.labels import id_of, name_of
from tests.conftest import FIXTURES, shared_path


def _expected_cil_counts() -> tuple[int, Counter]:
    per_class: Counter = Counter()
    for xml in sorted((FIXTURES / "cil" / "annotations").glob("*.xml")):
        for o in ET.parse(xml).getroot().findall("object"):
            per_class[name_of(id_of(o.findtext("name")))] += 1
    return sum(per_class.values()), per_class


def test_cli_voc_fixture_last_line_json_and_plots(tmp_path, capsys):
    out = main(
        get_args_parser().parse_args(["--format", "voc", "--root", str(FIXTURES / "cil"), "--plots", str(tmp_path)])
    )
    lines = capsys.readouterr().out.strip().splitlines()
    last = json.loads(lines[-1])
    n, per_class = _expected_cil_counts()
    assert last["images"] == 2 and last["instances"] == n
    assert {k: v for k, v in last["per_class"].items() if v} == dict(per_class)
    assert set(last["per_class"]) == {str(i) for i in range(1, 23)} | {"X", "Y"}
    ipi = last["instances_per_image"]
    assert ipi["min"] <= ipi["mean"] <= ipi["max"] and ipi["min"] + ipi["max"] == n  # two images
    assert last["mask_area"] == {"n": 0}  # voc stats do not derive masks by default
    assert out == last
    assert any(line.startswith("images") for line in lines)
    for name in ("instances_per_image.png", "per_class.png", "sizes.png"):
        p = tmp_path / name
        assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_other_formats_on_fixtures(capsys):
    main(get_args_parser().parse_args(["--format", "crops", "--root", str(FIXTURES / "bioimlab")]))
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["images"] == 6 and last["instances"] == 6
    assert last["per_class"]["1"] == 2 and last["per_class"]["X"] == 1 and last["per_class"]["Y"] == 1
    assert last["mask_area"]["n"] == 6
    with pytest.warns(UserWarning, match="smaller than 20"):
        main(get_args_parser().parse_args(["--format", "mfish", "--root", str(FIXTURES / "mfish")]))
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["images"] == 1 and last["per_class"]["Y"] >= 1
    assert last["skipped"] == {"component smaller than 20 px": 1}


def test_compute_stats_counts_skips(tmp_path):
    import cv2
    import numpy as np

    (tmp_path / "JEPG").mkdir()
    (tmp_path / "annotations").mkdir()
    cv2.imwrite(str(tmp_path / "JEPG" / "a.png"), np.full((40, 40), 200, np.uint8))
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in (("A1", (1, 1, 10, 20)), ("Q", (2, 2, 5, 5)), ("Y", (5, 5, 5, 9)))
    )
    (tmp_path / "annotations" / "a.xml").write_text(f"<annotation>{objs}</annotation>")
    with pytest.warns(UserWarning):
        st = compute_stats(VOCDataset(tmp_path, derive=False))
    assert st["images"] == 1 and st["instances"] == 1 and st["per_class"]["1"] == 1
    assert st["skipped"] == {"unknown class": 1, "degenerate box": 1}
    assert st["box_width"]["max"] == 9 and st["box_height"]["max"] == 19


def test_bad_flags():
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--format", "nope", "--root", "x"])


@pytest.mark.realdata
@pytest.mark.slow
def test_realdata_full_cil_counts(capsys):
    root = shared_path("cil54816")
    main(get_args_parser().parse_args(["--format", "voc", "--root", str(root)]))
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["images"] == 1000 and last["instances"] == 45962
    assert last["per_class"]["X"] == 1476 and last["per_class"]["Y"] == 490
    assert last["skipped"] == {}
