"""The oracle ablation (wsis diagnose): each oracle on hand-computed cases, the synthesis with
every oracle on reproducing the ground truth, and the command end to end."""

import json

import numpy as np
import pytest

from conftest import TINY, tiny_args, wsis
from wsis.config import load_config
from wsis.data import open_dataset
from wsis.algorithms.instances import synthesize_instances
from wsis.diagnose import oracles
from wsis.errors import ConfigError
from wsis.metrics import InstanceAP, mean_ap

# A 12 x 16 image: instance 1 (class 2) fills rows 0-7, columns 0-7; instance 2 (class 0)
# rows 4-11, columns 8-15, touching instance 1 along column 7/8 in rows 4-7.
TOY_MASKS = np.zeros((2, 12, 16), bool)
TOY_MASKS[0, 0:8, 0:8] = True
TOY_MASKS[1, 4:12, 8:16] = True
TOY_CLASSES = np.array([2, 0])
# its stride-4 grid (3 x 4 cells), hand-computed: cell (i, j) covers rows 4i..4i+3, columns 4j..4j+3
TOY_GRID = np.array([[1, 1, 0, 0],
                     [1, 1, 2, 2],
                     [0, 0, 2, 2]])


def test_grid_of_the_toy():
    ids = oracles.instance_map(TOY_MASKS)
    assert ids[5, 7] == 1 and ids[5, 8] == 2 and ids[0, 15] == 0
    assert oracles.grid_shape(12, 16) == (3, 4) and oracles.grid_shape(13, 17) == (4, 5)
    assert np.array_equal(oracles.grid_instances(ids), TOY_GRID)


def test_grid_takes_the_majority_and_counts_only_pixels_inside():
    ids = np.zeros((5, 6), np.int32)
    ids[0:4, 0:3] = 1          # cell (0, 0): 12 of 16 pixels -> 1; cell (0, 1): 4 of 8 (2 cols) -> tie -> 0
    ids[4, 4:6] = 2            # cell (1, 1) covers only row 4, columns 4-5: both pixels are 2
    grid = oracles.grid_instances(ids)
    assert np.array_equal(grid, [[1, 0], [0, 2]])


def test_oracle_cams_follow_the_cached_channel_order():
    cams = oracles.oracle_cams(TOY_GRID, TOY_CLASSES, [0, 2])      # class 0 is instance 2, class 2 instance 1
    assert cams.shape == (2, 3, 4) and cams.dtype == np.float32
    assert np.array_equal(cams[0], TOY_GRID == 2)
    assert np.array_equal(cams[1], TOY_GRID == 1)
    # a class with no ground-truth cell gets an all-zero channel
    assert not oracles.oracle_cams(TOY_GRID, TOY_CLASSES, [4]).any()


def test_oracle_boundary_marks_the_background_or_lower_side_of_every_border():
    expected = np.array([[0, 0, 1, 1],     # (0, 2), (0, 3): background above instance 2; (1, 1):
                         [0, 1, 0, 0],     # instance 1 beside instance 2 (id 1 < 2); (2, 0), (2, 1):
                         [1, 1, 0, 0]])    # background under instance 1
    assert np.array_equal(oracles.oracle_boundary(TOY_GRID), expected)
    # instance cells beside background are never marked: the walk keeps their seeds
    b = oracles.oracle_boundary(TOY_GRID)
    assert b[0, 0] == 0 and b[2, 3] == 0


def test_oracle_displacement_points_at_the_instance_centroid():
    d = oracles.oracle_displacement(TOY_GRID)
    assert d.shape == (2, 3, 4) and d.dtype == np.float32
    # instance 1: cells (0,0) (0,1) (1,0) (1,1): centroid (0.5, 0.5); instance 2: (1.5, 2.5)
    yy, xx = np.mgrid[0:3, 0:4]
    for n, (cy, cx) in {1: (0.5, 0.5), 2: (1.5, 2.5)}.items():
        cells = TOY_GRID == n
        assert np.allclose(yy[cells] + d[0][cells], cy) and np.allclose(xx[cells] + d[1][cells], cx)
    assert not d[:, TOY_GRID == 0].any()
    assert np.allclose(d[:, 0, 0], [0.5, 0.5]) and np.allclose(d[:, 2, 3], [-0.5, -0.5])


