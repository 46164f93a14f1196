"""The review loop against the real annotation clients (issue 20, point 10): Label Studio,
started on 127.0.0.1 and driven through its REST API, and datumaro, the dataset library CVAT
imports and exports COCO 1.0 with. .ci/run installs both into their own virtual environment
(WSIS_CLIENTS_VENV, by default <repo>/.venv-clients), never into the project's; without it
these tests skip, naming it. The truth each step is checked against is what the client itself
holds (its API's tasks, its own rasterisation of its polygons) and the pseudo-labels wsis
exported (export/pseudo_labels.json, exact RLE masks)."""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import REVIEW_PARTS_OFF, ROOT, tiny_args, wsis
from test_review import rasterise
from test_review_loop import NAMES, poly_mask, run_copy, stored  # noqa: F401  (run_copy: a fixture)
from wsis.coco import rle_decode
from wsis.data.synthetic import shape_mask
from wsis.review.polygons import mask_to_polygons

CLIENTS = Path(os.environ.get("WSIS_CLIENTS_VENV") or ROOT / ".venv-clients")
DATUMARO_HELPER = ROOT / "tests" / "clients" / "datumaro_roundtrip.py"
LS_TEMPLATE = CLIENTS / "ls-template" / "label_studio.sqlite3"   # migrated once by .ci/run
LS_START_TIMEOUT = 600      # s: a fresh database migrates for a minute or more on 2 busy cores


def client_python(module: str) -> Path:
    """The clients venv's python, or skip naming the venv when ``module`` is not importable."""
    python = CLIENTS / "bin" / "python"
    why = f"{module} is not installed in {CLIENTS} (.ci/run installs it there; WSIS_CLIENTS_VENV names another venv)"
    if not python.is_file():
        pytest.skip(why)
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"{why}: {probe.stderr.strip().splitlines()[-1:]}")
    return python


@pytest.fixture(scope="session")
def label_studio_python():
    """Session-scoped, and first in the tests' arguments, so that a missing venv skips before
    the tiny run (a session fixture too) is built for nothing."""
    return client_python("label_studio")


@pytest.fixture(scope="session")
def datumaro_python():
    return client_python("datumaro")


