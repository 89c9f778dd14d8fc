"""The URL list as the download stage's input: normalised, keyed and fingerprinted before img2dataset
sees it, so that no input row can be lost without a ledger row and no result made from another input
is reused.

img2dataset reads a URL list with pyarrow and writes one parquet row per sample it processed. Two ways
lose rows silently there: a column pyarrow reads as bytes or a datetime (a caption that is not UTF-8,
a timestamp among the saved extra columns) makes its writer fail every row of the shard, which then
records 0 rows and 0 failures; and a shard that dies records nothing at all. So before download:

- every input file is read the way img2dataset reads it and written to ``input/part_NNNNN.parquet``
  with the URL, caption and extra columns cast to strings (bytes decoded as UTF-8 with replacement),
  plus the key img2dataset will give each row (``compute_key``'s arithmetic: the shard id, then the
  row's index in its shard) and its shard. img2dataset then reads these files (as parquet, by column
  name, so the added columns never reach it);
- ``input/manifest.json`` records the source files (path, size, sha256), the settings that decide
  the keys, and the row count per shard: the ledger is built from these rows, and a row img2dataset
  did not write gets ``download_failed`` with the reason;
- before anything is written, ``validate_url_list`` checks the list as img2dataset will read it: the
  files exist and are not empty, the named columns are there, and no row asks for a file:// (or
  other non-http) URL unless allowed;
- a rerun compares fingerprints: another URL list (or other key settings) into the same work
  directory is refused with a line naming the difference, never resumed as if it were the same.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.config import DownloadConfig
from dedup.core.errors import UserError
from dedup.core.files import atomic_path, write_json
from dedup.core.layout import WorkDir

OOM_SHARD_COUNT = 5  # img2dataset's oom_shard_count, as dedup.download.stage passes it


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_table(file: Path, fmt: str) -> Any:
    """One input file as a pyarrow table, read as img2dataset reads it (so the rows are the same)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    base = fmt.removesuffix(".gz")
    try:
        if base == "parquet":
            return pq.read_table(file)
        import gzip

        opener: Any = gzip.open if fmt.endswith(".gz") else open
        with opener(file, "rb") as source:
            if base == "txt":
                return pacsv.read_csv(source, read_options=pacsv.ReadOptions(column_names=["url"]))
            if base == "csv":
                return pacsv.read_csv(source)
            if base == "tsv":
                return pacsv.read_csv(source, parse_options=pacsv.ParseOptions(delimiter="\t"))
            if base == "jsonl":
                return pajson.read_json(source)
            import pandas as pd

            return pa.Table.from_pandas(pd.read_json(source))
    except Exception as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{file}: cannot read as {fmt}: {msg}") from None


def as_text(column: Any) -> list[str | None]:
    """A column as strings: bytes decoded as UTF-8 with replacement, datetimes in ISO form, nested
    values as JSON. Nothing img2dataset's writer can fail on reaches it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column.to_pylist()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return [None if v is None else v.decode("utf-8", errors="replace") for v in column.to_pylist()]
    if pa.types.is_nested(t):
        return [None if v is None else json.dumps(v, default=str, sort_keys=True) for v in column.to_pylist()]
    try:
        return pc.cast(column, pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return [None if v is None else str(v) for v in column.to_pylist()]


def image_key(shard: int, index: int, samples_per_shard: int) -> str:
    """The key img2dataset gives the ``index``-th row of shard ``shard`` (its ``compute_key``)."""
    oom_sample = math.ceil(math.log10(samples_per_shard))
    return f"{(10**oom_sample) * shard + index:0{oom_sample + OOM_SHARD_COUNT}d}"


def key_settings(config: Any, fmt: str) -> dict[str, Any]:
    """The settings that decide which row gets which key and which columns reach the shards."""
    return {
        "format": fmt,
        "url_col": config.url_col,
        "caption_col": config.caption_col,
        "save_additional_columns": list(config.save_additional_columns),
        "samples_per_shard": config.samples_per_shard,
    }


def fingerprint(files: list[Path], settings: dict[str, Any]) -> dict[str, Any]:
    sources = [{"path": str(f.resolve()), "size": f.stat().st_size, "sha256": file_sha256(f)} for f in files]
    digest = hashlib.sha256(
        json.dumps({"sources": [s["sha256"] for s in sources], **settings}, sort_keys=True).encode()
    ).hexdigest()
    return {"fingerprint": digest, "sources": sources, "settings": settings}


def difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between the recorded input and this one, in words (for the refusal)."""
    if old.get("settings") != new["settings"]:
        changed = [k for k in new["settings"] if (old.get("settings") or {}).get(k) != new["settings"][k]]
        return "settings " + ", ".join(
            f"{k} {old['settings'].get(k)!r} -> {new['settings'][k]!r}" for k in changed
        )
    olds = [s["path"] for s in old.get("sources", [])]
    news = [s["path"] for s in new["sources"]]
    if olds != news:
        return f"URL list {', '.join(olds)} -> {', '.join(news)}"
    return "the URL list's contents changed (sha256 differs)"