def test_oracle_displacement_drives_find_centroids_to_one_point_per_instance():
    from wsis.algorithms.instances import cluster_instances, find_centroids
    grid = np.zeros((20, 24), np.int32)
    grid[2:11, 2:11] = 1           # 9 x 9 cells, centroid (6, 6)
    grid[9:18, 11:20] = 2          # touching it at one corner column, centroid (13, 15)
    d = oracles.oracle_displacement(grid)
    ends = find_centroids(d, 50)
    assert {tuple(e) for e in ends[:, grid == 1].T} == {(6, 6)}
    assert {tuple(e) for e in ends[:, grid == 2].T} == {(13, 15)}
    clusters = cluster_instances(d, ends, 2.5)
    assert len(np.unique(clusters[grid == 1])) == 1 and len(np.unique(clusters[grid == 2])) == 1
    assert clusters[grid == 1][0] != clusters[grid == 2][0]


def test_oracle_clusters_put_background_in_an_instance_of_its_own():
    clusters = oracles.oracle_clusters(TOY_GRID)
    assert np.array_equal(clusters, np.where(TOY_GRID == 0, 3, TOY_GRID))
    # given to the synthesis, they replace the displacement's clusters: with the toy's CAMs and
    # boundary, the two instances come out whatever the displacement says
    cfg = load_config("synthetic", TINY, ())
    grid = np.zeros((12, 16), np.int32)
    grid[2:7, 2:7], grid[5:10, 7:12] = 1, 2          # touching, one class
    classes = np.array([1, 1])
    s = synthesize_instances(oracles.oracle_cams(grid, classes, [1]), [1], oracles.oracle_boundary(grid),
                                     np.zeros((2, 12, 16), np.float32), cfg, "cpu", (48, 64),
                                     clusters=oracles.oracle_clusters(grid))
    assert s.centroids is None and np.array_equal(s.clusters, oracles.oracle_clusters(grid))
    assert int((s.scores > 0).sum()) == 2
    truth = np.kron(grid, np.ones((4, 4), np.int32))           # the grid's instances at 48 x 64
    for n in (1, 2):
        overlap = [((s.instances == k) & (truth == n)).sum() / ((s.instances == k) | (truth == n)).sum()
                   for k in range(1, len(s.classes) + 1)]
        assert max(overlap) > 0.8


def test_oracle_relation_labels_have_a_band_around_every_label_change():
    sem = np.zeros((6, 7), np.uint8)
    sem[1:5, 1:4] = 3
    sem[1:5, 4:6] = 1
    sem[0, 6] = 255                # void stays void
    expected = sem.copy()
    for y in range(6):
        for x in range(7):
            near = [sem[yy, xx] for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
                    if 0 <= yy < 6 and 0 <= xx < 7]
            if any(v != sem[y, x] for v in near):
                expected[y, x] = 255
    labels = oracles.oracle_relation_labels(sem)
    assert np.array_equal(labels, expected)
    assert labels[2, 2] == 3 and labels[2, 3] == 255 and labels[2, 4] == 255 and labels[3, 0] == 255
    assert labels[5, 6] == 0 and labels[0, 6] == 255
    # a 2-pixel band reaches the pixels two 4-steps away from a change, and no further
    wide = oracles.oracle_relation_labels(sem, band=2)
    assert wide[2, 2] == 255 and wide[3, 0] == 255 and wide[5, 6] == 255
    assert (wide == 255).sum() > (labels == 255).sum()
    flat = np.full((4, 4), 2, np.uint8)
    assert np.array_equal(oracles.oracle_relation_labels(flat), flat)


def test_every_oracle_on_reproduces_the_ground_truth(tiny_data):
    """CAMs, boundary and displacement from the ground truth: the synthesised pseudo-labels
    score mAP50 >= 0.95 against it (InstanceAP, as eval_ins_seg), every image's instance count
    right."""
    cfg = load_config("synthetic", TINY, ())
    ds = open_dataset("synthetic", cfg, tiny_data, None)
    ap = InstanceAP(ds.num_classes, (0.5,))
    for image_id in ds.ids(cfg["data"]["infer_split"]):
        ids, classes, _ = oracles.processing_ground_truth(ds, image_id)
        grid = oracles.grid_instances(ids)
        present = sorted(set(classes.tolist()))
        s = synthesize_instances(oracles.oracle_cams(grid, classes, present), present,
                                         oracles.oracle_boundary(grid), oracles.oracle_displacement(grid),
                                         cfg, "cpu", ids.shape, ds.original_size(image_id))
        gt = ds.instance_gt(image_id)
        assert int((s.scores > 0).sum()) == len(gt.classes), image_id
        n = len(s.classes)
        ap.add(s.instances[None] == np.arange(1, n + 1)[:, None, None], s.classes, s.scores, gt.masks, gt.classes)
    assert mean_ap(ap.result()[0.5]) >= 0.95