def pseudo_labels(work) -> dict:
    """{wsis id: (h, w, [(class name, mask)])}: the instances wsis exported, from its COCO export."""
    doc = json.loads((work / "export" / "pseudo_labels.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    out = {im["id"]: (im["wsis_id"], im["height"], im["width"], []) for im in doc["images"]}
    for a in doc["annotations"]:
        out[a["image_id"]][3].append((names[a["category_id"]], mask_utils.decode(a["segmentation"]).astype(bool)))
    return {i: (h, w, anns) for i, h, w, anns in out.values()}


def same_instances(got, want) -> bool:
    """Equal as multisets of (class name, mask): order is nobody's promise."""
    left = list(want)
    for name, mask in got:
        k = next((k for k, (n, m) in enumerate(left) if n == name and np.array_equal(m, mask)), None)
        if k is None:
            return False
        left.pop(k)
    return not left


def stored_instances(work, image_id, names):
    return [(names[i["class"]], rle_decode(i["segmentation"])) for i in stored(work)[image_id]["instances"]]


def merge_metrics(tiny_data, work) -> dict:
    """merge_review's report with issue 27's upstream parts off: the reviews are compared with the
    pseudo-labels the reviewer saw, not with those of a pipeline retrained on them."""
    wsis("run", "--stage", "merge_review", *tiny_args(tiny_data, work, *REVIEW_PARTS_OFF))
    return json.loads((work / "merge_review" / "metrics.json").read_text())["train"]


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def expected_merge(edits, pseudo) -> dict:
    """merge_review's report for ``edits`` {wsis id: [(class name, mask)] the reviewer left},
    worked out here: each edit deletes one pseudo-instance and adds one of a class the image had
    none of; the instances kept are matched to their pseudo-instance (same class, best IoU)."""
    ious, kept = [], 0
    for image_id, instances in edits.items():
        for name, mask in instances:
            best = max((iou(m, mask) for n, m in pseudo[image_id][2] if n == name), default=0.0)
            if best > 0:
                ious.append(best)
                kept += 1
    want = {"reviewed_images": len(edits), "instances_added": len(edits), "instances_removed": len(edits),
            "instances_matched": kept}
    if ious:
        want["mean_iou_pseudo_vs_reviewed"] = pytest.approx(float(np.mean(ious)), abs=1e-9)
    return want


def holed_ring(h, w) -> list[float]:
    """The reviewer's new object: a ring around the image centre (the hole's centre pixel is
    (h // 2, w // 2)), drawn as one polygon whose hole is kept by a keyhole cut (flat x, y in
    pixels)."""
    (ring,) = mask_to_polygons(shape_mask("ring", h, w, h // 2, w // 2, 11, 0.0))
    assert not poly_mask(ring, h, w)[h // 2, w // 2] and poly_mask(ring, h, w).sum() > 100
    return ring


def absent_class(names, pseudo_instances) -> str:
    """A class the image has no pseudo-instance of: an added object matches nothing."""
    return next(n for n in names if n not in {name for name, _ in pseudo_instances})


# ------------------------------------------------------------------------------ Label Studio
class LabelStudio:
    def __init__(self, url, token):
        self.url, self.token = url, token

    def call(self, method, path, body=None, raw=False, auth=True):
        """(status, bytes) when ``raw``, else the parsed JSON (an HTTP error is raised)."""
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Token {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            if not raw:
                raise AssertionError(f"Label Studio {method} {path}: HTTP {e.code}: {e.read()[:2000]!r}") from None
            status, payload = e.code, e.read()
        return (status, payload) if raw else json.loads(payload or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start_label_studio(label_studio_python, tmp_path):
    """start(document root) -> LabelStudio: a server on 127.0.0.1 with a throwaway data dir
    (a copy of the migrated empty database .ci/run keeps, when there is one), a user with a
    preset token, local files served from the document root, nothing sent anywhere (no version
    check, no Sentry, no analytics). Always stopped afterwards."""
    procs = []

    def start(document_root: Path) -> LabelStudio:
        data = tmp_path / "label-studio"
        data.mkdir()
        if LS_TEMPLATE.is_file():
            shutil.copy(LS_TEMPLATE, data / LS_TEMPLATE.name)
        token = secrets.token_hex(20)
        port = free_port()
        env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data), LABEL_STUDIO_USERNAME="reviewer@wsis.test",
                   LABEL_STUDIO_PASSWORD=secrets.token_hex(12), LABEL_STUDIO_USER_TOKEN=token,
                   LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
                   LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
                   LATEST_VERSION_CHECK="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false",
                   HOME=str(tmp_path), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        log = open(tmp_path / "label-studio.log", "wb")
        proc = subprocess.Popen([CLIENTS / "bin" / "label-studio", "start", "--no-browser", "--internal-host",
                                 "127.0.0.1", "-p", str(port), "--data-dir", str(data),
                                 "--enable-legacy-api-token"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
        procs.append((proc, log))
        server = LabelStudio(f"http://127.0.0.1:{port}", token)
        deadline = time.monotonic() + LS_START_TIMEOUT
        while True:
            # Label Studio moves to another port when the one asked for was taken meanwhile
            said = re.search(rb"Starting development server at (http://127\.0\.0\.1:\d+)/",
                             (tmp_path / "label-studio.log").read_bytes())
            if said:
                server.url = said.group(1).decode()
            if proc.poll() is not None:
                raise AssertionError(f"Label Studio exited ({proc.returncode}):\n{tail(tmp_path / 'label-studio.log')}")
            try:
                if server.call("GET", "/health", raw=True, auth=False)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Label Studio did not answer in {LS_START_TIMEOUT} s:\n"
                                     f"{tail(tmp_path / 'label-studio.log')}")
            time.sleep(1)
        return server

    yield start
    for proc, log in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def tail(path, n=40) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])


def ls_instances(regions, w, h):
    """[(class name, mask)] of Label Studio polygon regions: regions wsis<n>_<k> are the parts
    of one instance, any other region an instance of its own (as the README says)."""
    groups = {}
    for r in regions:
        key = r["id"].split("_")[0] if r["id"].startswith("wsis") else r["id"]
        name, mask = groups.get(key, (r["value"]["polygonlabels"][0], np.zeros((h, w), bool)))
        groups[key] = (name, mask | rasterise(r["value"]["points"], w, h))
    return list(groups.values())


def test_label_studio_round_trip(label_studio_python, tiny_data, run_copy, start_label_studio,  # noqa: F811
                                 tmp_path):
    tasks_path = tmp_path / "tasks.json"
    out = wsis("review", "export", "--format", "labelstudio", "--out", tasks_path,
               *tiny_args(tiny_data, run_copy)).stdout
    exported = json.loads(tasks_path.read_text())
    config = tasks_path.with_name("tasks_config.xml").read_text()
    # the README's set-up, from the lines the export prints
    line = next(x for x in out.splitlines() if "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=" in x)
    document_root = Path(line.split("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=")[1].split(",")[0])
    storage = Path(line.split("add a Local Files storage with path ")[1].split(" (")[0])
    assert document_root == tiny_data.resolve() and storage == document_root / "JPEGImages"
    started = time.monotonic()
    ls = start_label_studio(document_root)
    booted = time.monotonic()

    names = NAMES
    project = ls.call("POST", "/api/projects", {"title": "wsis review", "label_config": config})
    assert project["parsed_label_config"]["label"]["labels"] == names      # Label Studio read the config
    pid = project["id"]
    some_url = exported[0]["data"]["image"]
    assert ls.call("GET", some_url, raw=True)[0] == 404     # no storage yet: Label Studio serves nothing
    status, body = ls.call("POST", "/api/storages/localfiles", {"project": pid, "path": str(document_root),
                                                               "title": "the document root"}, raw=True)
    assert status == 400, body                              # the README: not the document root itself
    ls.call("POST", "/api/storages/localfiles", {"project": pid, "path": str(storage), "title": "images"})
    report = ls.call("POST", f"/api/projects/{pid}/import", exported)
    assert (report["task_count"], report["prediction_count"]) == (len(exported), len(exported))

    # the regions Label Studio holds are the instances wsis exported
    pseudo = pseudo_labels(run_copy)
    tasks = ls.call("GET", f"/api/tasks?project={pid}&page_size=1000&fields=all")["tasks"]
    assert sorted(t["data"]["wsis_id"] for t in tasks) == sorted(pseudo)
    for task in tasks:
        h, w, want = pseudo[task["data"]["wsis_id"]]
        (prediction,) = task["predictions"]
        assert same_instances(ls_instances(prediction["result"], w, h), want), task["data"]["wsis_id"]
    # an image, through the URL the task holds
    status, image = ls.call("GET", tasks[0]["data"]["image"], raw=True)
    assert status == 200 and image == (storage / f"{tasks[0]['data']['wsis_id']}.jpg").read_bytes()

    # the reviewer deletes an instance (every region of it) and adds one, then submits
    task = max(tasks, key=lambda t: (len(pseudo[t["data"]["wsis_id"]][2]), -t["id"]))
    image_id = task["data"]["wsis_id"]
    h, w, want = pseudo[image_id]
    assert want, "the tiny run exported no instance at all"
    regions = [r for r in task["predictions"][0]["result"] if not r["id"].startswith("wsis1_")]
    ring = np.reshape(holed_ring(h, w), (-1, 2)) * [100 / w, 100 / h]        # pixels -> percent
    added = {"id": "Rk2Pq9Zx1A", "type": "polygonlabels", "from_name": "label", "to_name": "image",
             "original_width": w, "original_height": h, "image_rotation": 0,
             "value": {"points": ring.tolist(), "closed": True, "polygonlabels": [absent_class(names, want)]}}
    ls.call("POST", f"/api/tasks/{task['id']}/annotations", {"result": regions + [added], "was_cancelled": False})
    reviewed = ls_instances(regions + [added], w, h)
    assert len(reviewed) == len(want) and not reviewed[-1][1][h // 2, w // 2]      # the new ring has its hole

    # exported through the API (every task), imported into wsis, merged
    exports = {}
    for kind, name in (("JSON", "project-export.json"), ("COCO", "project-export-coco.zip")):
        status, payload = ls.call("GET", f"/api/projects/{pid}/export?exportType={kind}&download_all_tasks=true",
                                  raw=True)
        assert status == 200, payload[:500]
        exports[kind] = tmp_path / name
        exports[kind].write_bytes(payload)
    coco = json.loads(zipfile.ZipFile(exports["COCO"]).read("result.json"))
    assert len(coco["images"]) == len(exported)            # "all tasks": the unannotated ones too
    assert len(json.loads(exports["JSON"].read_text())) == len(exported)
    for kind, skipped in (("JSON", "tasks without a finished annotation"), ("COCO", "images without annotations")):
        shutil.rmtree(run_copy / "review", ignore_errors=True)
        out = wsis("review", "import", exports[kind], *tiny_args(tiny_data, run_copy)).stdout
        assert f"imported 1 reviewed images ({len(reviewed)} instances)" in out, (kind, out)
        assert f"{len(exported) - 1} {skipped} skipped as not reviewed" in out, (kind, out)
        assert set(stored(run_copy)) == {image_id}
        assert same_instances(stored_instances(run_copy, image_id, names), reviewed), kind
        metrics = merge_metrics(tiny_data, run_copy)
        want_metrics = expected_merge({image_id: reviewed}, pseudo)
        assert {k: metrics.get(k) for k in want_metrics} == want_metrics, (kind, metrics)
    print(f"\nLabel Studio: started in {booted - started:.0f} s, round trip {time.monotonic() - booted:.0f} s")


# ---------------------------------------------------------------------------------- datumaro
def datumaro(python, *args):
    proc = subprocess.run([python, DATUMARO_HELPER, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, f"datumaro {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"


def datumaro_masks(python, zip_path, tmp_path) -> dict:
    """{item id: (subset, h, w, [(class name, mask)], [COCO annotation ids])} as datumaro reads the zip."""
    out = tmp_path / f"{Path(zip_path).stem}.npz"
    datumaro(python, "masks", zip_path, out)
    z = np.load(out)
    return {m["id"]: (m["subset"], m["height"], m["width"], list(zip(m["labels"], z[f"masks_{k}"])), m["ann_ids"])
            for k, m in enumerate(json.loads(str(z["meta"])))}


def test_cvat_zip_through_datumaro(datumaro_python, tiny_data, run_copy, tmp_path):  # noqa: F811
    python = datumaro_python
    started = time.monotonic()
    names = NAMES
    cvat = tmp_path / "task_1_review.zip"
    wsis("review", "export", "--format", "cvat", "--out", cvat, *tiny_args(tiny_data, run_copy))
    doc = json.loads(zipfile.ZipFile(cvat).read("annotations/instances_default.json"))
    stem = {Path(im["file_name"]).stem: im["wsis_id"] for im in doc["images"]}   # datumaro's item id: the stem

    # what CVAT would load is what wsis exported
    pseudo = pseudo_labels(run_copy)
    seen = datumaro_masks(python, cvat, tmp_path)
    assert sorted(stem[i] for i in seen) == sorted(pseudo)
    for item, (subset, h, w, instances, _) in seen.items():
        assert subset == "default" and (h, w) == pseudo[stem[item]][:2]
        assert same_instances(instances, pseudo[stem[item]][2]), item

    # edits: delete one exported annotation of an image, add an object of a class it has none of
    by_size = sorted((i for i in seen if seen[i][3]), key=lambda i: (-len(seen[i][3]), i))
    assert len(by_size) >= 2, "the tiny run exported instances on fewer than 2 images"
    a, b = by_size[:2]

    def edit(item, points):
        return {"delete": seen[item][4][:1],
                "add": {item: [{"label": absent_class(names, seen[item][3]), "points": points}]}}
    edit_a, edit_b = edit(a, holed_ring(*seen[a][1:3])), edit(b, [30, 30, 46, 30, 38, 44])
    with_anns = sum(bool(v[3]) for v in seen.values())
    zips = {}
    # one subset, as CVAT exports a task; then two, as it exports a task with subsets
    subsets = {item: ("train", "val")[k % 2] for k, item in enumerate(sorted(seen))}
    subsets.update({a: "train", b: "val"})
    for kind, edits in (("default", edit_a),
                        ("subsets", {"delete": edit_a["delete"] + edit_b["delete"],
                                     "add": {**edit_a["add"], **edit_b["add"]}, "subsets": subsets})):
        (tmp_path / f"{kind}.json").write_text(json.dumps(edits))
        zips[kind] = tmp_path / f"task_1_{kind}_coco.zip"
        datumaro(python, "edit", cvat, tmp_path / f"{kind}.json", zips[kind])
    members = sorted(n for n in zipfile.ZipFile(zips["subsets"]).namelist() if n.startswith("annotations/"))
    assert members == ["annotations/instances_train.json", "annotations/instances_val.json"]

    for kind, edited in (("default", [a]), ("subsets", [a, b])):
        truth = datumaro_masks(python, zips[kind], tmp_path)      # what the reviewer's zip holds, says datumaro
        reviewed = {stem[i]: truth[i][3] for i in edited}
        for i in edited:
            assert len(truth[i][3]) == len(seen[i][3])           # one deleted, one added
        h, w = seen[a][1:3]
        assert sum(not m[h // 2, w // 2] and m.sum() > 100 for n, m in truth[a][3]
                   if n == edit_a["add"][a][0]["label"]) == 1      # a's new ring kept its hole
        shutil.rmtree(run_copy / "review", ignore_errors=True)
        out = wsis("review", "import", zips[kind], *tiny_args(tiny_data, run_copy)).stdout
        assert f"imported {len(edited)} reviewed images " in out, (kind, out)
        # the images nobody edited came back through datumaro as exported: not reviewed
        assert f"{with_anns - len(edited)} images with their exported pseudo-labels unchanged skipped" in out, out
        empty = len(seen) - with_anns
        assert (f"{empty} images without annotations skipped" in out) == (empty > 0), out
        assert set(stored(run_copy)) == set(reviewed)
        for image_id, instances in reviewed.items():
            assert same_instances(stored_instances(run_copy, image_id, names), instances), (kind, image_id)
        metrics = merge_metrics(tiny_data, run_copy)
        want = expected_merge(reviewed, pseudo)
        assert {k: metrics.get(k) for k in want} == want, (kind, metrics)
    print(f"\ndatumaro round trip: {time.monotonic() - started:.0f} s")
