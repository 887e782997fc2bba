#!/usr/bin/env python3
"""Writes the small parquet fixtures of tests/hub.rs (the `hub` feature's offline test).

They have the layout of the Hugging Face Hub's parquet conversion (`refs/convert/parquet`) of
`stanfordnlp/imdb` (columns `text`: string, `label`: int64, 0 = neg, 1 = pos) — six reviews
written here, not taken from IMDb. Needs pyarrow (`pip install pyarrow`).

    python3 scripts/make-hub-fixtures.py tests/fixtures/hub
"""
import sys

import pyarrow as pa
import pyarrow.parquet as pq

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hub"
rows = {
    "train": [
        ("A slow start, then a wonderful second half. Loved it.", 1),
        ("Dull, predictable and far too long.", 0),
        ("The cast is great and the score even better!", 1),
        ("I walked out after an hour. \u00c9vitez-le.", 0),
    ],
    "test": [
        ("Best film of the year.", 1),
        ("Not worth the ticket.", 0),
    ],
}
for split, data in rows.items():
    table = pa.table({
        "text": pa.array([t for t, _ in data], type=pa.string()),
        "label": pa.array([l for _, l in data], type=pa.int64()),
    })
    # two row groups in train, to exercise reading across them
    pq.write_table(table, f"{out}/imdb-{split}.parquet", row_group_size=3 if split == "train" else None)
    print(f"{out}/imdb-{split}.parquet: {len(data)} rows")