def test_gt_quality_by_hand():
    from pipelines.stages.diagnose import gt_quality
    gt = np.zeros((2, 4, 4), bool)
    gt[0, :2, :2] = True
    gt[1, 2:, 2:] = True
    inst = np.zeros((4, 4), np.int32)
    inst[:2, :2] = 1               # IoU 1 with gt 0
    inst[2:, 2] = 2                # 2 of gt 1's 4 pixels: IoU 0.5
    inst[3, 0] = 3                 # scores 0: not counted
    assert gt_quality(inst, np.array([0.9, 0.8, 0.0]), gt) == pytest.approx(0.75)
    assert gt_quality(inst, np.array([0.0, 0.0, 0.0]), gt) == 0.0


def test_lost_instances_by_hand():
    """Six ground-truth instances on a 12 x 20 image: A and B (class 1) touch and share one
    detection; C and D (class 1) are 3 px apart and share another; E (class 2) shares C's;
    F (class 2) has a detection holding only a third of it."""
    from pipelines.stages.diagnose import lost_instances, no_losses
    gt = np.zeros((6, 12, 20), bool)
    gt[0, 0:4, 0:4] = True                 # A
    gt[1, 0:4, 4:8] = True                 # B, touching A
    gt[2, 6:10, 0:3] = True                # C
    gt[3, 6:10, 6:9] = True                # D, 3 px right of C
    gt[4, 6:10, 10:12] = True              # E, class 2, 1 px right of D
    gt[5, 0:3, 14:20] = True               # F
    classes = np.array([1, 1, 1, 1, 2, 2])
    inst = np.zeros((12, 20), np.int32)
    inst[0:4, 0:8] = 1                     # A + B
    inst[6:10, 0:12] = 2                   # C + D + E
    inst[0:3, 14:16] = 3                   # 6 of F's 18 pixels
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    got = lost_instances(inst, scores, gt, classes)
    assert got == {"found": 0, "missed": 1, "merged_touching": 2, "merged_apart": 2, "merged_other_class": 1}
    # a detection that scores 0 holds nothing: A and B are then missed too
    got = lost_instances(inst, np.array([0.0, 0.8, 0.7], np.float32), gt, classes)
    assert got["missed"] == 3 and got["merged_touching"] == 0
    # one detection per instance: all found
    perfect = np.zeros((12, 20), np.int32)
    for k, m in enumerate(gt, start=1):
        perfect[m] = k
    assert lost_instances(perfect, np.ones(6, np.float32), gt, classes)["found"] == 6
    assert lost_instances(perfect, np.ones(6, np.float32), gt[:0], classes[:0]) == no_losses()


@pytest.fixture(scope="module")
def diagnosed(tiny_data, tmp_path_factory):
    """``wsis diagnose`` on a fresh work dir: it runs make_cam .. irn_infer itself first."""
    work = tmp_path_factory.mktemp("diag") / "tiny"
    proc = wsis("diagnose", "--oracles", "cam,boundary,displacement,all,relations,instance_relations,cam+relations",
                "--limit", "6",
                "--figures", "2", *tiny_args(tiny_data, work), "--device", "cpu")
    return work, proc


