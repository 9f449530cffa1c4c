"""Does the end-marker repair load only complete photos?  (Not a test: measures the rule on the real photos.)

    python bench/jpeg_eoi_repair.py [--data-dir data/with_sense]
    # writes bench/results/jpeg_eoi_repair.{json,md}

For every photo in train_images/ and test_images/, the last ``cut`` bytes are removed
(cut 2 = only the end-of-image marker FF D9; larger cuts also remove scan data) and
``tasks.ingest_photos._decode_check`` judges the result.  Counted per cut: photos loaded as
they are (the cut removed only bytes after the end marker), loaded as repaired, of those
how many decode pixel-identical to the original (the repair is right only when all are),
and photos quarantined.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CUTS = (2, 3, 4, 10, 200)


def main() -> None:
    from models.photo_file import decodable_bytes
    from tasks.ingest_photos import _decode_check

    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "with_sense")
    a = ap.parse_args()
    photos = sorted(a.data_dir.glob("t*_images/*.jpg"))
    rows = {c: {"loaded_as_is": 0, "repaired": 0, "repaired_identical": 0, "quarantined": 0} for c in CUTS}
    for path in photos:
        data = path.read_bytes()
        original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for c in CUTS:
            cut = data[:-c]
            problem, _, repair = _decode_check(cut, path.name)
            if problem:
                rows[c]["quarantined"] += 1
            elif not repair:
                rows[c]["loaded_as_is"] += 1  # bytes after the end marker were cut, not the marker
            else:
                rows[c]["repaired"] += 1
                got = np.asarray(Image.open(io.BytesIO(decodable_bytes(cut))).convert("RGB"))
                rows[c]["repaired_identical"] += int(np.array_equal(got, original))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "photos": len(photos), "data": str(a.data_dir), "command": "python bench/jpeg_eoi_repair.py"}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "jpeg_eoi_repair.json").write_text(json.dumps({"meta": meta, "cuts": rows}, indent=2) + "\n")
    lines = ["# JPEG end-marker repair on the real photos", "",
             f"{meta['date']}, {meta['machine']}, {meta['photos']} photos of {meta['data']}; `{meta['command']}`", "",
             "| bytes cut from the end | loaded as is | loaded as repaired | of those pixel-identical to the original | quarantined |",
             "|---|---|---|---|---|"]
    lines += [f"| {c} | {r['loaded_as_is']} | {r['repaired']} | {r['repaired_identical']} | {r['quarantined']} |"
              for c, r in rows.items()]
    (out / "jpeg_eoi_repair.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