def check_same_input(work: WorkDir, files: list[Path], settings: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of this input; refuses (one line) a work dir downloaded from another one."""
    new = fingerprint(files, settings)
    if work.input_manifest.exists():
        old = json.loads(work.input_manifest.read_text())
        if old.get("fingerprint") != new["fingerprint"] and work.download_shards():
            raise UserError(
                f"{work.root}: downloaded from another input ({difference(old, new)}); download into a "
                "new work directory, or set download.incremental: false to download it again from scratch"
            )
    return new


def normalise(work: WorkDir, files: list[Path], fmt: str, config: Any, identity: dict[str, Any]) -> int:
    """Write ``input/part_NNNNN.parquet`` and ``input/manifest.json``; returns the number of rows."""
    sps = config.samples_per_shard
    extras = list(config.save_additional_columns)
    txt = fmt.removesuffix(".gz") == "txt"
    work.input_dir.mkdir(parents=True, exist_ok=True)
    for stale in work.input_dir.glob("part_*.parquet"):
        stale.unlink()
    shard0, total, per_shard = 0, 0, []
    for i, file in enumerate(files):
        table = read_table(file, fmt)
        n = table.num_rows
        data: dict[str, list[Any]] = {"url": as_text(table.column("url" if txt else config.url_col))}
        if config.caption_col is not None and not txt:
            data["caption"] = as_text(table.column(config.caption_col))
        for name in extras:
            data[name] = as_text(table.column(name))
        shards = [shard0 + j // sps for j in range(n)]
        data["key"] = [image_key(s, j % sps, sps) for j, s in zip(range(n), shards, strict=True)]
        data["shard"] = shards
        schema = {c: pl.String for c in data} | {"shard": pl.Int64}
        with atomic_path(work.input_part(i)) as tmp:
            pl.DataFrame(data, schema=schema).write_parquet(tmp)
        count = math.ceil(n / sps)
        per_shard += [min(sps, n - k * sps) for k in range(count)]
        shard0 += count
        total += n
    write_json(work.input_manifest, {**identity, "rows": total, "rows_per_shard": per_shard})
    return total


WEB_SCHEMES = ("http", "https")


def check_schemes(file: Path, urls: list[str | None]) -> None:
    """Refuse a URL list that names a scheme other than http(s): a ``file:///`` row would copy this
    machine's files into the dataset (img2dataset fetches file URLs as readily as web ones). A row
    that is no URL at all is left to the download, which records it as failed."""
    from urllib.parse import urlsplit

    for row, url in enumerate(urls):
        if not url:
            continue
        try:
            scheme = urlsplit(url.strip()).scheme.lower()
        except ValueError:
            continue
        if scheme and scheme not in WEB_SCHEMES:
            raise UserError(
                f"{file}: row {row}: {url[:80]!r} is a {scheme}: URL; only http(s) URLs are downloaded "
                "(--allow-file-urls or download.allow_file_urls: true to allow others)"
            )


def input_rows(work: WorkDir) -> pl.DataFrame | None:
    """Every input row (key, url, caption, shard), or None for a work dir made before input/ existed."""
    parts = sorted(work.input_dir.glob("part_*.parquet")) if work.input_dir.is_dir() else []
    if not parts or not work.input_manifest.exists():
        return None
    frames = [pl.read_parquet(p) for p in parts]
    df = pl.concat(frames, how="diagonal_relaxed")
    if "caption" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("caption"))
    return df.select("key", "url", "caption", "shard")


INPUT_FORMATS = ("parquet", "csv", "tsv", "jsonl", "json", "txt")


# -- input validation -------------------------------------------------------------------------------


def infer_input_format(path: Path) -> str:
    name = path.name.lower()
    for fmt in INPUT_FORMATS:
        if name.endswith(f".{fmt}") or name.endswith(f".{fmt}.gz"):
            return fmt + (".gz" if name.endswith(".gz") else "")
    raise UserError(
        f"{path}: cannot tell the format from the file name; pass --input-format ({', '.join(INPUT_FORMATS)})"
    )


def _input_files(path: Path, fmt: str | None) -> tuple[list[Path], str]:
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if fmt is None:
            fmts = {infer_input_format(p) for p in candidates if _known_suffix(p)}
            if len(fmts) != 1:
                raise UserError(
                    f"{path}: folder holds no single URL-list format ({sorted(fmts)}); pass --input-format"
                )
            fmt = fmts.pop()
        files = [p for p in candidates if p.name.lower().endswith(f".{fmt}")]
        if not files:
            raise UserError(f"{path}: no *.{fmt} files in this folder")
        return files, fmt
    return [path], fmt or infer_input_format(path)


def _known_suffix(p: Path) -> bool:
    n = p.name.lower()
    return any(n.endswith(f".{f}") or n.endswith(f".{f}.gz") for f in INPUT_FORMATS)


def _read_columns(file: Path, fmt: str) -> tuple[list[str], int]:
    """Column names and row count of one URL-list file, read the way img2dataset will read it."""
    base = fmt.removesuffix(".gz")
    try:
        if base == "parquet":
            lf = pl.scan_parquet(file)
            return lf.collect_schema().names(), lf.select(pl.len()).collect().item()
        if base == "txt":
            import gzip

            opener = gzip.open if fmt.endswith(".gz") else open
            with opener(file, "rt", encoding="utf-8") as f:  # type: ignore[operator]
                rows = sum(1 for line in f if line.strip())
            return ["url"], rows
        import pyarrow.csv as pacsv
        import pyarrow.json as pajson

        if base == "csv":
            table = pacsv.read_csv(file)
        elif base == "tsv":
            table = pacsv.read_csv(file, parse_options=pacsv.ParseOptions(delimiter="\t"))
        elif base == "jsonl":
            table = pajson.read_json(file)
        else:  # json: a list of records, as img2dataset reads it with pandas
            import pandas as pd
            import pyarrow as pa

            table = pa.Table.from_pandas(pd.read_json(file))
        return table.column_names, table.num_rows
    except UserError:
        raise
    except Exception as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "empty" in msg.lower():
            return [], 0
        raise UserError(f"{file}: cannot read as {fmt}: {msg}") from None


def validate_url_list(config: DownloadConfig) -> tuple[list[Path], str, int]:
    """Check the URL list before anything is written: files exist, are non-empty, have the columns."""
    if not config.url_list:
        raise UserError("no URL list given (argument URL_LIST or download.url_list in the config)")
    files, fmt = _input_files(Path(config.url_list), config.input_format)
    total = 0
    for file in files:
        if file.stat().st_size == 0:
            raise UserError(f"{file}: empty URL list (no rows)")
        columns, rows = _read_columns(file, fmt)
        if rows == 0:
            raise UserError(f"{file}: empty URL list (no rows)")
        if fmt.removesuffix(".gz") != "txt":
            wanted = [("--url-col", config.url_col)]
            if config.caption_col is not None:
                wanted.append(("--caption-col", config.caption_col))
            wanted += [("--save-additional-columns", c) for c in config.save_additional_columns]
            for flag, col in wanted:
                if col not in columns:
                    shown = ", ".join(columns[:12]) + (" ..." if len(columns) > 12 else "")
                    raise UserError(f"{file}: no column '{col}' (columns: {shown}); set {flag}")
        if not config.allow_file_urls:
            url_col = "url" if fmt.removesuffix(".gz") == "txt" else config.url_col
            check_schemes(file, as_text(read_table(file, fmt).column(url_col)))
        total += rows
    return files, fmt, total