def test_diagnose_command_writes_the_table(diagnosed):
    work, proc = diagnosed
    for stage in ("make_cam", "irn_infer"):
        assert json.loads((work / stage / "manifest.json").read_text())["status"] == "done"
    result = json.loads((work / "diagnose" / "oracles.json").read_text())
    assert result["images"] == 6
    assert result["order"] == ["baseline", "cam", "relations", "instance_relations", "boundary", "displacement",
                               "all", "cam+relations"]
    assert set(result["rows"]) == set(result["order"])
    for name, row in result["rows"].items():
        assert 0 <= row["mAP70"] <= row["mAP50"] <= 1, name
        assert row["under_segmented"] + row["over_segmented"] <= 1
        from pipelines.stages.diagnose import LOSSES
        assert all(0 <= row[k] <= 1 for k in LOSSES), name
    # an oracle boundary separates every pair of touching instances of one class
    assert result["rows"]["boundary"]["merged_touching"] <= result["rows"]["baseline"]["merged_touching"]
    assert result["rows"]["all"]["mAP50"] >= 0.9
    assert result["rows"]["all"]["mAP50"] >= result["rows"]["baseline"]["mAP50"]
    # the printed table is the JSON's
    assert f"{100 * result['rows']['all']['mAP50']:.1f}" in proc.stdout.split("\nall")[1].split("\n")[0]
    assert (work / "diagnose" / "oracles.txt").read_text().strip() in proc.stdout
    # the worst images of the baseline, lowest GT IoU first, each with its figure
    worst = result["worst_images"]
    assert len(worst) == 2 and worst[0]["gt_iou"] <= worst[1]["gt_iou"]
    assert worst[0]["gt_iou"] == min(result["baseline_gt_iou"].values())
    for w in worst:
        assert (work / "diagnose" / w["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_relation_oracle_retrains_irnet_on_ground_truth_labels(diagnosed, tiny_data):
    work, _ = diagnosed
    sub = work / "diagnose" / "relations"
    assert (sub / "train_cam").resolve() == (work / "train_cam").resolve()
    cfg = load_config("synthetic", TINY, ())
    ds = open_dataset("synthetic", cfg, tiny_data, None)
    from wsis.io import read_label_png
    image_id = ds.ids("train")[0]
    assert np.array_equal(read_label_png(sub / "ir_label" / f"{image_id}.png"),
                          oracles.oracle_relation_labels(ds.semantic_gt(image_id)))
    assert json.loads((sub / "irn_infer" / "manifest.json").read_text())["status"] == "done"
    # IRNet retrained, not the main one copied
    assert (sub / "train_irn" / "model.pt").read_bytes() != (work / "train_irn" / "model.pt").read_bytes()
    # instance labels: instance n is n, with the same band at every change, touching instances included
    instances, _, semantic = oracles.processing_ground_truth(ds, image_id)
    labels = read_label_png(work / "diagnose" / "instance_relations" / "ir_label" / f"{image_id}.png")
    assert np.array_equal(labels, oracles.oracle_relation_labels(instances.astype(np.uint8)))
    assert set(np.unique(labels)) <= set(range(len(ds.instance_gt(image_id).classes) + 1)) | {255}


def test_report_shows_the_diagnosis(diagnosed, tiny_data):
    work, _ = diagnosed
    wsis("run", "--stage", "ins_seg", *tiny_args(tiny_data, work), "--device", "cpu")
    wsis("report", *tiny_args(tiny_data, work), "--device", "cpu", timeout=900)
    html = (work / "report" / "index.html").read_text()
    assert "Oracle ablation" in html and "../diagnose/worst_01_" in html


def test_diagnose_skips_a_dataset_without_masks(data_copy, tmp_path):
    images = data_copy / "JPEGImages"
    names = sorted(p.name for p in images.glob("*.jpg"))[:4]
    csv = tmp_path / "labels.csv"
    csv.write_text("".join(f"{n},disc\n" for n in names))
    work = tmp_path / "work"
    proc = wsis("diagnose", "--dataset", "folder", "--data-root", images, "--labels", csv, "--config", TINY,
                "--work-dir", work)
    assert proc.returncode == 0
    assert "diagnose: skipped: dataset 'folder' has no ground-truth masks" in proc.stdout
    assert not work.exists()


def test_oracle_rows_parse():
    from pipelines.stages.diagnose import parse_oracles, replaced_inputs
    assert parse_oracles("all,cam") == ["baseline", "cam", "all"]
    assert parse_oracles("displacement+cam, boundary") == ["baseline", "boundary", "displacement+cam"]
    assert replaced_inputs("all") == ("cam", "boundary", "displacement")
    assert replaced_inputs("cam+relations") == ("cam", "relations")
    for bad in ("baseline", "cam,walk", "cam+", "relations+instance_relations", ""):
        with pytest.raises(ConfigError, match="--oracles"):
            parse_oracles(bad)


def test_diagnose_rejects_an_unknown_oracle(tiny_data, tmp_path):
    proc = wsis("diagnose", "--oracles", "cam,walk", *tiny_args(tiny_data, tmp_path / "w"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("wsis: error: --oracles cam,walk: expected")
