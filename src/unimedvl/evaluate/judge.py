"""The `judge` step: an independent finding classifier and feature extractor for generated images.

Generated images cannot be scored against a reference image (a prompt has many right answers), so a
separate network decides whether a generated image shows a finding (faithfulness) and embeds images
for the domain Frechet distance. It is trained only on phantoms from its own seed (labels exact) and
the QC'd real train split's images (finding-free negatives for the phantom vocabulary, so it has seen
the real domains too), never on generated images, so it cannot learn the generator's artefacts.

A small CNN (PyTorch; no pretrained backbone can be downloaded here): four conv blocks, global average
pooling, a `feature_dim` embedding (the Frechet feature space), one logit per finding. Held-out AUROC
per finding (scikit-learn's `roc_auc_score`) is computed within the finding's family (chest findings
on chest phantoms, lesions on brain phantoms), where the task is hard, and stored beside the weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import JudgeConfig, Params
from ..data.phantoms import render_from_labels, sample_brain_labels, sample_chest_labels
from ..data.phantoms.brain import CONTRASTS
from .schema import FINDINGS

WEIGHTS = "judge.safetensors"
CONFIG = "judge.json"


class JudgeError(ValueError):
    pass


class JudgeNet(nn.Module):
    def __init__(self, width: int = 16, feature_dim: int = 32, n_out: int = len(FINDINGS)):
        super().__init__()
        # one conv per scale keeps a CPU epoch over thousands of 64 px images to seconds; four poolings
        # still give every 3 px finding a receptive field that covers it and its surroundings
        chans = [2, width, width * 2, width * 4, width * 4]
        blocks = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            blocks += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*blocks)
        self.embed = nn.Linear(2 * chans[-1], feature_dim)
        self.head = nn.Linear(feature_dim, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # a second channel with the local contrast (image minus its 7 px box blur): nodules and lesions
        # are a few pixels across and faint against ribs and gyri, so the first layer gets them for free
        hp = x - F.avg_pool2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
        h = self.body(torch.cat([x, 4 * hp], dim=1))
        # mean and max pooling: a small finding changes few pixels, which a mean alone washes out
        return self.embed(torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


def to_input(images: torch.Tensor | np.ndarray, resolution: int) -> torch.Tensor:
    """Any image batch -> [N, 1, R, R] in [0, 1]: uint8 [N, H, W] (phantoms) or float [N, C, H, W] in
    [-1, 1] (the model's output), grey by channel mean."""
    if isinstance(images, np.ndarray):
        t = torch.from_numpy(images)
        t = t.float() / 255.0 if images.dtype == np.uint8 else t.float()
        if t.ndim == 3:
            t = t[:, None]
    else:
        t = (images.float() + 1) / 2
    if t.shape[1] != 1:
        t = t.mean(dim=1, keepdim=True)
    if t.shape[-2:] != (resolution, resolution):
        t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp(0, 1)


@dataclass
class Judge:
    net: JudgeNet
    cfg: JudgeConfig
    thresholds: dict[str, float]
    sha256: str = ""

    @torch.no_grad()
    def probabilities(self, images) -> np.ndarray:
        """[N, len(FINDINGS)] probabilities."""
        x = to_input(images, self.cfg.resolution)
        return torch.cat([torch.sigmoid(self.net(x[i:i + 256])) for i in range(0, len(x), 256)]).numpy()

    def verdicts(self, images) -> np.ndarray:
        """[N, len(FINDINGS)] booleans: the finding is shown (probability above its held-out threshold)."""
        p = self.probabilities(images)
        return p >= np.array([self.thresholds[f] for f in FINDINGS])

    @torch.no_grad()
    def features(self, images) -> np.ndarray:
        x = to_input(images, self.cfg.resolution)
        return torch.cat([self.net.features(x[i:i + 256]) for i in range(0, len(x), 256)]).double().numpy()


def phantom_set(n: int, seed: int, image_size: int, min_visible_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 images [n, S, S], labels [n, 6] in {0, 1}, family [n] 0 chest / 1 brain) from `seed`."""
    @dataclass(frozen=True)
    class S:
        image_size: int
        min_visible_px: float

    s = S(image_size, min_visible_px)
    rng = np.random.default_rng([seed, 0x10D6E])
    imgs, labels, fam = [], [], []
    for i in range(n):
        # 2 of 3 chest: five chest findings, but a lesion must be told apart in four contrasts
        if i % 3:
            lab = sample_chest_labels(rng, s, need_finding=bool(rng.random() < 0.3))
        else:
            lab = sample_brain_labels(rng, s, need_finding=bool(rng.random() < 0.3), contrast=str(rng.choice(CONTRASTS)))
        imgs.append(render_from_labels(lab))
        present = {f["type"] for f in lab["findings"]}
        labels.append([float(f in present) for f in FINDINGS])
        fam.append(0 if lab["family"] == "chest" else 1)
    return np.stack(imgs), np.array(labels, dtype=np.float32), np.array(fam)


def real_train_images(data_dir: Path | None, limit: int, resolution: int, seed: int) -> np.ndarray:
    """Up to `limit` QC'd real (non-phantom) train images as uint8 [n, R, R] (grey)."""
    if data_dir is None or limit <= 0:
        return np.zeros((0, resolution, resolution), dtype=np.uint8)
    import pyarrow.compute as pc

    from ..data.shards import read_table
    from ..train.data import decode_png

    t = read_table(Path(data_dir), columns=["split", "dataset", "input_img", "output_img"])
    t = t.filter(pc.and_(pc.equal(t["split"], "train"), pc.not_equal(t["dataset"], "phantom")))
    blobs = []
    seen: set[bytes] = set()
    for ins, outs in zip(t["input_img"].to_pylist(), t["output_img"].to_pylist(), strict=True):
        for img in (ins or []) + (outs or []):
            if img["bytes"] not in seen:
                seen.add(img["bytes"])
                blobs.append(img["bytes"])
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(blobs))[:limit]
    out = []
    for i in sorted(pick):
        arr = torch.from_numpy(decode_png(blobs[int(i)]).mean(axis=2))[None, None]
        arr = F.interpolate(arr, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        out.append((arr[0, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    return np.stack(out) if out else np.zeros((0, resolution, resolution), dtype=np.uint8)


def in_family(family: np.ndarray) -> np.ndarray:
    """[n, findings] mask: each finding scored among the images of its own family (family 1: brain)."""
    return np.stack([family == (1 if f == "lesion" else 0) for f in FINDINGS], axis=1)


def auroc_per_finding(probs: np.ndarray, labels: np.ndarray, keep: np.ndarray | None = None) -> dict[str, float | None]:
    """AUROC of each finding's scores over the images `keep[:, j]` selects (None: all of them); None
    where the selection lacks a class."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float | None] = {}
    for j, f in enumerate(FINDINGS):
        m = slice(None) if keep is None else keep[:, j]
        y = labels[m, j]
        out[f] = float(roc_auc_score(y, probs[m, j])) if 0 < y.sum() < len(y) else None
    return out


def _threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The cut that maximises balanced accuracy on held-out phantoms (Youden's J)."""
    from sklearn.metrics import roc_curve

    if y.min() == y.max():
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    return float(np.clip(thr[int(np.argmax(tpr - fpr))], 1e-6, 1 - 1e-6))


def train_judge(out_dir: str | Path, params: Params, data_dir: str | Path | None = None,
                progress: bool = False, metrics_path: str | Path | None = None) -> dict[str, Any]:
    """The judge step: `_train_judge` inside its child run of the pipeline's MLflow run."""
    from ..tracking import step_run

    with step_run("judge", params={"evaluate.judge": params.evaluate.judge.model_dump()}, data=data_dir,
                  tracking=params.tracking, dataset_context=None):
        return _train_judge(out_dir, params, data_dir, progress, metrics_path)


def _train_judge(out_dir: str | Path, params: Params, data_dir: str | Path | None = None,
                progress: bool = False, metrics_path: str | Path | None = None) -> dict[str, Any]:
    """Train the judge into `out_dir` (weights + config); its held-out AUROC per finding goes to
    `metrics_path` (default `<out_dir>.metrics.json`, beside the folder so DVC tracks both)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    cfg = params.evaluate.judge
    if cfg.seed in (params.ingest.phantom.seed, params.evaluate.benchmark.seed):
        raise JudgeError(f"evaluate.judge.seed={cfg.seed} must differ from ingest.phantom.seed and evaluate.benchmark.seed")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    imgs, labels, fam = phantom_set(cfg.phantoms, cfg.seed, cfg.resolution, params.ingest.phantom.min_visible_px)
    n_hold = max(len(FINDINGS) * 4, cfg.phantoms // 5)
    hold = slice(len(imgs) - n_hold, len(imgs))
    timings["phantoms_s"] = round(time.perf_counter() - t0, 2)
    real = real_train_images(Path(data_dir) if data_dir else None, cfg.real_images, cfg.resolution, cfg.seed)
    x_train = np.concatenate([imgs[: hold.start], real])
    y_train = np.concatenate([labels[: hold.start], np.zeros((len(real), len(FINDINGS)), np.float32)])
    x = to_input(x_train, cfg.resolution)
    y = torch.from_numpy(y_train)
    net = JudgeNet(cfg.width, cfg.feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * max(1, len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    # positives are rare (a finding is in ~15% of its family's images): weight them up
    pos = y.mean(0).clamp(min=1e-3)
    pos_weight = ((1 - pos) / pos).clamp(max=20.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    losses = []
    bar = tqdm(total=steps, desc="judge", disable=not progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - cfg.batch_size + 1, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb = x[idx]
            if torch.rand((), generator=gen) < 0.5:  # brightness/contrast jitter: generated images are not calibrated
                xb = (xb * (0.85 + 0.3 * torch.rand(len(xb), 1, 1, 1, generator=gen))
                      + 0.1 * (torch.rand(len(xb), 1, 1, 1, generator=gen) - 0.5)).clamp(0, 1)
            loss = F.binary_cross_entropy_with_logits(net(xb), y[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update()
    bar.close()
    net.eval()
    timings["train_s"] = round(time.perf_counter() - t0 - timings["phantoms_s"], 2)
    judge = Judge(net, cfg, dict.fromkeys(FINDINGS, 0.5))
    p_hold = judge.probabilities(imgs[hold])
    keep = in_family(fam[hold])
    auroc = auroc_per_finding(p_hold, labels[hold], keep)
    thresholds = {f: _threshold(p_hold[keep[:, j], j], labels[hold][keep[:, j], j]) for j, f in enumerate(FINDINGS)}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / WEIGHTS))
    (out_dir / CONFIG).write_text(json.dumps({"findings": list(FINDINGS), "config": cfg.model_dump(),
                                              "thresholds": thresholds}, indent=2) + "\n")
    metrics = {
        "auroc": auroc,
        "min_auroc": min((v for v in auroc.values() if v is not None), default=None),
        "passes": all(v is not None and v >= cfg.min_auroc for v in auroc.values()),
        "heldout_images": int(n_hold),
        "train_images": {"phantom": int(hold.start), "real": len(real)},
        "loss_start": float(np.mean(losses[:10])), "loss_end": float(np.mean(losses[-10:])),
        "wall_s": round(time.perf_counter() - t0, 2), **timings,
    }
    mp = Path(metrics_path) if metrics_path else out_dir.with_name(out_dir.name + ".metrics.json")
    mp.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def judge_sha256(judge_dir: str | Path) -> str:
    from ..data.shards import sha256_file

    return sha256_file(Path(judge_dir) / WEIGHTS)


def load_judge(judge_dir: str | Path) -> Judge:
    from safetensors.torch import load_file

    judge_dir = Path(judge_dir)
    if not (judge_dir / WEIGHTS).exists() or not (judge_dir / CONFIG).exists():
        raise JudgeError(f"{judge_dir} holds no judge ({WEIGHTS} + {CONFIG}): run `unimedvl judge --output {judge_dir}` first")
    meta = json.loads((judge_dir / CONFIG).read_text())
    if tuple(meta["findings"]) != FINDINGS:
        raise JudgeError(f"{judge_dir}: judge trained for findings {meta['findings']}, this code scores {list(FINDINGS)}")
    cfg = JudgeConfig(**meta["config"])
    net = JudgeNet(cfg.width, cfg.feature_dim)
    net.load_state_dict(load_file(str(judge_dir / WEIGHTS)))
    net.eval()
    return Judge(net, cfg, meta["thresholds"], judge_sha256(judge_dir))
