"""The real model server (`unimedvl serve`, KServe) on 127.0.0.1: v1 and v2 (tritonclient, JSON and
binary tensors) for every task, every malformed-request class, 504 / 429, health during a long
generate, and what the logs must never hold."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.serve_helpers import Server, make_tiny_model, png_bytes

PHI_QUESTION = "Is there a nodule near the scar of Mrs Zebrafinch?"

LIMITS = {
    "max_payload_bytes": 400_000,
    "max_pixels": 200 * 200,
    "max_question_tokens": 48,
    "max_steps": 4000,          # lets one request run long enough to time out
    "default_steps": 2,
    "default_new_tokens": 4,
    "max_new_tokens": 16,
    "request_timeout_s": 4.0,
    "queue_length": 2,
    "max_instances": 4,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    folder = make_tiny_model(root / "model")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"serve": LIMITS}))
    srv = Server(str(folder), params)
    yield srv
    srv.stop()


def v1(server, instances, **kw):
    return httpx.post(f"{server.url}/v1/models/unimedvl:predict", json={"instances": instances}, timeout=60, **kw)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def check_png(data: bytes, task: str) -> None:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.size == (64, 64)
    assert im.text["unimedvl:synthetic"] == "true" and "Synthetic" in im.text["Description"]
    assert im.text["unimedvl:task"] == task


def test_v1_every_task(server):
    img = png_bytes(size=(72, 96), mode="RGB")
    r = v1(server, [
        {"task": "vqa", "image": b64(img), "question": PHI_QUESTION},
        {"task": "report", "image": b64(png_bytes(bits16=True))},
        {"task": "explain", "image": b64(img), "question": "Where is the effusion?"},
        {"task": "generate", "prompt": "chest x-ray, right pleural effusion", "steps": 2, "seed": 3},
    ])
    assert r.status_code == 200, r.text
    vqa, report, explain, gen = r.json()["predictions"]
    assert isinstance(vqa["answer"], str) and vqa["task"] == "vqa"
    assert set(report) >= {"answer", "findings", "impression"}
    heat = np.array(explain["heatmap"])
    assert heat.shape == (72, 96) and 0 <= heat.min() and heat.max() <= 1 and heat.max() > 0
    check_png(base64.b64decode(gen["image"]["b64"]), "generate")
    r = v1(server, [{"task": "edit", "image": b64(png_bytes(mode="CMYK")), "instruction": "add a nodule", "steps": 2}])
    assert r.status_code == 200, r.text
    check_png(base64.b64decode(r.json()["predictions"][0]["image"]["b64"]), "edit")


def test_generate_depends_on_seed_and_is_repeatable(server):
    def draw(seed):
        r = v1(server, [{"task": "generate", "prompt": "brain MRI", "steps": 2, "seed": seed}])
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]["image"]["b64"]

    a, b, c = draw(1), draw(1), draw(2)
    assert a == b and a != c


def test_dicom_in_and_dicom_out(server):
    import pydicom
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    r = v1(server, [{"task": "vqa", "image": b64(ct), "question": "What modality is this?"},
                    {"task": "generate", "prompt": "chest", "format": "dicom", "steps": 2}])
    assert r.status_code == 200, r.text
    ds = pydicom.dcmread(io.BytesIO(base64.b64decode(r.json()["predictions"][1]["image"]["b64"])))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and "Synthetic" in ds.DerivationDescription
    assert ds.ConversionType == "SYN" and ds.pixel_array.shape[:2] == (64, 64)
    # The ingest reader runs at the door: its rules apply (burned-in annotations are refused).
    burned = pydicom.dcmread(io.BytesIO(ct))
    burned.BurnedInAnnotation = "YES"
    buf = io.BytesIO()
    burned.save_as(buf)
    r = v1(server, [{"task": "vqa", "image": b64(buf.getvalue()), "question": "What modality is this?"}])
    assert r.status_code == 422 and "BurnedInAnnotation" in r.json()["error"] and r.json()["field"] == "image"


def _triton(server):
    import tritonclient.http as th

    return th, th.InferenceServerClient(server.url.removeprefix("http://"), connection_timeout=60, network_timeout=60)


def _bytes_input(th, name, value: bytes | str, binary: bool):
    inp = th.InferInput(name, [1], "BYTES")
    data = value.encode() if isinstance(value, str) else value
    inp.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=binary)
    return inp


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_tritonclient_every_task(server, binary):
    th, client = _triton(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("unimedvl")
    meta = client.get_model_metadata("unimedvl")
    assert {t["name"] for t in meta["inputs"]} >= {"task", "image", "question", "prompt", "instruction", "steps",
                                                      "guidance", "seed", "max_new_tokens"}
    assert {(t["name"], t["datatype"]) for t in meta["outputs"]} == {("answer", "BYTES"), ("image", "BYTES"), ("heatmap", "FP32")}
    # JSON-only requests need an explicit JSON content type against KServe (see FACTS.md).
    headers = None if binary else {"Content-Type": "application/json"}
    img = png_bytes(size=(64, 80))
    cases = {
        "vqa": {"image": img, "question": "Is the heart enlarged?"},
        "report": {"image": img},
        "explain": {"image": img, "question": "Is there a nodule?"},
        "generate": {"prompt": "brain MRI with a lesion"},
        "edit": {"image": img, "instruction": "remove the effusion"},
    }
    for task, fields in cases.items():
        if not binary and "image" in fields:  # JSON tensors are text: the file goes as base64
            fields = {**fields, "image": base64.b64encode(fields["image"])}
        inputs = [_bytes_input(th, "task", task, binary)]
        inputs += [_bytes_input(th, k, v, binary) for k, v in fields.items()]
        if task in ("generate", "edit"):
            steps = th.InferInput("steps", [1], "INT32")
            steps.set_data_from_numpy(np.array([2], dtype=np.int32), binary_data=binary)
            inputs.append(steps)
            outputs = [th.InferRequestedOutput("image", binary_data=binary)]
        else:
            outputs = [th.InferRequestedOutput("answer", binary_data=binary)]
            if task == "explain":
                outputs.append(th.InferRequestedOutput("heatmap", binary_data=binary))
        res = client.infer("unimedvl", inputs, outputs=outputs, headers=headers)
        assert res.get_response()["id"], task
        if task in ("generate", "edit"):
            data = res.as_numpy("image")[0]
            png = data if binary else base64.b64decode(data)
            check_png(png, task)
        else:
            assert isinstance(res.as_numpy("answer")[0], (bytes, str))  # JSON mode decodes to str
        if task == "explain":
            heat = res.as_numpy("heatmap")
            assert heat.shape == (64, 80) and heat.dtype == np.float32 and heat.max() > 0


def _v2_json(server, inputs, **kw):
    return httpx.post(f"{server.url}/v2/models/unimedvl/infer", json={"inputs": inputs}, timeout=60, **kw)


def _t(name, data, datatype="BYTES", shape=None):
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


GOOD = {"task": "vqa", "image": None, "question": "Is there a nodule?"}
TINY_PNG = png_bytes(size=(4, 4))
HUGE_PNG = png_bytes(size=(256, 256))  # 65,536 px > max_pixels, under the payload limit


@pytest.mark.parametrize("body, status, field, instance", [
    (b"{not json", 400, None, None),
    ({"instances": {"task": "vqa"}}, 400, "instances", None),
    ({"instances": []}, 400, "instances", None),
    ({"rows": []}, 400, "instances", None),
    ({"instances": [{"task": "dance"}]}, 422, "task", 0),
    ({"instances": [{"task": "vqa", "question": "Is there a nodule?"}]}, 422, "image", 0),
    ({"instances": ["GOOD", {"task": "vqa", "image": {"b64": "@@@not base64@@@"}, "question": "q"}]}, 400, "image", 1),
    ({"instances": ["GOOD", "GOOD", {"task": "vqa", "image": b64(b"plain text, no image"), "question": "q"}]}, 422, "image", 2),
    ({"instances": [{"task": "vqa", "image": b64(TINY_PNG), "question": "q"}]}, 422, "image", 0),
    ({"instances": [{"task": "vqa", "image": b64(HUGE_PNG), "question": "q"}]}, 422, "image", 0),
    ({"instances": [{"task": "vqa", "image": "GOODIMG", "question": "word " * 200}]}, 422, "question", 0),
    ({"instances": [{"task": "generate", "prompt": "chest", "steps": 10**6}]}, 422, "steps", 0),
    ({"instances": [{"task": "generate", "prompt": "chest", "steps": "many"}]}, 400, "steps", 0),
    ({"instances": [{"task": "vqa", "image": "GOODIMG", "question": "q", "colour": "red"}]}, 422, "colour", 0),
    ({"instances": ["GOOD"] * 5}, 422, "instances", None),
    ({"instances": [{"task": "vqa", "image": b64(b"x" * 500_000), "question": "q"}]}, 413, "body", None),
], ids=["broken-json", "instances-not-list", "instances-empty", "no-instances", "unknown-task", "missing-field",
        "bad-base64", "not-an-image", "smaller-than-patch", "over-pixel-limit", "question-too-long", "too-many-steps",
        "steps-not-int", "unknown-field", "too-many-instances", "payload-too-large"])
def test_v1_malformed_gets_its_4xx(server, body, status, field, instance):
    good_img = b64(png_bytes())

    def fill(x):
        if x == "GOOD":
            return {**GOOD, "image": good_img}
        if isinstance(x, dict):
            return {k: (good_img if v == "GOODIMG" else v) for k, v in x.items()}
        return x

    if isinstance(body, bytes):
        r = httpx.post(f"{server.url}/v1/models/unimedvl:predict", content=body,
                       headers={"content-type": "application/json"}, timeout=60)
    else:
        if isinstance(body.get("instances"), list):
            body = {"instances": [fill(x) for x in body["instances"]]}
        r = httpx.post(f"{server.url}/v1/models/unimedvl:predict", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["error"]
    if field:
        assert err["field"] == field, err
    if instance is not None:
        assert err["instance"] == instance, err
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


@pytest.mark.parametrize("inputs, status, field", [
    ([_t("task", ["vqa"]), _t("question", ["q"])], 422, "image"),
    ([_t("task", ["vqa"]), _t("image", ["x"]), _t("question", ["q"]), _t("steps", [1.5], "FP32")], 400, "steps"),
    ([_t("task", ["generate"]), _t("prompt", ["p"], shape=[1, 1])], 400, "prompt"),
    ([_t("task", ["generate"]), _t("pixels", ["p"])], 400, "pixels"),
    ([_t("prompt", ["p"])], 422, "task"),
    ([_t("task", ["generate", "generate"]), _t("prompt", ["a", "b", "c"])], 400, "prompt"),
], ids=["missing-image", "wrong-datatype", "wrong-shape", "unknown-tensor", "no-task", "ragged-batch"])
def test_v2_malformed_gets_its_4xx(server, inputs, status, field):
    r = _v2_json(server, inputs)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_other_client_mistakes(server):
    r = httpx.post(f"{server.url}/v2/models/unimedvl/infer", content=b"{broken", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "broken" not in r.text
    r = httpx.post(f"{server.url}/v1/models/unimedvl:predict", content=b'{"instances": []}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["field"] == "content-type"
    r = httpx.post(f"{server.url}/v1/models/nosuchmodel:predict", json={"instances": [{"task": "vqa"}]})
    assert r.status_code == 404
    r = _v2_json(server, [_t("task", ["generate"]), _t("prompt", ["p"])])
    assert r.status_code == 200


def test_timeout_queue_full_and_health_during_long_generate(server):
    long = {"task": "generate", "prompt": "chest", "steps": 4000}
    with cf.ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(v1, server, [long]) for _ in range(2)]
        time.sleep(1.0)
        # The model worker is busy; the event loop still answers health at once.
        t0 = time.monotonic()
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 2.0
        extra = v1(server, [long])  # the queue (2) is full
        assert extra.status_code == 429 and "queue" in extra.json()["error"]
        codes = sorted(f.result().status_code for f in slow)
    assert codes == [504, 504], codes
    # After the timeouts the worker is free again.
    r = v1(server, [{"task": "generate", "prompt": "chest", "steps": 2}])
    assert r.status_code == 200, r.text


def test_metrics_per_task_and_logs_hold_no_question_text(server):
    assert v1(server, [{"task": "vqa", "image": b64(png_bytes()), "question": PHI_QUESTION}]).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    for task in ("vqa", "generate"):
        assert f'unimedvl_request_seconds_count{{task="{task}"}}' in text
    assert 'unimedvl_requests_total{code="422",task="vqa"}' in text
    assert 'unimedvl_requests_total{code="422",task="invalid"}' in text  # unknown task, missing field...
    assert "Zebrafinch" not in text
    log = server.log.read_text()
    assert "Zebrafinch" not in log and "nodule near the scar" not in log
    assert base64.b64encode(png_bytes())[:40].decode() not in log


def test_listens_on_loopback_only(server):
    import psutil

    proc = psutil.Process(server.proc.pid)
    conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections(kind="inet")
    listening = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening  # no 0.0.0.0, no gRPC on [::]
