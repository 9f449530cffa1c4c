"""Shared fixtures: a tiny dataset the tests make themselves, in the real files' formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("WITH_SENSE_DATA_DIR", PROJECT_ROOT / "data" / "with_sense"))
if not (REAL_DATA / "train_dataset.csv").exists():
    REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "with_sense"

# Scenes for the tiny dataset: (caption, colour, shape).  Two of them describe children,
# so every compliance path is exercised.
SCENES = [
    ("A dog runs on the green grass .", (40, 160, 40), "circle"),
    ("A man rides a red bicycle down the street .", (200, 30, 30), "rect"),
    ("Two boys are playing football in the park .", (30, 30, 200), "circle"),
    ("A woman is sitting on a yellow bench .", (220, 220, 40), "rect"),
    ("A black dog jumps over a log .", (20, 20, 20), "circle"),
    ("A little girl in a pink dress is smiling .", (240, 120, 180), "rect"),
    ("People walk along a snowy mountain path .", (235, 235, 245), "circle"),
    ("A surfer rides a big blue wave .", (20, 90, 220), "rect"),
]


def make_photo(path: Path, colour: tuple[int, int, int], shape: str, seed: int, size=(64, 48)) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-20, 20, size=(size[1], size[0], 3))
    base = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    d = ImageDraw.Draw(img)
    box = [10, 8, size[0] - 10, size[1] - 8]
    (d.ellipse if shape == "circle" else d.rectangle)(box, outline=(255 - colour[0], 255 - colour[1], 255 - colour[2]), width=3)
    img.save(path, format="JPEG", quality=90)


def build_dataset(root: Path, n_train_per_scene: int = 3, n_test_per_scene: int = 1) -> Path:
    """A miniature of the course archive: same files, same formats, made from SCENES."""
    data = root / "with_sense"
    (data / "train_images").mkdir(parents=True)
    (data / "test_images").mkdir(parents=True)
    train_imgs, test_imgs = [], []
    for s, (_, colour, shape) in enumerate(SCENES):
        for j in range(n_train_per_scene):
            name = f"{1000 + s * 10 + j}_train.jpg"
            make_photo(data / "train_images" / name, colour, shape, seed=s * 100 + j)
            train_imgs.append((name, s))
        for j in range(n_test_per_scene):
            name = f"{5000 + s * 10 + j}_test.jpg"
            make_photo(data / "test_images" / name, colour, shape, seed=9000 + s * 100 + j)
            test_imgs.append((name, s))

    # One caption per scene, written for the scene's first train photo.
    captions = {s: (f"{train_imgs[s * n_train_per_scene][0]}#2", SCENES[s][0]) for s in range(len(SCENES))}
    train_rows, expert_rows, crowd_rows = [], [], []
    for name, s in train_imgs:
        for t, (qid, text) in captions.items():
            if t != s and (t + s) % 3:
                continue
            match = t == s
            train_rows.append(f'{name},{qid},"{text}"')
            e = (4, 4, 3) if match else (1, 1, 2)
            expert_rows.append(f"{name}\t{qid}\t{e[0]}\t{e[1]}\t{e[2]}")
            yes = 3 if match else 0
            crowd_rows.append(f"{name}\t{qid}\t{yes / 3:.6f}\t{yes}\t{3 - yes}")
    (data / "train_dataset.csv").write_text("image,query_id,query_text\n" + "\n".join(train_rows) + "\n")
    (data / "ExpertAnnotations.tsv").write_text("\n".join(expert_rows) + "\n")
    (data / "CrowdAnnotations.tsv").write_text("\n".join(crowd_rows) + "\n")
    q_rows = [f"{i}|{name}#{0}|{SCENES[s][0]}|{name}" for i, (name, s) in enumerate(test_imgs)]
    (data / "test_queries.csv").write_text("|query_id|query_text|image\n" + "\n".join(q_rows) + "\n")
    (data / "test_images.csv").write_text("image\n" + "\n".join(n for n, _ in test_imgs) + "\n")
    return data


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return build_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "train_dataset.csv").exists():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


# The ingest tests' tiny dataset: one clean copy per module, ingested once, and a private
# copy for each test that damages it.
@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def clean_result(clean_copy):
    from tasks.ingest import ingest

    return ingest(clean_copy)


@pytest.fixture
def data(clean_copy, tmp_path) -> Path:
    """A private copy of the tiny dataset for one test to damage."""
    import shutil

    return Path(shutil.copytree(clean_copy, tmp_path / "with_sense", symlinks=True))
