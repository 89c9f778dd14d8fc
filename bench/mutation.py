"""Mutation run over the modules that guard data (#15): `python -m bench.mutation [MODULE ...]`.

Each mutant is one small change to one module (a comparison, an arithmetic or boolean operator, an
integer constant, a negation, a returned value), run against the tests that exercise that module in a
fresh pytest process with a time limit. A mutant the tests fail on is *killed*; one that runs past the
limit is a *timeout* (counted apart); one they pass on *survived* and is listed with its change, so a
person can tell a weak test from an equivalent mutant.

Why not mutmut: mutmut 3 forks each mutant from a process that has already run the suite, and the
forked children deadlock in the thread pools polars and FAISS started in the parent (measured: the
children sat at 0 % CPU until their time limit, so its "timeouts" were hangs, not detections). A
fresh process per mutant costs a second or two of start-up and is never wrong that way.

Resumable: results go to ``bench/out/mutation/results.jsonl`` keyed by the module's source hash and
the mutant's index, so a rerun skips what is done and a changed module is mutated afresh; a survivor
is rerun when the tests that target it change (new tests may kill it).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "mutation"

_INGEST = "tests/download/test_ingest.py::"
IMPORT_TESTS = [
    _INGEST + "test_parquet_with_image_bytes_is_streamed_in",
    _INGEST + "test_bad_sources_are_one_line_errors",
    _INGEST + "test_import_refuses_a_work_directory_that_has_other_data",
    _INGEST + "test_a_changed_source_shard_is_refused_not_reused",
    _INGEST + "test_shards_and_folders_on_an_fsspec_filesystem",
    _INGEST + "test_the_import_is_a_stage_with_a_unit_per_source_tar_and_resumes_from_them",
    _INGEST + "test_parquet_and_folder_imports_are_units_per_file_and_per_slice_and_resume_from_them",
    _INGEST + "test_sources_are_read_by_one_reader_per_kind_and_ambiguous_ones_are_refused",
    _INGEST + "test_a_parquet_import_of_the_earlier_layout_is_not_resumed_into_the_new_one",
    _INGEST + "test_the_import_leaves_what_it_declares_and_says_what_it_did",
    _INGEST + "test_a_source_that_changes_while_it_is_imported_is_refused",
    _INGEST + "test_an_interrupted_import_is_resumed_by_the_command_never_up_to_date",
    "tests/reliability/test_sources.py",
    "tests/download/test_parquet_reader.py",
    "tests/download/test_shards_reader.py",
    "tests/download/test_urllist_reader.py",
    "tests/download/test_sources_unit.py",
]
# module -> the tests that exercise it in seconds (in process or through the CLI)
TARGETS: dict[str, list[str]] = {
    "dedup/write/ledger.py": [
        "tests/reliability/test_ledger.py",
        "tests/reliability/test_planted_bugs.py",
        "tests/reliability/test_verify.py",
        "tests/reliability/test_integrity.py",
    ],
    "dedup/write/verify.py": ["tests/reliability/test_verify.py", "tests/reliability/test_integrity.py"],
    "dedup/cluster/representatives.py": [
        "tests/cluster/test_representatives.py",
        "tests/reliability/test_planted_bugs.py",
    ],
    "dedup/write/stage.py": [
        "tests/write/test_tar_index.py",
        "tests/write/test_write_stage.py",
        "tests/reliability/test_ledger.py",
        "tests/reliability/test_planted_bugs.py",
        "tests/reliability/test_verify.py",
        "tests/reliability/test_integrity.py",
    ],
    "dedup/write/tar_index.py": ["tests/write/test_tar_index.py", "tests/write/test_write_stage.py"],
    "dedup/cluster/grouping.py": ["tests/cluster/test_grouping.py"],
    "dedup/cluster/oracle.py": ["tests/cluster/test_grouping.py"],
    "dedup/embed/hashing.py": [
        "tests/embed/test_hashing.py",
        "tests/embed/test_embed.py::test_phash_matches_imagehash_bit_for_bit",
        "tests/cluster/test_grouping.py",
    ],
    # the import (#25, #27): every reader, the stage, the shard writer and what a source is, against
    # the import's own tests (the whole-chain and Ray ones left out: a minute each per mutant)
    **{
        module: IMPORT_TESTS
        for module in (
            "dedup/download/ingest.py",
            "dedup/download/import_shards.py",
            "dedup/download/sources.py",
            "dedup/download/readers/__init__.py",
            "dedup/download/readers/folder.py",
            "dedup/download/readers/parquet.py",
            "dedup/download/readers/shards.py",
            "dedup/download/readers/urllist.py",
        )
    },
    "attack/distance.py": ["tests/attack/test_distance.py"],
    "attack/extract.py": ["tests/attack/test_extract.py"],
}
COPY = ("dedup", "attack", "tests", "bench/__init__.py", "configs", "README.md", "pyproject.toml")

_CMP_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BIN_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
}


@dataclass(frozen=True)
class Site:
    index: int
    line: int
    what: str


def _skip_ids(tree: ast.AST) -> set[int]:
    """Nodes never mutated: docstrings, annotations and decorator arguments (no behaviour)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            skip.update(id(n) for n in ast.walk(first))
        for field in ("annotation", "returns"):
            sub = getattr(node, field, None)
            if sub is not None:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def _mutations(tree: ast.AST) -> Iterator[tuple[ast.AST, str, object]]:
    """(node, description, how) for every mutation site, in a stable order."""
    skip = _skip_ids(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in _CMP_SWAP:
                    yield node, f"{type(op).__name__} -> {_CMP_SWAP[type(op)].__name__}", ("cmp", k)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            yield node, f"{type(node.op).__name__} -> {_BIN_SWAP[type(node.op)].__name__}", ("bin",)
        elif isinstance(node, ast.BoolOp):
            yield (
                node,
                f"{type(node.op).__name__} -> {'Or' if isinstance(node.op, ast.And) else 'And'}",
                ("bool",),
            )
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "not x -> x", ("not",)
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            yield node, f"{node.value} -> {node.value + 1}", ("int",)
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            yield node, f"{node.value} -> {not node.value}", ("boolconst",)
        elif (
            isinstance(node, ast.Return)
            and node.value is not None
            and not (isinstance(node.value, ast.Constant) and node.value.value is None)
        ):
            yield node, "return x -> return None", ("return",)


def sites(source: str) -> list[Site]:
    tree = ast.parse(source)
    return [Site(i, getattr(n, "lineno", 0), what) for i, (n, what, _) in enumerate(_mutations(tree))]


def mutate(source: str, index: int) -> str:
    tree = ast.parse(source)
    node, _, how = list(_mutations(tree))[index]
    kind = how[0]  # type: ignore[index]
    if kind == "cmp":
        k = how[1]  # type: ignore[index]
        node.ops[k] = _CMP_SWAP[type(node.ops[k])]()  # type: ignore[attr-defined]
    elif kind == "bin":
        node.op = _BIN_SWAP[type(node.op)]()  # type: ignore[attr-defined]
    elif kind == "bool":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()  # type: ignore[attr-defined]
    elif kind == "not":
        node.op = ast.UAdd()  # type: ignore[attr-defined]  # +x is truthy exactly when x is
        node.operand = ast.Call(ast.Name("bool", ast.Load()), [node.operand], [])  # type: ignore[attr-defined]
    elif kind == "int":
        node.value = node.value + 1  # type: ignore[attr-defined]
    elif kind == "boolconst":
        node.value = not node.value  # type: ignore[attr-defined]
    elif kind == "return":
        node.value = ast.Constant(None)  # type: ignore[attr-defined]
    return ast.unparse(ast.fix_missing_locations(tree))


def _workspace(worker: int) -> Path:
    dest = Path(f"/tmp/dedup-mutation-{worker}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "out"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    return dest


def _pytest(workspace: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(workspace),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.time()
    try:
        r = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - started
    return ("survived" if r.returncode == 0 else "killed"), time.time() - started


@dataclass
class Job:
    """One module's mutants, run in the free workspaces (one mutant per workspace at a time)."""

    module: str
    source: str
    digest: str
    tests_digest: str
    tests: list[str]
    limit: float
    free: list[Path]

    def run(self, site: Site) -> dict:
        ws = self.free.pop()
        try:
            (ws / self.module).write_text(mutate(self.source, site.index))
            outcome, seconds = _pytest(ws, self.tests, self.limit)
        finally:
            (ws / self.module).write_text(self.source)
            self.free.append(ws)
        return {
            "module": self.module,
            "source": self.digest,
            "tests": self.tests_digest,
            "index": site.index,
            "line": site.line,
            "what": site.what,
            "outcome": outcome,
            "seconds": round(seconds, 1),
        }


def _tests_digest(tests: list[str]) -> str:
    """The tests' own sources (and conftest): a survivor is rerun when they change."""
    files = sorted({ROOT / t.split("::")[0] for t in tests} | set(ROOT.glob("tests/**/conftest.py")))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]


def _reusable(result: dict | None, tests_digest: str) -> bool:
    """A killed mutant stays killed while its module is unchanged; a survivor only under the same tests."""
    if result is None:
        return False
    return result["outcome"] != "survived" or result.get("tests") == tests_digest


def main(argv: list[str]) -> None:
    modules = argv or list(TARGETS)
    OUT.mkdir(parents=True, exist_ok=True)
    results_path = OUT / "results.jsonl"
    done: dict[tuple[str, str, int], dict] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["module"], r["source"], r["index"])] = r
    workers = [_workspace(i) for i in range(int(os.environ.get("MUTATION_WORKERS", "2")))]
    free = list(workers)
    summary = {}
    for module in modules:
        source = (ROOT / module).read_text()
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        tests = TARGETS[module]
        status, baseline = _pytest(workers[0], tests, 1800)
        if status != "survived":
            raise SystemExit(f"{module}: its tests fail without any mutant ({tests}); fix them first")
        limit = baseline * 3 + 20
        tests_digest = _tests_digest(tests)
        todo = [s for s in sites(source) if not _reusable(done.get((module, digest, s.index)), tests_digest)]
        print(
            f"{module}: {len(sites(source))} mutants ({len(todo)} to run), tests {baseline:.1f} s", flush=True
        )

        with ThreadPoolExecutor(max_workers=len(workers)) as pool, open(results_path, "a") as log:
            job = Job(module, source, digest, tests_digest, tests, limit, free)
            for future in as_completed([pool.submit(job.run, s) for s in todo]):
                r = future.result()
                done[(module, digest, r["index"])] = r
                log.write(json.dumps(r) + "\n")
                log.flush()
        rows = [r for (m, d, _), r in done.items() if m == module and d == digest]
        counts = {k: sum(r["outcome"] == k for r in rows) for k in ("killed", "timeout", "survived")}
        summary[module] = counts
        total = sum(counts.values())
        detected = 100 * (counts["killed"] + counts["timeout"]) / max(total, 1)
        print(
            f"  killed {counts['killed']}, timeout {counts['timeout']}, survived {counts['survived']} "
            f"of {total}: {detected:.1f} % detected",
            flush=True,
        )
        for r in sorted(rows, key=lambda r: r["index"]):
            if r["outcome"] == "survived":
                print(f"    survived: {module}:{r['line']} {r['what']}", flush=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
